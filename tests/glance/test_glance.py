"""Against a real Glance (and the real Keystone in front of it): `cache fetch` makes the
base nova's own fetch makes, under nova's lock, verified; bad input leaves the cache as it
was; `cache plan` names every base by its image, deleted and deactivated images go first
(except a last copy), and Glance down means "unknown", never "deleted".

Images are small real files: raw with a recognisable pattern, and qcow2 converted from it
with qemu-img. The nova comparison runs nova 34's `fetch_image`/`fetch_to_raw` in the nova
venv against the same Glance (tests/glance/_nova_fetch.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _cloud import Cloud, cloud_fixture, glance_env  # noqa: F401 - the fixture

from _cli_tree import run_cli
from conftest import make_qcow2, make_raw, qemu_img, side_venv_python
from novakeeper.cache.layout import image_hash
from novakeeper.errors import ExitCode

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::PendingDeprecationWarning")
HERE = Path(__file__).resolve().parent
MiB = 1 << 20
HOUR = 3600
DAY = 86400


def pattern(size: int, seed: int) -> bytes:
    """Bytes nobody could mistake for zeros or for another image's."""
    block = bytes((i * 7 + seed * 13) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


@dataclass
class Images:
    raw_file: Path
    raw: Any
    qcow2: Any


@pytest.fixture(scope="module")
def images(cloud: Cloud, tmp_path_factory: pytest.TempPathFactory) -> Images:
    work = tmp_path_factory.mktemp("images")
    raw_file = work / "cirros.raw"
    raw_file.write_bytes(pattern(2 * MiB, 1) + bytes(MiB) + pattern(MiB, 2))  # a hole too
    qcow = work / "cirros.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_file), str(qcow))
    return Images(raw_file, cloud.upload(raw_file, "raw", "cirros-raw"),
                  cloud.upload(qcow, "qcow2", "cirros-qcow2"))


@dataclass
class Node:
    root: Path
    instances: Path
    cache: Path
    conf: Path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli("--config-file", str(self.conf), *args, timeout=timeout)

    def base(self, image_id: str) -> Path:
        return self.cache / image_hash(image_id)

    def names(self) -> set[str]:
        """The cache's files, without novakeeper's own run lock."""
        return {p.name for p in self.cache.iterdir() if p.name != ".novakeeper-run.lock"}


def make_node(root: Path, extra: str = "") -> Node:
    instances = root / "instances"
    cache = instances / "_base"
    cache.mkdir(parents=True)
    conf = root / "nova.conf"
    conf.write_text(f"[DEFAULT]\ninstances_path = {instances}\nhost = node-1\n"
                    "[novakeeper]\nglance_images = true\nglance_cloud = admin\n"
                    "glance_refresh_seconds = 0\nusage_sources =\n" + extra)
    return Node(root, instances, cache, conf)


@pytest.fixture
def node(tmp_path: Path, cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Node:
    for k, v in glance_env(cloud).items():
        monkeypatch.setenv(k, v)
    return make_node(tmp_path)


def fetch_json(node: Node, *args: str) -> dict[str, Any]:
    proc = node.cli("cache", "fetch", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


# -- cache fetch -----------------------------------------------------------------------


def test_fetch_makes_the_base_novas_own_fetch_makes(node: Node, images: Images,
                                                     cloud: Cloud, tmp_path: Path) -> None:
    raw, qcow = images.raw, images.qcow2
    data = fetch_json(node, raw.id, qcow.id)
    by_id = {f["image_id"]: f for f in data["fetched"]}
    assert by_id[raw.id]["action"] == by_id[qcow.id]["action"] == "fetched"
    assert by_id[raw.id]["converted_from"] is None
    assert by_id[qcow.id]["converted_from"] == "qcow2"  # force_raw_images defaults to True
    assert by_id[raw.id]["algo"] == "sha512"
    assert by_id[raw.id]["digest"] == raw.hash_value  # Glance's os_hash_value, verified
    source = images.raw_file.read_bytes()
    for image in (raw, qcow):
        base = node.base(image.id)
        assert base.read_bytes() == source
        st = base.stat()
        assert oct(st.st_mode & 0o7777) == oct(0o644)
        assert (st.st_uid, st.st_gid) == (node.cache.stat().st_uid, node.cache.stat().st_gid)
        assert time.time() - st.st_mtime < 120  # mtime now
        # nova's lock file, taken through oslo.concurrency
        assert (node.instances / "locks" / f"nova-{image_hash(image.id)}").exists()
    assert node.names() == {image_hash(raw.id), image_hash(qcow.id)}  # no .part/.converted

    # nova 34's own fetch of the same images from the same Glance: byte for byte the same
    nova_python = side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")
    other = make_node(tmp_path / "nova")
    token = cloud.conn.session.get_token()
    proc = subprocess.run([str(nova_python), str(HERE / "_nova_fetch.py"), cloud.glance.url,
                           token, str(other.instances), raw.id, qcow.id],
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = json.loads(proc.stdout.strip().splitlines()[-1])
    for image in (raw, qcow):
        ours, novas = node.base(image.id), Path(made[image.id])
        assert novas.name == ours.name
        assert novas.read_bytes() == ours.read_bytes()
        assert novas.stat().st_size == ours.stat().st_size
        assert json.loads(qemu_img("info", "--output=json", str(novas)))["format"] == "raw"
    assert other.names() == node.names()  # nova left no .part/.converted either


def test_a_present_base_is_only_touched(node: Node, images: Images) -> None:
    fetch_json(node, images.raw.id)
    base = node.base(images.raw.id)
    before = base.stat()
    os.utime(base, (before.st_atime - DAY, before.st_mtime - DAY))
    data = fetch_json(node, images.raw.id, "--pin")
    assert data["fetched"][0]["action"] == "present"
    assert data["fetched"][0]["pinned"] is True
    after = base.stat()
    assert after.st_ino == before.st_ino  # not downloaded again
    assert after.st_mtime > before.st_mtime - DAY + HOUR
    pins = node.cli("cache", "pins", "--json")
    assert images.raw.id in pins.stdout


def _fails(node: Node, code: ExitCode, *args: str) -> str:
    before = {p.name: p.stat().st_mtime_ns for p in node.cache.iterdir()}
    proc = node.cli("cache", "fetch", *args)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("novakeeper: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in node.cache.iterdir()} == before
    return lines[0]


def test_bad_input_leaves_the_cache_as_it_was(node: Node, images: Images, cloud: Cloud,
                                              tmp_path: Path) -> None:
    assert "no such image" in _fails(node, ExitCode.IMAGE_UNKNOWN,
                                     "00000000-0000-4000-8000-000000000000")
    queued = cloud.conn.image.create_image("never-uploaded", disk_format="raw",
                                           container_format="bare", allow_duplicates=True)
    assert "is queued in Glance" in _fails(node, ExitCode.IMAGE_NOT_ACTIVE, queued.id)
    # the name exists, but holds another file
    make_raw(node.base(images.raw.id), 4096, b"not this image")
    assert "exists but is a different file" in _fails(node, ExitCode.NAME_CONFLICT,
                                                      images.raw.id)
    # no room in the budget for it (checked before the download starts)
    tight = make_node(tmp_path / "tight", "max_cache_size = 1M\n")
    assert "cache budget" in _fails(tight, ExitCode.NO_SPACE, images.qcow2.id)


def test_a_hash_mismatch_is_discarded(node: Node, cloud: Cloud, tmp_path: Path) -> None:
    """Bit rot in Glance's own store: Glance serves the bytes, the hash catches them."""
    src = make_raw(tmp_path / "rot.raw", MiB, pattern(MiB, 5))
    image = cloud.upload(src, "raw", "rotten")
    stored = cloud.glance.work / "data" / "images" / image.id
    data = bytearray(stored.read_bytes())
    data[1000] ^= 0xFF
    stored.write_bytes(bytes(data))
    line = _fails(node, ExitCode.HASH_MISMATCH, image.id)
    assert "does not match Glance" in line and "discarded" in line
    assert node.names() == set()


def test_an_interrupted_fetch_leaves_no_partial_file(node: Node, cloud: Cloud,
                                                     tmp_path: Path) -> None:
    src = make_raw(tmp_path / "big.raw", 8 * MiB, pattern(8 * MiB, 9))
    image = cloud.upload(src, "raw", "big")
    part = node.base(image.id).with_name(image_hash(image.id) + ".part")
    proc = subprocess.Popen([sys.executable, "-m", "novakeeper", "--config-file",
                             str(node.conf), "cache", "fetch", "--rate-limit", "1", image.id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the download to start, not timing it
    assert part.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == (f"novakeeper: error: interrupted while fetching {image.id}: "
                           "nothing of it left in the cache")
    assert node.names() == set()


# -- naming, deleted images first, Glance down -----------------------------------------


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _plan(node: Node, *extra: str) -> dict[str, dict[str, Any]]:
    proc = node.cli("cache", "plan", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    return {d["name"]: d for d in plan["decisions"]} | {"": {"notes": plan["notes"]}}


def test_plan_names_bases_and_deleted_images_go_first(node: Node, cloud: Cloud,
                                                      tmp_path: Path) -> None:
    made = {}
    for i, name in enumerate(("keep-active", "to-delete", "to-deactivate", "in-use-deleted")):
        made[name] = cloud.upload(make_raw(tmp_path / f"{name}.raw", MiB, pattern(MiB, i)),
                                  "raw", name)
    fetch_json(node, *(img.id for img in made.values()))
    # an instance whose disk is on the "in-use-deleted" base
    inst = node.instances / "0a0a0a0a-0000-4000-8000-00000000000a"
    make_qcow2(inst / "disk", backing=node.base(made["in-use-deleted"].id), size="1M")
    (inst / "console.log").write_text("")
    for img in made.values():
        _age(node.base(img.id), 2 * HOUR)  # unused for two hours: nova keeps them 24 h
    _age(node.base(made["keep-active"].id), 3 * HOUR)  # least recently used of all

    before = _plan(node)
    for name, img in made.items():
        d = before[image_hash(img.id)]
        assert d["image"]["id"] == img.id and d["image"]["name"] == name
        assert d["image"]["status"] == "active"
        assert d["image"]["os_hash_algo"] == "sha512"
        assert d["image"]["os_hash_value"] == img.hash_value
        assert d["image"]["visibility"] == img.visibility
    assert before[image_hash(made["to-delete"].id)]["verdict"] == "too-young"

    cloud.conn.image.delete_image(made["to-delete"].id)
    cloud.conn.image.deactivate_image(made["to-deactivate"].id)
    cloud.conn.image.delete_image(made["in-use-deleted"].id)
    after = _plan(node)
    deleted = after[image_hash(made["to-delete"].id)]
    assert deleted["image"]["status"] == "deleted" and deleted["verdict"] == "remove"
    assert "min age 1 h" in deleted["reason"]
    deactivated = after[image_hash(made["to-deactivate"].id)]
    assert deactivated["image"]["status"] == "deactivated"
    assert deactivated["verdict"] == "remove"
    at_risk = after[image_hash(made["in-use-deleted"].id)]
    assert at_risk["verdict"] == "in-use" and "AT RISK" in at_risk["reason"]
    active = after[image_hash(made["keep-active"].id)]
    assert active["verdict"] == "too-young"

    # under a budget, the deleted and deactivated images' bases go before the least
    # recently used active one
    budget = make_node(tmp_path / "budget", "max_cache_size = 1M\n"
                       "deleted_image_min_age_seconds = 604800\n"
                       "eviction_min_age_seconds = 0\n"
                       "[image_cache]\nremove_unused_original_minimum_age_seconds = 604800\n")
    for img in made.values():
        target = budget.base(img.id)
        target.write_bytes(node.base(img.id).read_bytes())
        _age(target, 2 * HOUR)
    _age(budget.base(made["keep-active"].id), 3 * HOUR)
    plan = {d["name"]: d for d in json.loads(budget.cli("cache", "plan", "--json").stdout)[
        "decisions"]}
    gone = {image_hash(made[n].id) for n in ("to-delete", "to-deactivate", "in-use-deleted")}
    for name in gone:
        assert plan[name]["verdict"] == "evict"
        assert "evicted first" in plan[name]["reason"]
    clean = budget.cli("cache", "clean", "--yes", "--json")
    assert clean.returncode in (0, ExitCode.SHORTFALL), clean.stderr
    removed = [o["name"] for o in json.loads(clean.stdout)["result"]["outcomes"]
               if o["action"] == "removed"]
    assert removed[:3] and set(removed[:3]) == gone  # deleted/deactivated first
    status = json.loads(node.cli("cache", "status", "--json").stdout)
    rows = {r["id"]: r for r in status["images"]}
    assert rows[made["to-delete"].id]["status"] == "deleted"


def test_glance_down_means_unknown_never_deleted(node: Node, cloud: Cloud,
                                                 tmp_path: Path) -> None:
    img = cloud.upload(make_raw(tmp_path / "gone.raw", MiB, pattern(MiB, 7)), "raw", "gone")
    fetch_json(node, img.id)
    _age(node.base(img.id), 2 * HOUR)
    cloud.conn.image.delete_image(img.id)
    gone = _plan(node)[image_hash(img.id)]
    assert gone["verdict"] == "remove"
    assert gone["image"]["name"] == "gone"  # named at fetch time, before any listing
    cloud.glance.stop()
    try:
        down = _plan(node)
        d = down[image_hash(img.id)]
        assert d["image"]["status"] == "unknown"
        assert d["verdict"] == "too-young"  # nova's 24 h rule only
        assert any("image statuses unknown" in n for n in down[""]["notes"])
        metrics_ok = node.cli("cache", "status", "--json")
        assert metrics_ok.returncode == 0
    finally:
        cloud.glance.start()
        cloud.register()
        cloud.reconnect()
    assert _plan(node)[image_hash(img.id)]["verdict"] == "remove"


def test_glance_is_asked_once_per_refresh_interval(node: Node, cloud: Cloud,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    img = cloud.upload(make_raw(tmp_path / "cached.raw", MiB, pattern(MiB, 11)), "raw",
                       "cached")
    fetch_json(node, img.id)
    _age(node.base(img.id), 2 * HOUR)
    monkeypatch.setenv("OS_NOVAKEEPER__GLANCE_REFRESH_SECONDS", "3600")
    assert _plan(node)[image_hash(img.id)]["image"]["status"] == "active"
    cloud.conn.image.delete_image(img.id)
    # within the interval the stored listing answers: Glance is not asked again
    assert _plan(node)[image_hash(img.id)]["image"]["status"] == "active"
    monkeypatch.setenv("OS_NOVAKEEPER__GLANCE_REFRESH_SECONDS", "0")
    assert _plan(node)[image_hash(img.id)]["image"]["status"] == "deleted"


def test_aggregate_hosts_file_decides_whether_this_node_fetches(node: Node, images: Images,
                                                                tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# aggregate fast-boot\nnode-2\nnode-3\n")
    proc = node.cli("cache", "fetch", "--aggregate-hosts-from-file", str(hosts),
                    images.raw.id)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"host node-1 is not in {hosts} (2 hosts): nothing "
                                   "fetched")
    assert node.names() == set()
    hosts.write_text("node-2, node-1\n")
    data = fetch_json(node, "--aggregate-hosts-from-file", str(hosts), images.raw.id)
    assert data["fetched"][0]["action"] == "fetched"
    assert node.names() == {image_hash(images.raw.id)}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a file system the image does not fit in (root only)."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_no_room_on_the_file_system_is_found_before_the_download(
        small_fs: Path, images: Images, cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in glance_env(cloud).items():
        monkeypatch.setenv(k, v)
    node = make_node(small_fs)
    line = _fails(node, ExitCode.NO_SPACE, images.raw.id)  # 4 MiB into 2 MiB
    assert "needs 4.0 MiB" in line and "nothing fetched" in line
    assert node.names() == set()


def _nova_standin() -> Any:
    """tests/usage/test_novaapi.py's Nova API stand-in (nova's shapes and default policy,
    tokens checked with Keystone), loaded from its file."""
    import importlib.util

    path = HERE.parent / "usage" / "test_novaapi.py"
    spec = importlib.util.spec_from_file_location("_novaapi_standin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_last_copy_an_instance_names_is_kept_until_released(
        node: Node, cloud: Cloud, tmp_path: Path) -> None:
    """Glance deletes an image and its kernel; an instance on this host (the Nova API,
    through Keystone's catalog) still names both: their bases are last copies, kept by
    `clean`, until an operator releases one."""
    import threading
    from wsgiref.simple_server import make_server

    standin = _nova_standin()
    nova = standin.FakeNova(cloud.keystone_url, cloud.conn.session.get_token())
    httpd = make_server("127.0.0.1", 0, nova, server_class=standin._ThreadingServer,
                        handler_class=standin._Quiet)
    nova.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ident = cloud.conn.identity
    compute = ident.create_service(name="nova", type="compute", enabled=True)
    endpoint = ident.create_endpoint(service_id=compute.id, interface="public",
                                     url=f"{nova.base}/v2.1", region_id="RegionOne")
    try:
        image = cloud.upload(make_raw(tmp_path / "old.raw", MiB, pattern(MiB, 21)), "raw",
                             "centos-7")
        kernel = cloud.upload(make_raw(tmp_path / "vmlinuz", MiB, pattern(MiB, 22)), "raw",
                              "centos-7-kernel")
        fetch_json(node, image.id, kernel.id)
        for img in (image, kernel):
            _age(node.base(img.id), 30 * DAY)
        vm = standin.server("7d2b64c8-1f0e-4bb2-9a55-3f1f1c2f0f10", "node-1", "SHUTOFF",
                            "stopped", None, image.id)
        vm["OS-EXT-SRV-ATTR:kernel_id"] = kernel.id
        nova.servers = [vm]
        cloud.conn.image.delete_image(image.id)
        cloud.conn.image.delete_image(kernel.id)
        nova_node = make_node(tmp_path / "n", "nova_api_cloud = admin\n")
        nova_node.conf.write_text(nova_node.conf.read_text().replace(
            "usage_sources =\n", "usage_sources = nova-api\n").replace(
            str(nova_node.instances), str(node.instances)))

        plan = _plan(nova_node)
        for img, role in ((image, ""), (kernel, " as its kernel")):
            d = plan[image_hash(img.id)]
            assert d["verdict"] == "last-copy", d["reason"]
            assert d["image"]["status"] == "deleted"
            assert d["named_by"] == [f"instance {vm['id']} (SHUTOFF) on node-1{role}"]
            assert f"novakeeper cache release {img.id}" in d["reason"]
        clean = nova_node.cli("cache", "clean", "--yes", "--json")
        assert clean.returncode == 0, clean.stderr
        assert node.names() == {image_hash(image.id), image_hash(kernel.id)}

        released = nova_node.cli("cache", "release", image.id, "--note", "rebuilt")
        assert released.returncode == 0, released.stderr
        plan = _plan(nova_node)
        assert plan[image_hash(image.id)]["verdict"] == "remove"
        assert plan[image_hash(kernel.id)]["verdict"] == "last-copy"
        clean = nova_node.cli("cache", "clean", "--yes", "--json")
        assert clean.returncode == 0, clean.stderr
        assert node.names() == {image_hash(kernel.id)}
    finally:
        ident.delete_endpoint(endpoint)
        ident.delete_service(compute)
        httpd.shutdown()


class FlakyHop:
    """A forwarding hop in front of the real Glance: the first `allow` requests go
    through to Glance, every later one gets 502 (a load balancer whose Glance went away),
    so Glance goes away at a known request rather than at a random moment."""

    def __init__(self, target: str, allow: int) -> None:
        self.target, self.allow = target, allow
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        import urllib.error
        import urllib.request

        path = environ["PATH_INFO"] + (f"?{environ['QUERY_STRING']}"
                                       if environ.get("QUERY_STRING") else "")
        self.seen.append(path)
        if len(self.seen) > self.allow:
            start("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [b"glance went away"]
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items()
                   if k.startswith("HTTP_") and k != "HTTP_HOST"}
        req = urllib.request.Request(self.target + path, headers=headers,
                                     method=environ["REQUEST_METHOD"])
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, body, got = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, body, got = exc.code, exc.read(), exc.headers
        body = body.replace(self.target.encode(), self.base.encode())  # next links
        start(f"{status} X", [(k, v) for k, v in got.items()
                              if k.lower() not in ("content-length", "connection",
                                                   "transfer-encoding")]
              + [("Content-Length", str(len(body)))])
        return [body]

    base = ""


def test_glance_failing_in_the_middle_of_a_refresh_means_unknown(
        node: Node, cloud: Cloud, tmp_path: Path) -> None:
    """Glance answers the version document and the first page of the listing, then goes
    away: the refresh fails half-way, and an image it had deleted is `unknown`, not
    deleted, for that pass."""
    import threading
    from wsgiref.simple_server import make_server

    made = [cloud.upload(make_raw(tmp_path / f"half{i}.raw", MiB, pattern(MiB, 31 + i)),
                         "raw", f"half-{i}") for i in range(3)]
    fetch_json(node, made[0].id)
    _age(node.base(made[0].id), 2 * HOUR)
    cloud.conn.image.delete_image(made[0].id)
    assert _plan(node)[image_hash(made[0].id)]["image"]["status"] == "deleted"

    standin = _nova_standin()
    hop = FlakyHop(cloud.glance.url, allow=2)
    httpd = make_server("127.0.0.1", 0, hop, server_class=standin._ThreadingServer,
                        handler_class=standin._Quiet)
    hop.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    real = cloud.glance.port
    cloud.glance.port = httpd.server_address[1]
    cloud.register()  # the catalog now points at the hop
    try:
        plan = _plan(node)
    finally:
        cloud.glance.port = real
        cloud.register()
        httpd.shutdown()
    assert any(p.startswith("/v2/images?") for p in hop.seen[:hop.allow]), hop.seen
    assert hop.seen[hop.allow].startswith("/v2/images?"), hop.seen  # mid-listing: a page
    d = plan[image_hash(made[0].id)]
    assert d["image"]["status"] == "unknown" and d["verdict"] == "too-young"
    assert any(n.startswith("Glance: ") and "unknown" in n for n in plan[""]["notes"])
    assert _plan(node)[image_hash(made[0].id)]["image"]["status"] == "deleted"


def test_a_terminal_gets_a_progress_bar(node: Node, cloud: Cloud, tmp_path: Path) -> None:
    """On a terminal (script(1) gives the fetch a pseudo-terminal) the download draws a
    progress bar on stderr; without one (every other test) it draws nothing."""
    if not shutil.which("script"):
        pytest.skip("no script(1) (util-linux) to give the fetch a terminal")
    img = cloud.upload(make_raw(tmp_path / "tty.raw", 4 * MiB, pattern(4 * MiB, 41)), "raw",
                       "tty")
    cmd = shlex.join([sys.executable, "-m", "novakeeper", "--config-file", str(node.conf),
                      "cache", "fetch", "--rate-limit", "8", img.id])
    proc = subprocess.run(["script", "-qefc", cmd, "/dev/null"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stdout
    assert "\u2501" in proc.stdout and "4.0/4.0 MiB" in proc.stdout  # the bar, at its end
    assert f"fetched {img.id}" in proc.stdout
    quiet = fetch_json(node, img.id)  # no terminal: JSON only, no bar
    assert quiet["fetched"][0]["action"] == "present"


def test_a_crashed_fetch_leaves_a_part_the_next_fetch_replaces(node: Node, cloud: Cloud,
                                                               tmp_path: Path) -> None:
    """SIGKILL mid-download (no cleanup can run): the `.part` stays, `plan` calls it a
    download in progress until stale_partial_seconds, and the next fetch of the image,
    under nova's lock, removes it and makes the base."""
    src = make_raw(tmp_path / "crash.raw", 8 * MiB, pattern(8 * MiB, 51))
    image = cloud.upload(src, "raw", "crash")
    name = image_hash(image.id)
    part = node.cache / f"{name}.part"
    proc = subprocess.Popen([sys.executable, "-m", "novakeeper", "--config-file",
                             str(node.conf), "cache", "fetch", "--rate-limit", "1", image.id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the download to start, not timing it
    proc.kill()
    proc.wait()
    assert node.names() == {f"{name}.part"}
    assert _plan(node)[f"{name}.part"]["verdict"] == "downloading"
    data = fetch_json(node, image.id)
    assert data["fetched"][0]["action"] == "fetched"
    assert node.names() == {name}
    assert node.base(image.id).read_bytes() == src.read_bytes()


def test_fetch_waits_for_novas_lock(node: Node, images: Images) -> None:
    """While nova holds `nova-<sha1>` (oslo.concurrency, as nova's Image.cache takes it),
    a fetch does not start; with --lock-wait 0 it says so and leaves nothing."""
    from oslo_concurrency import lockutils

    name = image_hash(images.raw.id)
    lock = lockutils.external_lock(name, lock_file_prefix="nova-",
                                   lock_path=str(node.instances / "locks"))
    assert lock.acquire(blocking=True, timeout=10)
    try:
        line = _fails(node, ExitCode.BUSY, "--lock-wait", "0", images.raw.id)
        assert f"nova holds its lock {node.instances / 'locks' / ('nova-' + name)}" in line
    finally:
        lock.release()
    assert fetch_json(node, images.raw.id)["fetched"][0]["action"] == "fetched"
