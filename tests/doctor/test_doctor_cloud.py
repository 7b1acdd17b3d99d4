"""Cloud checks against the real Keystone (.ci/keystone-setup's venv, served by
tests/usage/_keystone_server.py with an SQLite database), read through openstacksdk from a
clouds.yaml as on an operator's host. Nothing of openstacksdk or keystoneauth is mocked.

The catalog starts clean: identity (from `keystone-manage bootstrap`, given its internal and
admin endpoints here) and a network service with all three interfaces. Each test adds its
mistake and takes it away again."""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from doctor_helpers import check, facts, node, one, statuses

from _cli_tree import run_cli
from conftest import side_venv_python, start_ready_server, stop_server
from novakeeper.doctor.cloud import Catalog, Endpoint, Service
from novakeeper.doctor.model import Status

SERVER = Path(__file__).resolve().parents[1] / "usage" / "_keystone_server.py"
PASSWORD = "adm-" + secrets.token_hex(8)
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")


@dataclass
class Cloud:
    url: str
    clouds_yaml: Path
    conn: Any
    identity_id: str
    network_id: str
    closed_port: int


def _region_cloud(auth_url: str, password: str) -> dict[str, Any]:
    return {"auth": {"auth_url": auth_url, "username": "admin", "password": password,
                     "project_name": "admin", "user_domain_id": "default",
                     "project_domain_id": "default"},
            "region_name": "RegionOne", "identity_api_version": 3}


@pytest.fixture(scope="module")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    import openstack

    python = side_venv_python("keystone", "NOVAKEEPER_KEYSTONE_VENV")
    work = tmp_path_factory.mktemp("keystone-doctor")
    proc, port = start_ready_server([str(python), str(SERVER), str(work / "data"), PASSWORD],
                                    work / "server.err", "Keystone", timeout=120)
    url = f"http://127.0.0.1:{port}/v3"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    conn = openstack.connect(load_yaml_config=False, load_envvars=False, auth_url=url,
                             username="admin", password=PASSWORD, project_name="admin",
                             user_domain_id="default", project_domain_id="default",
                             region_name="RegionOne")
    ident = conn.identity
    identity = ident.find_service("keystone", ignore_missing=False)
    for interface in ("internal", "admin"):
        ident.create_endpoint(service_id=identity.id, interface=interface, url=url,
                              region_id="RegionOne")
    network = ident.create_service(name="neutron", type="network", enabled=True)
    for interface in ("public", "internal", "admin"):
        ident.create_endpoint(service_id=network.id, interface=interface,
                              url=url.replace("/v3", "/network-stand-in"),
                              region_id="RegionOne")
    clouds = {"clouds": {
        "admin": _region_cloud(url, PASSWORD),
        "wrong-password": _region_cloud(url, "not-" + PASSWORD),
        "keystone-down": _region_cloud(f"http://127.0.0.1:{closed_port}/v3", PASSWORD),
    }}
    clouds_yaml = work / "clouds.yaml"
    clouds_yaml.write_text(json.dumps(clouds))  # JSON is YAML
    try:
        yield Cloud(url, clouds_yaml, conn, identity.id, network.id, closed_port)
    finally:
        conn.close()
        stop_server(proc)


@pytest.fixture
def cloud(keystone: Cloud, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """Only our clouds.yaml for openstacksdk to read."""
    for name in list(os.environ):
        if name.startswith("OS_") and not name.startswith("OS_NOVAKEEPER__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(keystone.clouds_yaml))
    return keystone


CLOUD_CHECKS = ("cloud.duplicate-services", "cloud.empty-services", "cloud.orphan-endpoints",
                "cloud.interfaces")


def test_a_clean_catalog_passes(cloud: Cloud, tmp_path: Path) -> None:
    conf, _ = node(tmp_path)
    f = facts(conf, cloud="admin")
    for cid in CLOUD_CHECKS:
        assert statuses(check(cid, f)) == [Status.OK], cid
    proc = run_cli("doctor", "--config-file", str(conf), "--only", "cloud", "--cloud",
                   "admin", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {x["check"]: x["status"] for x in data["findings"]} == {
        **dict.fromkeys(CLOUD_CHECKS, "OK"), "cloud.probe": "SKIP"}


def test_a_second_network_service_without_endpoints_fails_naming_it(cloud: Cloud,
                                                                     tmp_path: Path) -> None:
    empty = cloud.conn.identity.create_service(name="neutron", type="network", enabled=True)
    try:
        conf, _ = node(tmp_path)
        fail = one(check("cloud.duplicate-services", facts(conf, cloud="admin")), Status.FAIL)
        assert fail.data == {"type": "network", "services": fail.data["services"],
                             "keep": [cloud.network_id], "delete": [empty.id]}
        assert set(fail.data["services"]) == {empty.id, cloud.network_id}
        assert f"keep {cloud.network_id}, the one with endpoints" in fail.finding
        assert f"{empty.id} (neutron, 0 endpoints)" in fail.finding
        assert fail.fix.startswith(f"openstack service delete {empty.id}  (then restart "
                                   "httpd and memcached")
        # reported once, as a duplicate, not again as a service without endpoints
        assert statuses(check("cloud.empty-services", facts(conf, cloud="admin"))) == [
            Status.OK]
        proc = run_cli("doctor", "--config-file", str(conf), "--only", "cloud", "--cloud",
                       "admin")
        assert proc.returncode == 21, proc.stderr
        assert f"fix: openstack service delete {empty.id}" in proc.stdout
    finally:
        cloud.conn.identity.delete_service(empty)


def test_a_service_missing_its_admin_endpoint_warns(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.conn.identity
    compute = ident.create_service(name="nova", type="compute", enabled=True)
    try:
        for interface in ("public", "internal"):
            ident.create_endpoint(service_id=compute.id, interface=interface,
                                  url="http://127.0.0.1:8774/v2.1", region_id="RegionOne")
        conf, _ = node(tmp_path)
        warn = one(check("cloud.interfaces", facts(conf, cloud="admin")), Status.WARN)
        assert warn.finding == (f"service {compute.id} (compute, nova) in region RegionOne "
                                "has internal, public but no admin endpoint")
        assert warn.fix.startswith(f"openstack endpoint create --region RegionOne "
                                   f"{compute.id} admin http://127.0.0.1:8774/v2.1")
        assert warn.data["missing"] == ["admin"]
        proc = run_cli("doctor", "--config-file", str(conf), "--only", "cloud", "--cloud",
                       "admin")
        assert proc.returncode == 20, proc.stderr
    finally:
        ident.delete_service(compute)  # its endpoints go with it


def test_a_service_without_any_endpoint_warns(cloud: Cloud, tmp_path: Path) -> None:
    image = cloud.conn.identity.create_service(name="glance", type="image", enabled=True)
    try:
        conf, _ = node(tmp_path)
        warn = one(check("cloud.empty-services", facts(conf, cloud="admin")), Status.WARN)
        assert warn.data == {"service": image.id, "type": "image"}
        assert f"openstack service delete {image.id}" in warn.fix
    finally:
        cloud.conn.identity.delete_service(image)


@pytest.mark.parametrize(("name", "words"), [
    ("wrong-password", "refused the credentials (HTTP 401): check the password"),
    ("keystone-down", "cannot reach Keystone at http://127.0.0.1:"),
    ("no-such-cloud", "cloud configuration: "),
])
def test_credentials_that_do_not_work_are_skip_with_one_line(cloud: Cloud, tmp_path: Path,
                                                             name: str, words: str) -> None:
    conf, _ = node(tmp_path)
    proc = run_cli("doctor", "--config-file", str(conf), "--only", "cloud", "--cloud", name,
                   "--timeout", "5")
    assert proc.returncode == 0, proc.stderr  # SKIP is not a failure
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["SKIP"] * 5
    assert words in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert all(ln.startswith("SKIP") for ln in lines[:4])


def test_no_credentials_at_all_is_skip(cloud: Cloud, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    conf, _ = node(tmp_path)
    skip = one(check("cloud.duplicate-services", facts(conf)), Status.SKIP)
    assert skip.finding.startswith("no cloud credentials (give --cloud NAME, OS_CLOUD")


def test_os_variables_work_too(cloud: Cloud, tmp_path: Path) -> None:
    conf, _ = node(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OS_")
              or k.startswith("OS_NOVAKEEPER__")},
           "OS_AUTH_URL": cloud.url, "OS_USERNAME": "admin", "OS_PASSWORD": PASSWORD,
           "OS_PROJECT_NAME": "admin", "OS_USER_DOMAIN_ID": "default",
           "OS_PROJECT_DOMAIN_ID": "default", "OS_IDENTITY_API_VERSION": "3",
           "OS_CLIENT_CONFIG_FILE": os.devnull}
    proc = run_cli("doctor", "--config-file", str(conf), "--only", "cloud.duplicate-services",
                   env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stdout + proc.stderr


def test_probe_warns_about_an_endpoint_nobody_answers(cloud: Cloud, tmp_path: Path) -> None:
    ident = cloud.conn.identity
    dead = ident.create_endpoint(service_id=cloud.network_id, interface="public",
                                 url=f"http://127.0.0.1:{cloud.closed_port}/v2.0",
                                 region_id="RegionOne")
    try:
        conf, _ = node(tmp_path)
        found = check("cloud.probe", facts(conf, cloud="admin", probe=True, timeout=5))
        assert statuses(found) == [Status.WARN]
        assert found[0].data["endpoint"] == dead.id
        assert "Connection refused" in found[0].finding
        assert found[0].fix.endswith(f"openstack endpoint set --url URL {dead.id}")
    finally:
        ident.delete_endpoint(dead)
    conf, _ = node(tmp_path)
    ok = one(check("cloud.probe", facts(conf, cloud="admin", probe=True)), Status.OK)
    assert ok.finding.startswith("all ") and ok.finding.endswith(" endpoint URLs answer")


def test_endpoints_of_missing_services_fail() -> None:
    """Keystone's SQL backend deletes a service's endpoints with it, so this state comes
    from other backends or hand-edited databases: checked on the catalog as data."""
    from novakeeper.doctor.facts import Facts

    f = Facts(config_files=[])
    f._memo["catalog"] = Catalog(
        [Service("s1", "identity", "keystone")],
        [Endpoint("e1", "s1", "public", "RegionOne", "http://k/v3"),
         Endpoint("e2", "gone", "public", "RegionOne", "http://n:9696")])
    fail = one(check("cloud.orphan-endpoints", f), Status.FAIL)
    assert fail.finding == ("endpoint e2 (public, RegionOne, http://n:9696) names service "
                            "gone, which does not exist")
    assert fail.fix == "openstack endpoint delete e2"


def test_disabled_services_and_endpoints_are_not_in_the_catalog_clients_get() -> None:
    from novakeeper.doctor.facts import Facts

    f = Facts(config_files=[])
    f._memo["catalog"] = Catalog(
        [Service("n1", "network", "neutron"), Service("n2", "network", "neutron", False),
         Service("c1", "compute", "nova")],
        [*(Endpoint(f"e{i}", "n1", i, "RegionOne", "http://n:9696") for i in (
            "public", "internal", "admin")),
         Endpoint("x1", "c1", "public", "RegionOne", "http://c:8774", enabled=False)])
    assert [x.status for x in check("cloud.duplicate-services", f)] == [Status.OK]
    warn = one(check("cloud.empty-services", f), Status.WARN)  # its only endpoint is off
    assert warn.data == {"service": "c1", "type": "compute"}
