"""A real Keystone and a real Glance on loopback, for the tests in this folder.

Keystone is the one `.ci/keystone-setup` installs (started by tests/usage/_keystone_server.py),
Glance the one `.ci/glance-setup` installs (started by _glance_server.py, paste flavor
`keystone`: keystonemiddleware validates every token with that Keystone). Glance is
registered in Keystone's catalog as the `image` service, and a clouds.yaml names the admin:
novakeeper finds Glance the way it does in production, through openstacksdk.

`GlanceServer.stop()` and `.start()` take Glance down and bring it back (same database,
same file store, a new port registered in the catalog), for the "Glance down" tests.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml

from conftest import side_venv_python, start_ready_server, stop_server

HERE = Path(__file__).resolve().parent
KEYSTONE_SERVER = HERE.parent / "usage" / "_keystone_server.py"
ADMIN_PASSWORD = "adm-" + secrets.token_hex(8)


@dataclass
class GlanceServer:
    python: Path
    work: Path
    keystone_url: str
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    endpoint_id: str | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.proc, self.port = start_ready_server(
            [str(self.python), str(HERE / "_glance_server.py"), str(self.work / "data"),
             self.keystone_url, ADMIN_PASSWORD],
            self.work / f"server-{self.starts}.err", "Glance")

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


@dataclass
class Cloud:
    keystone_url: str
    glance: GlanceServer
    clouds_yaml: Path
    conn: Any = None
    """An admin openstacksdk connection, for the tests' own uploads and deletions."""
    made: list[str] = field(default_factory=list)

    def register(self) -> None:
        """(Re)register Glance's current URL as the image endpoint in the catalog."""
        ident = self.conn.identity
        if self.glance.endpoint_id is None:
            service = ident.create_service(name="glance", type="image", enabled=True)
            ep = ident.create_endpoint(service_id=service.id, interface="public",
                                       url=self.glance.url, region_id="RegionOne")
        else:
            ep = ident.update_endpoint(self.glance.endpoint_id, url=self.glance.url)
        self.glance.endpoint_id = ep.id

    def reconnect(self) -> None:
        import openstack

        if self.conn is not None:
            self.conn.close()
        self.conn = openstack.connect(
            load_yaml_config=False, load_envvars=False, auth_url=self.keystone_url,
            username="admin", password=ADMIN_PASSWORD, project_name="admin",
            user_domain_id="default", project_domain_id="default", region_name="RegionOne")

    def upload(self, path: Path, disk_format: str, name: str, **extra: Any) -> Any:
        """`openstack image create --file`: openstacksdk creates the image and PUTs the
        bytes (Glance computes size, checksum, os_hash_value and virtual_size)."""
        image = self.conn.image.create_image(
            name, filename=str(path), disk_format=disk_format, container_format="bare",
            wait=True, allow_duplicates=True, validate_checksum=False, **extra)
        self.made.append(image.id)
        return self.conn.image.get_image(image.id)


@pytest.fixture(scope="module", name="cloud")
def cloud_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    keystone_python = side_venv_python("keystone", "NOVAKEEPER_KEYSTONE_VENV")
    glance_python = side_venv_python("glance", "NOVAKEEPER_GLANCE_VENV")
    work = tmp_path_factory.mktemp("openstack")
    kproc, kport = start_ready_server(
        [str(keystone_python), str(KEYSTONE_SERVER), str(work / "keystone"), ADMIN_PASSWORD],
        work / "keystone.err", "Keystone")
    keystone_url = f"http://127.0.0.1:{kport}/v3"
    glance = GlanceServer(glance_python, work, keystone_url)
    try:
        glance.start()
        clouds_yaml = work / "clouds.yaml"
        admin = {"auth": {"auth_url": keystone_url, "username": "admin",
                          "password": ADMIN_PASSWORD, "project_name": "admin",
                          "user_domain_id": "default", "project_domain_id": "default"},
                 "region_name": "RegionOne", "identity_api_version": 3}
        clouds_yaml.write_text(yaml.safe_dump({"clouds": {"admin": admin}}))
        c = Cloud(keystone_url, glance, clouds_yaml)
        c.reconnect()
        c.register()
        c.reconnect()  # a new token, with the new catalog
        yield c
        if c.conn is not None:
            c.conn.close()
    finally:
        glance.stop()
        stop_server(kproc)


def glance_env(cloud: Cloud) -> dict[str, str]:
    """What a novakeeper process needs to find Glance: the clouds.yaml, the cloud name."""
    return {"OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml), "OS_CLOUD": "admin"}


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True)
