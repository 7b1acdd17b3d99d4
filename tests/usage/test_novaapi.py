"""The nova-api usage source against a real Keystone and a Nova API stand-in, over HTTP.

Keystone is the real one from PyPI (installed by .ci/keystone-setup in its own venv), run
from `_keystone_server.py` with an SQLite database: it authenticates, scopes, signs fernet
tokens and serves the service catalog. Nova is a small WSGI stand-in written here, on its
own loopback port and registered in that catalog; it validates every token with Keystone
(`GET /v3/auth/tokens`, as keystonemiddleware does) and applies nova's default policy for
what the source asks: `all_tenants` and `os-migrations?host=` need the admin role (else 403),
and the `host` filter is silently dropped for non-admins. It answers in nova's shapes:
version documents, `servers/detail` pages of `[api] max_limit` servers with a `next` link,
`image` "" for a server booted from a volume, the OS-EXT-STS / OS-EXT-SRV-ATTR fields.

Nothing in openstacksdk or keystoneauth is mocked: the source reads a clouds.yaml
(OS_CLIENT_CONFIG_FILE) or OS_* variables, logs in, finds the compute endpoint in the
catalog, negotiates a microversion and pages through the listing, as in production.
The instance tree is real files scanned by the real Scanner.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from conftest import make_qcow2, make_raw, side_venv_python, start_ready_server, stop_server
from novakeeper.cache.inventory import Inventory, Scanner
from novakeeper.cache.layout import image_hash
from novakeeper.usage.base import SourceResult
from novakeeper.usage.novaapi import NovaServers, image_id_of, protects

HERE = Path(__file__).resolve().parent
ADMIN_PASSWORD = "adm-" + secrets.token_hex(8)
VIEWER_PASSWORD = "view-" + secrets.token_hex(8)
pytestmark = pytest.mark.filterwarnings(
    "ignore::PendingDeprecationWarning:openstack",  # openstacksdk's own inner deprecations
)
MAX_LIMIT = 2
"""The stand-in's `[api] max_limit`: small, so that every listing takes several pages."""


# -- Keystone, the real one ------------------------------------------------------------


@dataclass
class Keystone:
    url: str
    process: subprocess.Popen[str]


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    python = side_venv_python("keystone", "NOVAKEEPER_KEYSTONE_VENV")
    work = tmp_path_factory.mktemp("keystone")
    proc, port = start_ready_server(
        [str(python), str(HERE / "_keystone_server.py"), str(work / "data"), ADMIN_PASSWORD],
        work / "server.err", "Keystone", timeout=120)
    try:
        yield Keystone(f"http://127.0.0.1:{port}/v3", proc)
    finally:
        stop_server(proc)


def keystone_token(url: str, user: str, password: str, project: str) -> str:
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}},
    }}
    req = urllib.request.Request(f"{url}/auth/tokens", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers["X-Subject-Token"])


# -- Nova, a stand-in ------------------------------------------------------------------


def server(sid: str, host: str | None, status: str, vm_state: str,
           task_state: str | None = None, image: str | None = None,
           project: str = "p-tenant") -> dict[str, Any]:
    """A server as nova's `servers/detail` shows it to an admin (microversion 2.9x)."""
    return {
        "id": sid, "name": f"vm-{sid[:8]}", "status": status,
        "tenant_id": project, "user_id": "u-1", "hostId": "h" * 56,
        "image": {"id": image, "links": [{"rel": "bookmark",
                                          "href": f"http://glance/images/{image}"}]}
        if image else "",
        "flavor": {"vcpus": 1, "ram": 512, "disk": 1, "ephemeral": 0, "swap": 0,
                   "original_name": "m1.tiny", "extra_specs": {}},
        "addresses": {}, "metadata": {}, "links": [], "key_name": None,
        "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z",
        "OS-EXT-SRV-ATTR:host": host,
        "OS-EXT-SRV-ATTR:hypervisor_hostname": f"{host}.example" if host else None,
        "OS-EXT-SRV-ATTR:instance_name": "instance-00000001",
        "OS-EXT-STS:vm_state": vm_state, "OS-EXT-STS:task_state": task_state,
        "OS-EXT-STS:power_state": 1, "OS-EXT-AZ:availability_zone": "nova",
        "os-extended-volumes:volumes_attached": [], "locked": False, "tags": [],
        "description": None, "config_drive": "", "progress": 0,
    }


def migration(mid: int, instance: str, source: str, dest: str, status: str) -> dict[str, Any]:
    return {
        "id": mid, "uuid": f"00000000-0000-4000-9000-{mid:012d}", "instance_uuid": instance,
        "source_compute": source, "dest_compute": dest, "source_node": source,
        "dest_node": dest, "dest_host": "192.0.2.1", "status": status,
        "migration_type": "resize", "old_instance_type_id": 1, "new_instance_type_id": 2,
        "created_at": "2026-01-01T00:00:00.000000", "updated_at": None,
        "project_id": "p-tenant", "user_id": "u-1",
    }


@dataclass
class FakeNova:
    """The parts of nova-api the source touches, with nova's default policy."""

    keystone_url: str
    service_token: str
    servers: list[dict[str, Any]] = field(default_factory=list)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    """Paths that answer 500, as nova does on an unexpected error (a cell down, say)."""
    base: str = ""
    _roles: dict[str, tuple[str, set[str]]] = field(default_factory=dict)

    def reset(self) -> None:
        self.servers, self.migrations, self.requests, self.failing = [], [], [], set()

    def _version(self) -> dict[str, Any]:
        return {"id": "v2.1", "status": "CURRENT", "version": "2.96", "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.base}/v2.1/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    def _whoami(self, token: str) -> tuple[str, set[str]] | None:
        """Validate a token with Keystone, as keystonemiddleware's auth_token does."""
        if token in self._roles:
            return self._roles[token]
        req = urllib.request.Request(f"{self.keystone_url}/auth/tokens", headers={
            "X-Auth-Token": self.service_token, "X-Subject-Token": token})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = json.load(resp)["token"]
        except urllib.error.HTTPError:
            return None
        who = (body["project"]["id"], {r["name"] for r in body.get("roles", [])})
        self._roles[token] = who
        return who

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"].rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self.requests.append(f"{environ['REQUEST_METHOD']} {path}?{environ.get('QUERY_STRING')}")

        def reply(code: str, body: Any) -> list[bytes]:
            data = json.dumps(body).encode()
            start(code, [("Content-Type", "application/json"),
                         ("Content-Length", str(len(data))),
                         ("OpenStack-API-Version", "compute 2.96")])
            return [data]

        def refuse(code: str, kind: str, message: str) -> list[bytes]:
            return reply(code, {kind: {"code": int(code[:3]), "message": message}})

        if path == "":
            return reply("300 Multiple Choices", {"versions": [self._version()]})
        if path == "/v2.1":
            return reply("200 OK", {"version": self._version()})
        who = self._whoami(environ.get("HTTP_X_AUTH_TOKEN", ""))
        if who is None:
            return refuse("401 Unauthorized", "unauthorized",
                          "The request you have made requires authentication.")
        project, roles = who
        if path in self.failing:
            return refuse("500 Internal Server Error", "computeFault",
                          "Unexpected API Error. Please report this at "
                          "http://bugs.launchpad.net/nova/ and attach the Nova API log.")
        admin = "admin" in roles
        if path == "/v2.1/servers/detail":
            if query.get("all_tenants", "").lower() in ("1", "true") and not admin:
                return refuse("403 Forbidden", "forbidden", "Policy doesn't allow "
                              "os_compute_api:servers:detail:get_all_tenants to be performed.")
            if not admin:  # nova's remove_invalid_options: non-admins lose the host filter
                query.pop("host", None)
            found = [s for s in self.servers
                     if ("host" not in query or s["OS-EXT-SRV-ATTR:host"] == query["host"])
                     and (admin or s["tenant_id"] == project)]
            if "marker" in query:
                ids = [s["id"] for s in found]
                found = found[ids.index(query["marker"]) + 1:]
            limit = min(int(query.get("limit", MAX_LIMIT)), MAX_LIMIT)
            page: dict[str, Any] = {"servers": found[:limit]}
            if len(found) > limit:
                nxt = dict(query, marker=found[limit - 1]["id"], limit=str(limit))
                page["servers_links"] = [{"rel": "next", "href":
                                          f"{self.base}/v2.1/servers/detail?{urlencode(nxt)}"}]
            return reply("200 OK", page)
        if path.startswith("/v2.1/servers/"):
            sid = path.rsplit("/", 1)[-1]
            for s in self.servers:
                if s["id"] == sid and (admin or s["tenant_id"] == project):
                    return reply("200 OK", {"server": s})
            return refuse("404 Not Found", "itemNotFound",
                          f"Instance {sid} could not be found.")
        if path == "/v2.1/os-migrations":
            if not admin:
                return refuse("403 Forbidden", "forbidden", "Policy doesn't allow "
                              "os_compute_api:os-migrations:index to be performed.")
            host = query.get("host")
            return reply("200 OK", {"migrations": [
                m for m in self.migrations
                if host is None or host in (m["source_compute"], m["dest_compute"])]})
        return refuse("404 Not Found", "itemNotFound", f"no route for {path}")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Cloud:
    keystone: str
    nova: FakeNova
    clouds_yaml: Path


def _region_cloud(auth_url: str, user: str, password: str, project: str,
                  region: str = "RegionOne") -> dict[str, Any]:
    return {"auth": {"auth_url": auth_url, "username": user, "password": password,
                     "project_name": project, "user_domain_id": "default",
                     "project_domain_id": "default"},
            "region_name": region, "identity_api_version": 3}


@pytest.fixture(scope="module")
def cloud(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """Keystone's catalog: RegionOne -> the stand-in, Down -> a closed port, Hang -> a
    socket that never answers, Empty -> no compute endpoint. Users admin and viewer (member
    of project demo, not admin)."""
    import openstack

    service_token = keystone_token(keystone.url, "admin", ADMIN_PASSWORD, "admin")
    nova = FakeNova(keystone.url, service_token)
    httpd = make_server("127.0.0.1", 0, nova, server_class=_ThreadingServer,
                        handler_class=_Quiet)
    nova.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # accepted by the kernel, never answered
    hang_url = f"http://127.0.0.1:{hang.getsockname()[1]}"

    conn = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_url=keystone.url,
        username="admin", password=ADMIN_PASSWORD, project_name="admin",
        user_domain_id="default", project_domain_id="default", region_name="RegionOne")
    ident = conn.identity
    compute = ident.create_service(name="nova", type="compute", enabled=True)
    for region, url in (("RegionOne", f"{nova.base}/v2.1"),
                        ("Down", f"http://127.0.0.1:{down_port}/v2.1"),
                        ("Hang", f"{hang_url}/v2.1"), ("Empty", None)):
        if region != "RegionOne":
            ident.create_region(id=region)
        if url:
            ident.create_endpoint(service_id=compute.id, interface="public", url=url,
                                  region_id=region)
    demo = ident.create_project(name="demo", domain_id="default")
    viewer = ident.create_user(name="viewer", password=VIEWER_PASSWORD, domain_id="default",
                               default_project_id=demo.id)
    ident.assign_project_role_to_user(demo, viewer, ident.find_role("member", ignore_missing=False))
    conn.close()

    auth = keystone.url
    clouds = {"clouds": {
        "admin": _region_cloud(auth, "admin", ADMIN_PASSWORD, "admin"),
        "wrong-password": _region_cloud(auth, "admin", "not-" + ADMIN_PASSWORD, "admin"),
        "viewer": _region_cloud(auth, "viewer", VIEWER_PASSWORD, "demo"),
        "nova-down": _region_cloud(auth, "admin", ADMIN_PASSWORD, "admin", "Down"),
        "nova-hangs": _region_cloud(auth, "admin", ADMIN_PASSWORD, "admin", "Hang"),
        "no-compute": _region_cloud(auth, "admin", ADMIN_PASSWORD, "admin", "Empty"),
        "keystone-down": _region_cloud(f"http://127.0.0.1:{down_port}/v3", "admin",
                                       ADMIN_PASSWORD, "admin"),
        "keystone-hangs": _region_cloud(f"{hang_url}/v3", "admin", ADMIN_PASSWORD, "admin"),
    }}
    clouds_yaml = tmp_path_factory.mktemp("openstack") / "clouds.yaml"
    clouds_yaml.write_text(json.dumps(clouds, indent=2))  # JSON is YAML
    try:
        yield Cloud(keystone.url, nova, clouds_yaml)
    finally:
        httpd.shutdown()
        httpd.server_close()
        hang.close()


@pytest.fixture
def nova(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> FakeNova:
    """A clean stand-in, and only our clouds.yaml for openstacksdk to read."""
    for name in list(os.environ):
        if name.startswith("OS_") and not name.startswith("OS_NOVAKEEPER__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.clouds_yaml))
    cloud.nova.reset()
    return cloud.nova


# -- a real compute node tree -----------------------------------------------------------

IMG = {name: f"{n:08x}-1111-4222-8333-{n:012x}" for n, name in enumerate(
    ("building", "active", "shelved", "rescued", "rescue-image", "offloaded", "unshelving",
     "resizing", "on-h2", "elsewhere", "migrated-done"), start=1)}
"""Glance image ids, by the server that uses them."""


def uuid(n: int) -> str:
    return f"{n:08x}-aaaa-4bbb-8ccc-{n:012x}"


@pytest.fixture
def node(tmp_path: Path) -> Inventory:
    """instances/_base holds a base for every image (and a resized copy of the active
    one); only the active server has a disk and the rescued one its disk.rescue: the
    building server has none yet, the shelved one's disk is gone from the host view."""
    instances = tmp_path / "instances"
    for name, image in IMG.items():
        make_raw(instances / "_base" / image_hash(image), 1 << 20, name.encode())
    make_raw(instances / "_base" / f"{image_hash(IMG['active'])}_10737418240", 1 << 20)
    make_qcow2(instances / uuid(2) / "disk", f"../_base/{image_hash(IMG['active'])}",
               size="1M")
    make_qcow2(instances / uuid(4) / "disk.rescue",
               f"../_base/{image_hash(IMG['rescue-image'])}", size="1M")
    return Scanner(str(instances), "_base").scan()


def in_use(result: SourceResult, inventory: Inventory) -> dict[str, list[str]]:
    """Cache file name -> who uses it, matched by image hash as the pass does."""
    out: dict[str, list[str]] = {}
    for base in inventory.bases:
        for sighting in result.by_name.get(base.image_hash or "", ()):
            assert sighting.source == "nova-api"
            out.setdefault(base.name, []).append(sighting.who)
    return out


def h(image: str) -> str:
    return image_hash(IMG[image])


def cluster() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    servers = [
        server(uuid(1), "h1", "BUILD", "building", "spawning", IMG["building"]),
        server(uuid(2), "h1", "ACTIVE", "active", None, IMG["active"]),
        server(uuid(3), "h1", "SHELVED", "shelved", None, IMG["shelved"]),
        server(uuid(4), "h1", "RESCUE", "rescued", None, IMG["rescued"]),
        # between nova saving vm_state and nulling the host: still listed on h1
        server(uuid(5), "h1", "SHELVED_OFFLOADED", "shelved_offloaded", None,
               IMG["offloaded"]),
        server(uuid(6), "h1", "SHELVED_OFFLOADED", "shelved_offloaded", "spawning",
               IMG["unshelving"]),
        server(uuid(7), "h1", "ACTIVE", "active", None, None),  # boot from volume
        server(uuid(8), "h2", "VERIFY_RESIZE", "resized", None, IMG["resizing"]),
        server(uuid(9), "h2", "ACTIVE", "active", None, IMG["on-h2"], project="other"),
        server(uuid(10), "h3", "ACTIVE", "active", None, IMG["elsewhere"]),
        server(uuid(11), "h3", "ACTIVE", "active", None, IMG["migrated-done"]),
        server(uuid(12), None, "SHELVED_OFFLOADED", "shelved_offloaded", None,
               IMG["offloaded"]),
    ]
    migrations = [
        migration(1, uuid(8), "h1", "h2", "finished"),  # resize waits for confirmation
        migration(2, uuid(11), "h1", "h3", "confirmed"),
        migration(3, uuid(99), "h1", "h2", "migrating"),  # its server is gone: 404
    ]
    return servers, migrations


# -- tests -----------------------------------------------------------------------------


def test_servers_on_the_host_protect_their_images(nova: FakeNova, node: Inventory) -> None:
    nova.servers, nova.migrations = cluster()
    result = NovaServers(["h1"], cloud="admin").collect(node)

    assert result.error is None, result.error
    assert in_use(result, node) == {
        h("building"): [f"instance {uuid(1)} (BUILD/spawning) on h1"],
        h("active"): [f"instance {uuid(2)} (ACTIVE) on h1"],
        f"{h('active')}_10737418240": [f"instance {uuid(2)} (ACTIVE) on h1"],
        h("shelved"): [f"instance {uuid(3)} (SHELVED) on h1"],
        h("rescued"): [f"instance {uuid(4)} (RESCUE) on h1"],
        h("unshelving"): [f"instance {uuid(6)} (SHELVED_OFFLOADED/spawning) on h1"],
        h("resizing"): [f"instance {uuid(8)} (VERIFY_RESIZE) migration finished h1 -> h2"],
    }
    # 7 listed on h1 (boot-from-volume and offloaded included) + 1 through its migration
    assert result.seen == 8
    assert result.by_file == {}
    # The rescue image is not in the API; the scan sees it through disk.rescue.
    assert [d.path.rsplit("/", 1)[-1] for d in node.users_of(h("rescue-image"))] == [
        "disk.rescue"]
    # It asked as nova expects an admin to, and paged through max_limit-sized pages.
    listings = [r for r in nova.requests if r.startswith("GET /v2.1/servers/detail")]
    assert len(listings) == 4
    assert all("all_tenants=True" in r and "host=h1" in r for r in listings)


def test_hosts_sharing_the_storage_are_all_asked(nova: FakeNova, node: Inventory) -> None:
    nova.servers, nova.migrations = cluster()
    result = NovaServers(["h1", "h2"], cloud="admin").collect(node)

    assert result.error is None, result.error
    used = in_use(result, node)
    assert used[h("on-h2")] == [f"instance {uuid(9)} (ACTIVE) on h2"]
    # the resizing server is listed on h2 and not counted again through its migration
    assert used[h("resizing")] == [f"instance {uuid(8)} (VERIFY_RESIZE) on h2"]
    assert h("elsewhere") not in used and h("migrated-done") not in used
    assert h("offloaded") not in used
    assert result.seen == 9


def test_credentials_from_os_variables(nova: FakeNova, node: Inventory, cloud: Cloud,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"OS_AUTH_URL": cloud.keystone, "OS_USERNAME": "admin",
                       "OS_PASSWORD": ADMIN_PASSWORD, "OS_PROJECT_NAME": "admin",
                       "OS_USER_DOMAIN_ID": "default", "OS_PROJECT_DOMAIN_ID": "default",
                       "OS_REGION_NAME": "RegionOne", "OS_IDENTITY_API_VERSION": "3",
                       "OS_CLIENT_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(key, value)
    nova.servers = [server(uuid(1), "h1", "BUILD", "building", "spawning", IMG["building"])]
    result = NovaServers(["h1"]).collect(node)
    assert result.error is None, result.error
    assert in_use(result, node) == {h("building"): [f"instance {uuid(1)} (BUILD/spawning) on h1"]}


def test_building_servers_are_named_so_their_folders_need_no_blanket_hold(
        nova: FakeNova, node: Inventory) -> None:
    """The pass narrows the spawn hold of an instance the API says is being built: its
    image is named (sha1 of image_ref), or it boots from a volume (no base at all)."""
    nova.servers = [
        server(uuid(1), "h1", "BUILD", "building", "spawning", IMG["building"]),
        server(uuid(2), "h1", "BUILD", "building", "block_device_mapping", ""),
        server(uuid(3), "h1", "ACTIVE", "active", "rescuing", IMG["shelved"]),
    ]
    result = NovaServers(["h1"], cloud="admin").collect(node)
    assert result.error is None, result.error
    assert result.building == {uuid(1), uuid(2)}  # rescuing is no build: its folder holds


def test_a_connection_built_by_the_caller(nova: FakeNova, node: Inventory) -> None:
    import openstack

    nova.servers = [server(uuid(3), "h1", "SHELVED", "shelved", None, IMG["shelved"])]
    source = NovaServers(["h1"], connect=lambda: openstack.connect(cloud="admin"))
    assert source.name == "nova-api"
    assert set(source.collect(node).by_name) == {h("shelved")}


def assert_error(result: SourceResult, *words: str) -> None:
    assert result.error is not None
    assert result.error.startswith("nova-api: ")
    assert "\n" not in result.error
    assert result.by_name == {} and result.by_file == {}
    for word in words:
        assert word.lower() in result.error.lower(), result.error


def test_wrong_password_is_an_error(nova: FakeNova, node: Inventory) -> None:
    result = NovaServers(["h1"], cloud="wrong-password").collect(node)
    assert_error(result, "401")
    assert nova.requests == []


def test_not_admin_is_an_error(nova: FakeNova, node: Inventory) -> None:
    """A member may log in, but nova refuses `all_tenants` to non-admins (403)."""
    nova.servers = [server(uuid(1), "h1", "BUILD", "building", "spawning", IMG["building"],
                           project="demo")]
    result = NovaServers(["h1"], cloud="viewer").collect(node)
    assert_error(result, "403", "get_all_tenants")
    assert any("all_tenants=True" in r for r in nova.requests)


@pytest.mark.parametrize(("cloud_name", "words"), [
    ("nova-down", ("connect",)),
    ("keystone-down", ("connect",)),
    ("no-compute", ("compute",)),
    ("not-in-clouds-yaml", ("not-in-clouds-yaml",)),
])
def test_unreachable_or_misconfigured_is_an_error(nova: FakeNova, node: Inventory,
                                                  cloud_name: str,
                                                  words: tuple[str, ...]) -> None:
    assert_error(NovaServers(["h1"], cloud=cloud_name, timeout=5).collect(node), *words)


@pytest.mark.parametrize("cloud_name", ["nova-hangs", "keystone-hangs"])
def test_an_api_that_never_answers_is_bounded(nova: FakeNova, node: Inventory,
                                              cloud_name: str) -> None:
    start = time.monotonic()
    result = NovaServers(["h1"], cloud=cloud_name, timeout=0.5).collect(node)
    assert time.monotonic() - start < 10
    assert_error(result, "timed out")


def test_a_failing_migration_listing_fails_the_whole_source(nova: FakeNova,
                                                            node: Inventory) -> None:
    """Half an answer is no answer: the servers found before it are not reported."""
    nova.servers = [server(uuid(2), "h1", "ACTIVE", "active", None, IMG["active"])]
    nova.failing.add("/v2.1/os-migrations")
    result = NovaServers(["h1"], cloud="admin").collect(node)
    assert_error(result, "500")


def test_no_host_is_an_error(node: Inventory) -> None:
    assert_error(NovaServers([], cloud="admin").collect(node), "host")


def test_a_bug_in_connect_is_an_error_not_a_crash(node: Inventory) -> None:
    def broken() -> Any:
        raise RuntimeError("boom\nsecond line")

    assert_error(NovaServers(["h1"], connect=broken).collect(node), "RuntimeError: boom")


def test_which_states_protect() -> None:
    assert protects("building", "spawning")
    assert protects("shelved", None) and protects("rescued", None)
    assert protects("error", None) and protects("resized", None) and protects(None, None)
    assert not protects("shelved_offloaded", None)
    assert protects("shelved_offloaded", "unshelving")


def test_image_ids() -> None:
    assert image_id_of({"id": "abc", "links": []}) == "abc"
    assert image_id_of({}) is None and image_id_of("") is None and image_id_of(None) is None
    assert image_id_of("http://glance/v2/images/abc") == "abc"
    assert image_id_of({"id": "  "}) is None


def test_kernel_and_ramdisk_are_named_too(nova: FakeNova, node: Inventory) -> None:
    """An AMI-style server: nova fetches its kernel and ramdisk into the cache as well
    (sha1 of their ids), and a rebuild needs them again."""
    s = server(uuid(20), "h1", "ACTIVE", "active", None, IMG["active"])
    s["OS-EXT-SRV-ATTR:kernel_id"] = "kernel-image-id"
    s["OS-EXT-SRV-ATTR:ramdisk_id"] = "ramdisk-image-id"
    nova.servers = [s]
    result = NovaServers(["h1"], cloud="admin").collect(node)
    assert result.error is None, result.error
    words = {k: [x.who for x in v] for k, v in result.by_name.items()}
    who = f"instance {uuid(20)} (ACTIVE) on h1"
    assert words == {h("active"): [who],
                     image_hash("kernel-image-id"): [f"{who} as its kernel"],
                     image_hash("ramdisk-image-id"): [f"{who} as its ramdisk"]}
