"""`cache verify`'s logic on real trees: bases of random data in `instances/_base`, an
instance whose qcow2 disk (made by qemu-img) is chained to one of them, the real Scanner,
plan and state database, nova's real lock files.

Corruption is made the way it happens: a byte flipped in place with the mtime put back to
the nanosecond (os.utime), a file cut short, a read that fails with EIO (the one place a
read is faked: no test can make a disk return EIO on demand).

The Glance comparison at the end runs against the real Keystone of tests/usage (its
fixtures are reused) and a Glance image API stand-in on loopback, through openstacksdk
unmocked, as the nova-api usage source is tested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest

from conftest import make_qcow2
from novakeeper import settings as settings_mod
from novakeeper.cache.inventory import Scanner
from novakeeper.cache.layout import QUARANTINE_NAME, image_hash
from novakeeper.integrity import checksum
from novakeeper.integrity import state as istate
from novakeeper.integrity.glance import Glance, GlanceImage, Reference, reference
from novakeeper.integrity.quarantine import scan_quarantine
from novakeeper.integrity.verify import (
    Action,
    FileStatus,
    Verifier,
    VerifyReport,
    verify,
    verify_some,
)
from novakeeper.passes import plan_pass
from novakeeper.settings import Settings
from novakeeper.state.db import open_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "usage"))
from test_novaapi import (
    ADMIN_PASSWORD,
    FakeNova,
    Keystone,
    _Quiet,
    _region_cloud,
    _ThreadingServer,
    keystone,  # noqa: F401 - the session's real Keystone, as a fixture of this module
    keystone_token,
    server,
)

KiB = 1 << 10
MiB = 1 << 20
IMAGE_USED = "11111111-2222-4333-8444-000000000001"
IMAGE_FREE = "11111111-2222-4333-8444-000000000002"
IMAGE_OTHER = "11111111-2222-4333-8444-000000000003"
USED, FREE, OTHER = (image_hash(i) for i in (IMAGE_USED, IMAGE_FREE, IMAGE_OTHER))
SWAP = "swap_512"
INSTANCE = "0a0a0a0a-0000-4000-8000-00000000000a"
SIZES = {USED: 3 * MiB + 5, FREE: 2 * MiB, OTHER: 1 * MiB + 7, SWAP: 512 * KiB}


@dataclass
class Node:
    root: Path
    instances: Path
    cache: Path
    config: Path
    data: dict[str, bytes] = field(default_factory=dict)

    def settings(self, extra: str = "") -> Settings:
        self.config.write_text("[DEFAULT]\nhost = h1\n[novakeeper]\nlock_wait_seconds = 0.2\n"
                               + extra)
        return settings_mod.load([str(self.config)], str(self.instances))

    def path(self, name: str) -> Path:
        return self.cache / name

    def quarantined(self) -> list[str]:
        return [e.name for e in scan_quarantine(str(self.cache))]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    instances = tmp_path / "instances"
    cache = instances / "_base"
    cache.mkdir(parents=True)
    n = Node(tmp_path, instances, cache, tmp_path / "nova.conf")
    for name, size in SIZES.items():
        n.data[name] = os.urandom(size)
        n.path(name).write_bytes(n.data[name])
    make_qcow2(instances / INSTANCE / "disk", backing=str(cache / USED), size="4M")
    return n


def run(conf: Settings, files: list[str] | None = None, **kwargs: Any) -> VerifyReport:
    with plan_pass(conf) as p:
        return verify(conf, p, files, **kwargs)


def by_name(report: VerifyReport) -> dict[str, Any]:
    return {r.name: r for r in report.results}


def flip_byte(path: Path, offset: int) -> None:
    """Bit rot as a scrub finds it: one byte changed, size and mtime (ns) as they were."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def state_of(conf: Settings) -> Any:
    return open_state(conf.state_path, write=False)


# -- records ---------------------------------------------------------------------------


def test_first_read_records_then_unchanged_files_are_not_read_again(node: Node) -> None:
    conf = node.settings()
    first = run(conf)
    assert {r.name: r.status for r in first.results} == dict.fromkeys(SIZES, FileStatus.RECORDED)
    assert first.bytes_read == sum(SIZES.values())
    for r in first.results:
        assert r.digest == hashlib.sha256(node.data[r.name]).hexdigest()

    second = run(conf)
    assert {r.status for r in second.results} == {FileStatus.UNCHANGED}
    assert second.bytes_read == 0 and second.files_read == 0

    forced = run(conf, force=True)
    assert {r.status for r in forced.results} == {FileStatus.OK}
    assert forced.bytes_read == sum(SIZES.values())


def test_a_touched_base_is_read_again_and_still_matches(node: Node) -> None:
    """Nova (and clean) touch in-use bases: a new mtime, the same bytes."""
    conf = node.settings()
    run(conf)
    os.utime(node.path(USED))
    again = by_name(run(conf))
    assert again[USED].status is FileStatus.OK and again[USED].bytes_read == SIZES[USED]
    assert again[FREE].status is FileStatus.UNCHANGED


def test_another_algorithm_is_recorded_beside_the_first(node: Node) -> None:
    conf = node.settings()
    run(conf)
    md5 = run(conf, [FREE], algorithm="md5")
    assert md5.results[0].status is FileStatus.RECORDED
    assert md5.results[0].digest == hashlib.md5(node.data[FREE]).hexdigest()
    db = state_of(conf)
    try:
        assert {a for n, a in istate.load(db) if n == FREE} == {"sha256", "md5"}
    finally:
        db.close()


def test_files_are_named_by_name_or_by_path_inside_the_cache(node: Node) -> None:
    conf = node.settings()
    report = run(conf, [FREE, str(node.path(SWAP)), f"{node.cache}/{OTHER}/"])
    assert [r.name for r in report.results] == [FREE, SWAP, OTHER]


# -- corruption ------------------------------------------------------------------------


def test_a_flipped_byte_in_an_unused_base_is_caught_and_quarantined(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    conf = node.settings()
    run(conf)
    ino = node.path(FREE).stat().st_ino
    flip_byte(node.path(FREE), 1234567)

    report = run(conf)
    r = by_name(report)[FREE]
    assert r.status is FileStatus.MISMATCH
    assert "size and mtime unchanged" in r.detail
    assert r.expected == hashlib.sha256(node.data[FREE]).hexdigest()
    assert r.digest != r.expected
    assert r.action is Action.QUARANTINED
    assert [x.name for x in report.mismatches] == [FREE]
    # moved, not deleted: the same inode, in the quarantine folder inside the cache
    target = node.cache / QUARANTINE_NAME / FREE
    assert r.quarantine_path == str(target)
    assert not node.path(FREE).exists()
    assert target.stat().st_ino == ino and target.stat().st_size == SIZES[FREE]
    assert node.quarantined() == [FREE]
    # journaled
    db = state_of(conf)
    try:
        rows = istate.quarantined(db)
        assert [(q.name, q.outcome, q.target) for q in rows] == [
            (FREE, istate.Moved.QUARANTINED, str(target))]
        assert "size and mtime unchanged" in rows[0].reason
        assert istate.corrupt(db) == []  # the base is gone from the cache: nothing pending
    finally:
        db.close()
    assert any("Quarantined corrupt base file" in m and FREE in m for m in caplog.messages)
    # not a cache file any more: neither the scan nor the plan see it
    assert FREE not in {b.name for b in Scanner(str(node.instances), "_base").scan().bases}
    with plan_pass(conf) as p:
        assert QUARANTINE_NAME not in {d.name for d in p.plan.decisions}
        assert FREE not in {d.name for d in p.plan.decisions}
    # the others were left alone
    assert {n.name for n in node.cache.iterdir()} == {USED, OTHER, SWAP, QUARANTINE_NAME}


def test_a_truncated_base_is_a_mismatch(node: Node) -> None:
    conf = node.settings()
    run(conf)
    st = node.path(OTHER).stat()
    os.truncate(node.path(OTHER), 4096)
    os.utime(node.path(OTHER), ns=(st.st_atime_ns, st.st_mtime_ns))  # even hidden
    r = by_name(run(conf))[OTHER]
    assert r.status is FileStatus.MISMATCH and r.bytes_read == 4096
    assert r.detail.startswith(f"truncated: 4096 bytes, {SIZES[OTHER]} at its last good read")
    assert r.action is Action.QUARANTINED


def test_the_reference_survives_a_mismatch(node: Node) -> None:
    """The good digest stays in the record; the bad one is kept beside it as evidence."""
    conf = node.settings()
    run(conf)
    flip_byte(node.path(USED), 10)
    run(conf)
    db = state_of(conf)
    try:
        rec = istate.load(db)[(USED, "sha256")]
        assert rec.status is istate.Status.MISMATCH
        assert rec.value == hashlib.sha256(node.data[USED]).hexdigest()
        assert rec.observed == hashlib.sha256(node.path(USED).read_bytes()).hexdigest()
    finally:
        db.close()


def test_a_corrupt_base_in_use_stays_and_is_reported_with_its_instances(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    conf = node.settings()
    run(conf)
    flip_byte(node.path(USED), 3 * MiB)
    caplog.set_level(logging.INFO, "novakeeper")

    report = run(conf)
    r = by_name(report)[USED]
    assert r.status is FileStatus.MISMATCH and r.action is Action.KEPT_IN_USE
    assert r.users == (f"instance {INSTANCE}",)
    assert node.path(USED).exists() and node.quarantined() == []
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and INSTANCE in errors[0].getMessage()
    assert "is corrupt" in errors[0].getMessage()
    assert [x.name for x in report.corrupt_in_use] == [USED]
    # recorded for the plan and the metrics
    db = state_of(conf)
    try:
        [corrupt] = istate.corrupt_in_use(db)
        assert corrupt.name == USED and corrupt.users == (f"instance {INSTANCE}",)
        assert corrupt.expected == hashlib.sha256(node.data[USED]).hexdigest()
    finally:
        db.close()

    # A reader that has a fresh scan can leave out rows whose file is gone.
    db = state_of(conf)
    try:
        assert istate.corrupt_in_use(db, present={FREE, OTHER}) == []
        assert [c.name for c in istate.corrupt_in_use(db, present={USED})] == [USED]
    finally:
        db.close()
    # Still reported (read again) at the next run, never silently "unchanged".
    assert by_name(run(conf))[USED].action is Action.KEPT_IN_USE
    # Once the instance is gone, the next verify quarantines it and the alert clears.
    shutil.rmtree(node.instances / INSTANCE)  # the instance is deleted
    r = by_name(run(conf))[USED]
    assert r.action is Action.QUARANTINED
    db = state_of(conf)
    try:
        assert istate.corrupt_in_use(db) == []
    finally:
        db.close()


def test_a_read_error_is_a_mismatch(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = node.settings()
    real = os.preadv

    def bad_sector(fd: int, buffers: list[memoryview], offset: int, *rest: int) -> int:
        if os.fstat(fd).st_size == SIZES[OTHER] and offset >= MiB:
            raise OSError(5, "Input/output error")
        return real(fd, buffers, offset, *rest)

    monkeypatch.setattr(checksum.os, "preadv", bad_sector)
    r = by_name(run(conf))[OTHER]
    assert r.status is FileStatus.MISMATCH
    assert r.detail == f"read error at byte {MiB}: Input/output error"
    assert r.action is Action.QUARANTINED


def test_a_new_download_under_the_same_name_is_a_new_record(node: Node) -> None:
    conf = node.settings()
    run(conf)
    fresh = os.urandom(SIZES[FREE])
    part = node.path(FREE + ".part")
    part.write_bytes(fresh)
    os.rename(part, node.path(FREE))  # what nova's fetch does: another inode
    r = by_name(run(conf))[FREE]
    assert r.status is FileStatus.RECORDED and "another inode" in r.detail
    assert r.digest == hashlib.sha256(fresh).hexdigest()


def test_a_file_changed_while_read_is_not_judged(node: Node) -> None:
    conf = node.settings()
    run(conf)
    with plan_pass(conf) as p:
        verifier = Verifier(conf, p, force=True)
        targets = verifier.select([USED])

        def touch_midway(name: str, done: int, size: int) -> None:
            if done == MiB:
                os.utime(node.path(name))

        report = verifier.run(targets, touch_midway)
    r = report.results[0]
    assert r.status is FileStatus.CHANGED and r.action is Action.NONE
    assert report.mismatches == []


def test_a_base_nova_holds_locked_is_left_for_later(node: Node) -> None:
    """A fetch or resize in progress holds nova's lock: the file may be half written."""
    conf = node.settings()
    lock = node.instances / "locks" / f"nova-{FREE}"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
         str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        report = by_name(run(conf))
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
    assert report[FREE].status is FileStatus.BUSY and "busy" in report[FREE].detail
    assert report[FREE].bytes_read == 0
    assert report[OTHER].status is FileStatus.RECORDED
    assert by_name(run(conf))[FREE].status is FileStatus.RECORDED  # next time


def test_without_a_state_database_nothing_is_recorded_or_moved(node: Node) -> None:
    conf = node.settings()
    run(conf)
    flip_byte(node.path(FREE), 0)
    with plan_pass(conf, use_state=False) as p:
        report = verify(conf, p, force=True)
    assert any("no state database" in n for n in report.notes)
    assert all(r.status is FileStatus.RECORDED for r in report.results)
    assert node.path(FREE).exists() and node.quarantined() == []


def test_should_stop_ends_the_run_within_a_read(node: Node) -> None:
    conf = node.settings()
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with plan_pass(conf) as p:
        report = verify_some(conf, p, limit=4, should_stop=stop)
    assert report.interrupted
    assert report.results[-1].status is FileStatus.INTERRUPTED
    db = state_of(conf)
    try:
        recorded = {n for n, _ in istate.load(db)}
    finally:
        db.close()
    assert report.results[-1].name not in recorded


def test_an_interrupted_quarantine_is_settled(node: Node) -> None:
    conf = node.settings()
    run(conf)
    qdir = node.cache / QUARANTINE_NAME
    qdir.mkdir()
    st = node.path(OTHER).stat()
    db = open_state(conf.state_path, write=True)
    try:
        moved = istate.begin_move(db, OTHER, str(node.path(OTHER)), str(qdir / OTHER),
                                  st.st_dev, st.st_ino, st.st_size, "test", 1.0)
        not_moved = istate.begin_move(db, SWAP, str(node.path(SWAP)), str(qdir / SWAP),
                                      1, 2, 3, "test", 1.0)
    finally:
        db.close()
    os.rename(node.path(OTHER), qdir / OTHER)  # the crash came after the rename
    run(conf)
    db = state_of(conf)
    try:
        outcome = {q.id: q.outcome for q in istate.quarantined(db)}
    finally:
        db.close()
    assert outcome == {moved: istate.Moved.QUARANTINED, not_moved: istate.Moved.SKIPPED}


# -- the service's share ---------------------------------------------------------------


def test_verify_some_reads_the_least_recently_verified_first(node: Node) -> None:
    conf = node.settings()
    order: list[list[str]] = []
    for _ in range(4):
        with plan_pass(conf) as p:
            report = verify_some(conf, p, limit=2)
        assert report.files_read == 2
        order.append(sorted(r.name for r in report.results))
    # never verified first (all four in two passes), then round and round
    assert set(order[0]) | set(order[1]) == set(SIZES)
    assert order[2] == order[0] and order[3] == order[1]


def test_verify_some_finds_bit_rot_that_cache_verify_skips(node: Node) -> None:
    """The service scrubs: it re-reads unchanged files, which is what finds bit rot."""
    conf = node.settings()
    run(conf)
    flip_byte(node.path(OTHER), 99)
    found = []
    for _ in range(2):
        with plan_pass(conf) as p:
            found += [r for r in verify_some(conf, p, limit=2).results
                      if r.status is FileStatus.MISMATCH]
    assert [r.name for r in found] == [OTHER]
    assert found[0].action is Action.QUARANTINED


def test_verify_some_skips_bases_removed_since_the_scan(node: Node) -> None:
    """The service verifies after its clean, with the same pass."""
    conf = node.settings()
    with plan_pass(conf) as p:
        node.path(FREE).unlink()
        report = verify_some(conf, p, limit=4)
    assert sorted(r.name for r in report.results) == sorted(set(SIZES) - {FREE})
    assert {r.status for r in report.results} == {FileStatus.RECORDED}


def test_verify_some_with_zero_reads_nothing(node: Node) -> None:
    conf = node.settings("verify_files_per_pass = 0\n")
    with plan_pass(conf) as p:
        assert verify_some(conf, p).results == []


def test_settings_reach_the_verifier(node: Node) -> None:
    conf = node.settings("verify_algorithm = sha512\nverify_rate_limit = 2.5\n")
    with plan_pass(conf) as p:
        verifier = Verifier(conf, p)
    assert verifier.algorithm == "sha512"
    assert verifier.limiter is not None and verifier.limiter.rate == 2.5 * MiB


# -- Glance: which digest to compare with ----------------------------------------------


def image(**kw: Any) -> GlanceImage:
    base = {"id": "img", "status": "active", "disk_format": "raw",
            "container_format": "bare", "size": 10, "checksum": "m" * 32,
            "hash_algo": "sha512", "hash_value": "S" * 128}
    base.update(kw)
    return GlanceImage(**base)


def test_glance_reference_rules() -> None:
    assert reference(image(), "raw") == Reference("img", "sha512", "s" * 128, 10)
    assert reference(image(disk_format="iso"), "raw") == Reference("img", "sha512",
                                                                   "s" * 128, 10)
    assert reference(image(disk_format="qcow2"), "qcow2") == Reference("img", "sha512",
                                                                       "s" * 128, 10)
    # no multihash (Glance before Rocky): its md5 checksum
    assert reference(image(hash_algo=None, hash_value=None), "raw") == Reference(
        "img", "md5", "m" * 32, 10)
    assert "nova converted it" in str(reference(image(disk_format="qcow2"), "raw"))
    assert "nova converted it" in str(reference(image(disk_format="vmdk"), "raw"))
    assert "container format ova" in str(reference(image(container_format="ova"), "raw"))
    assert "is queued in Glance" in str(reference(image(status="queued"), "raw"))
    assert "no checksum" in str(reference(image(hash_value=None, checksum=None), "raw"))


# -- Glance: against the real Keystone and a Glance stand-in -----------------------------


@dataclass
class FakeGlance(FakeNova):
    """`GET /v2/images/{id}` as Glance v2 answers it, tokens checked with Keystone."""

    images: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, image_id: str, data: bytes, disk_format: str = "raw") -> None:
        self.images[image_id] = {
            "id": image_id, "name": f"image-{image_id[-4:]}", "status": "active",
            "disk_format": disk_format, "container_format": "bare", "size": len(data),
            "virtual_size": len(data), "checksum": hashlib.md5(data).hexdigest(),
            "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest(),
            "visibility": "public", "protected": False, "os_hidden": False,
            "owner": "p-admin", "min_disk": 0, "min_ram": 0, "tags": [],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file",
            "schema": "/v2/schemas/image"}

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"].rstrip("/")
        self.requests.append(f"{environ['REQUEST_METHOD']} {path}")

        def reply(code: str, body: Any) -> list[bytes]:
            data = json.dumps(body).encode()
            start(code, [("Content-Type", "application/json"),
                         ("Content-Length", str(len(data)))])
            return [data]

        version = {"id": "v2.16", "status": "CURRENT",
                   "links": [{"rel": "self", "href": f"{self.base}/v2/"}]}
        if path in ("", "/versions"):
            return reply("300 Multiple Choices", {"versions": [version]})
        if self._whoami(environ.get("HTTP_X_AUTH_TOKEN", "")) is None:
            return reply("401 Unauthorized", {"error": "401 Unauthorized"})
        if path.startswith("/v2/images/"):
            found = self.images.get(path.rsplit("/", 1)[-1])
            if found is None:
                return reply("404 Not Found", {"error": "404 Not Found"})
            return reply("200 OK", found)
        return reply("404 Not Found", {"error": f"no route for {path}"})


@dataclass
class GlanceCloud:
    nova: FakeNova
    glance: FakeGlance
    clouds_yaml: Path


@pytest.fixture(scope="module")
def glance_cloud(keystone: Keystone,  # noqa: F811 - the fixture imported above
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceCloud]:
    """Region 'Integrity' of the Keystone catalog: a compute stand-in (the servers) and an
    image stand-in (Glance), each on its own loopback port."""
    import openstack

    token = keystone_token(keystone.url, "admin", ADMIN_PASSWORD, "admin")
    nova, glance = FakeNova(keystone.url, token), FakeGlance(keystone.url, token)
    servers = []
    for app in (nova, glance):
        httpd = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer,
                            handler_class=_Quiet)
        app.base = f"http://127.0.0.1:{httpd.server_address[1]}"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    conn = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_url=keystone.url,
        username="admin", password=ADMIN_PASSWORD, project_name="admin",
        user_domain_id="default", project_domain_id="default", region_name="RegionOne")
    ident = conn.identity
    ident.create_region(id="Integrity")
    for name, kind, url in (("nova-i", "compute", f"{nova.base}/v2.1"),
                            ("glance-i", "image", glance.base)):
        svc = ident.create_service(name=name, type=kind, enabled=True)
        ident.create_endpoint(service_id=svc.id, interface="public", url=url,
                              region_id="Integrity")
    conn.close()
    clouds = {"clouds": {
        "integrity": _region_cloud(keystone.url, "admin", ADMIN_PASSWORD, "admin",
                                   "Integrity"),
        "integrity-wrong": _region_cloud(keystone.url, "admin", "not-" + ADMIN_PASSWORD,
                                         "admin", "Integrity")}}
    clouds_yaml = tmp_path_factory.mktemp("openstack-integrity") / "clouds.yaml"
    clouds_yaml.write_text(json.dumps(clouds))
    try:
        yield GlanceCloud(nova, glance, clouds_yaml)
    finally:
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture
def cloud(glance_cloud: GlanceCloud, monkeypatch: pytest.MonkeyPatch) -> GlanceCloud:
    for name in list(os.environ):
        if name.startswith("OS_") and not name.startswith("OS_NOVAKEEPER__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(glance_cloud.clouds_yaml))
    glance_cloud.nova.reset()
    glance_cloud.glance.requests = []
    glance_cloud.glance.images = {}
    return glance_cloud


pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")
GLANCE = "nova_api_cloud = integrity\n"
"""The clouds.yaml entry whose catalog has the stand-ins."""


def test_glance_confirms_a_good_base_named_by_image_id(node: Node, cloud: GlanceCloud) -> None:
    cloud.glance.add(IMAGE_FREE, node.data[FREE])
    conf = node.settings(GLANCE)
    report = run(conf, [FREE], image_ids=[IMAGE_FREE])
    r = report.results[0]
    assert r.status is FileStatus.RECORDED and r.image_id == IMAGE_FREE
    assert r.glance == f"compared with image {IMAGE_FREE} (sha512): equal"
    assert f"GET /v2/images/{IMAGE_FREE}" in cloud.glance.requests
    db = state_of(conf)
    try:
        records = istate.load(db)
        assert records[(FREE, "sha512")].value == hashlib.sha512(node.data[FREE]).hexdigest()
        assert records[(FREE, "sha256")].source is istate.Source.GLANCE
        assert istate.image_ids(db) == {FREE: IMAGE_FREE}  # learned for next time
    finally:
        db.close()


def test_glance_catches_a_base_corrupt_before_its_first_read(node: Node,
                                                             cloud: GlanceCloud) -> None:
    """No record to compare with: only Glance can tell, and it does."""
    cloud.glance.add(IMAGE_FREE, node.data[FREE])
    flip_byte(node.path(FREE), 5)
    conf = node.settings(GLANCE)
    r = run(conf, image_ids=[IMAGE_FREE]).results
    bad = {x.name: x for x in r}[FREE]
    assert bad.status is FileStatus.MISMATCH and bad.reference == "glance"
    assert bad.detail == f"differs from Glance's sha512 of image {IMAGE_FREE}"
    assert bad.expected == hashlib.sha512(node.data[FREE]).hexdigest()
    assert bad.action is Action.QUARANTINED
    assert {x.name: x.status for x in r if x.name != FREE} == {
        USED: FileStatus.RECORDED, OTHER: FileStatus.RECORDED, SWAP: FileStatus.RECORDED}


def test_image_ids_come_from_the_servers_nova_places_here(node: Node, cloud: GlanceCloud
                                                          ) -> None:
    """With the nova-api source configured: the server on h1 names the image of the base
    its disk uses; Glance disagrees with the base; the base is in use (by the disk, and by
    the server the API shows), so it stays and is reported."""
    cloud.nova.servers = [server(INSTANCE, "h1", "ACTIVE", "active", None, IMAGE_USED)]
    cloud.glance.add(IMAGE_USED, node.data[USED])
    flip_byte(node.path(USED), 77)
    conf = node.settings("usage_sources = open-files, nova-api\nnova_api_cloud = integrity\n")
    report = run(conf)
    r = by_name(report)
    assert r[USED].status is FileStatus.MISMATCH and r[USED].reference == "glance"
    assert r[USED].action is Action.KEPT_IN_USE
    assert f"instance {INSTANCE}" in r[USED].users
    assert any(u.startswith(f"nova-api: instance {INSTANCE}") for u in r[USED].users)
    assert r[FREE].glance == "image id unknown: not compared with Glance"
    assert any(q.startswith("GET /v2.1/servers/detail") and "host=h1" in q
               for q in cloud.nova.requests)


def test_a_converted_image_is_not_compared(node: Node, cloud: GlanceCloud) -> None:
    cloud.glance.add(IMAGE_OTHER, b"qcow2 bytes nova converted to raw", disk_format="qcow2")
    r = run(node.settings(GLANCE), [OTHER], image_ids=[IMAGE_OTHER]).results[0]
    assert r.status is FileStatus.RECORDED
    assert r.glance is not None and "nova converted it" in r.glance


def test_glance_unreachable_leaves_the_records_to_judge(node: Node, cloud: GlanceCloud
                                                        ) -> None:
    cloud.glance.add(IMAGE_FREE, node.data[FREE])
    conf = node.settings("nova_api_cloud = integrity-wrong\n")
    report = run(conf, image_ids=[IMAGE_FREE])
    assert report.mismatches == []
    assert any(n.startswith("Glance: ") and "401" in n for n in report.notes)
    assert by_name(report)[FREE].status is FileStatus.RECORDED


def test_an_image_gone_from_glance_is_said_so(node: Node, cloud: GlanceCloud) -> None:
    r = run(node.settings(GLANCE), [FREE], image_ids=[IMAGE_FREE]).results[0]
    assert r.status is FileStatus.RECORDED
    assert r.glance == f"image {IMAGE_FREE} is not in Glance (deleted?): not compared"


def test_an_image_id_without_a_base_is_a_note(node: Node, cloud: GlanceCloud) -> None:
    report = run(node.settings(GLANCE), [FREE], image_ids=["no-such-image"])
    assert any("--image-id no-such-image: no base of it in the cache" in n
               for n in report.notes)


def test_glance_connection_is_lazy() -> None:
    """Building the lookup connects to nothing; openstacksdk is imported on first use."""
    calls: list[int] = []

    def connect() -> Any:
        calls.append(1)
        raise RuntimeError("no cloud")

    g = Glance(connect=connect)
    assert calls == []
    with pytest.raises(Exception, match="cannot connect: RuntimeError: no cloud"):
        g.image("x")
