"""nova's per-base lock, the fresh-sibling rule and the run lock, with
real locks held by real processes (POSIX locks never block their own process)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _tree import DAY, NOW, Node, set_age, sha1

from novakeeper.cache.executor import Action, Executor
from novakeeper.cache.locks import (
    RUN_LOCK_NAME,
    NovaLocks,
    nova_lock_dir,
    orphaned_locks,
    run_lock,
)
from novakeeper.errors import ExitCode, NovakeeperError

OLD = 30 * DAY

HOLD_NOVA_LOCK = """
import sys
from oslo_concurrency import lockutils
lock = lockutils.external_lock(sys.argv[1], lock_file_prefix="nova-", lock_path=sys.argv[2])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
"""


@contextmanager
def nova_holds(lock_dir: str, name: str) -> Iterator[None]:
    """Another process holds nova's lock on `name`, exactly as nova takes it."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_NOVA_LOCK, name, lock_dir],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def executor(node: Node, plan, wait: float = 0.0) -> Executor:
    assert node.scanner is not None and node.inventory is not None
    locks = NovaLocks(nova_lock_dir(os.fspath(node.instances)), wait)
    return Executor(node.scanner, node.inventory, plan, False, None, locks)


def test_the_lock_file_is_novas(node: Node) -> None:
    locks = NovaLocks(nova_lock_dir(os.fspath(node.instances)))
    assert locks.path(sha1("a")) == os.path.join(node.instances, "locks", "nova-" + sha1("a"))


def test_a_base_nova_holds_is_kept_busy(node: Node) -> None:
    busy = node.original("busy", age=OLD)
    free = node.original("free", age=OLD)
    plan = node.plan()
    assert {d.name for d in plan.removals} == {busy.name, free.name}
    lock_dir = nova_lock_dir(os.fspath(node.instances))
    with nova_holds(lock_dir, busy.name):
        report = executor(node, plan, wait=0.05).run()
    outcome = {o.name: o for o in report.outcomes}
    assert outcome[busy.name].action is Action.SKIPPED
    assert outcome[busy.name].reason.startswith("busy: nova holds its lock")
    assert busy.exists()
    assert outcome[free.name].action is Action.REMOVED and not free.exists()
    # the lock file of the removed base went with it; the busy one's stays
    assert os.listdir(lock_dir) == ["nova-" + busy.name]


def test_a_lock_released_within_the_wait_is_taken(node: Node) -> None:
    base = node.original("b", age=OLD)
    plan = node.plan()
    lock_dir = nova_lock_dir(os.fspath(node.instances))
    child = subprocess.Popen([sys.executable, "-c", HOLD_NOVA_LOCK, base.name, lock_dir],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    assert child.stdin is not None
    child.stdin.close()  # nova finishes: the lock goes while we wait for it
    report = executor(node, plan, wait=30).run()
    child.wait(timeout=30)
    assert [o.action for o in report.outcomes] == [Action.REMOVED]


def test_a_base_whose_part_is_fresh_is_kept(node: Node) -> None:
    base = node.original("b", age=OLD)
    plan = node.plan()
    part = node.cache / (base.name + ".part")
    part.write_bytes(b"downloading again")  # mtime now: fresh on the wall clock
    report = executor(node, plan).run()
    [o] = [o for o in report.outcomes if o.name == base.name]
    assert o.action is Action.SKIPPED and ".part was touched" in o.reason
    assert base.exists()


def test_a_stale_part_does_not_keep_its_base(node: Node) -> None:
    base = node.original("b", age=OLD)
    part = node.cache / (base.name + ".part")
    part.write_bytes(b"dead")
    set_age(part, 2 * 3600)  # stale on the policy's clock, and (years) on the wall clock
    plan = node.plan()
    report = executor(node, plan).run()
    assert {o.name for o in report.removed} == {base.name, part.name}


def test_run_lock_lets_one_clean_in(node: Node) -> None:
    ipath, cpath = os.fspath(node.instances), os.fspath(node.cache)
    script = ("import sys\nfrom novakeeper.cache.locks import run_lock\n"
              "with run_lock(sys.argv[1], sys.argv[2]):\n"
              "    print('in', flush=True)\n    sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", script, ipath, cpath],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "in"
        with pytest.raises(NovakeeperError) as info, run_lock(ipath, cpath):
            pass
        assert info.value.code is ExitCode.BUSY
        assert f"pid {child.pid} on " in info.value.message
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    with run_lock(ipath, cpath):  # released with its holder
        pass
    # the lock file is not a cache file
    assert RUN_LOCK_NAME not in {b.name for b in node.scan().bases}


def test_run_lock_never_follows_a_link(node: Node, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    (node.cache / RUN_LOCK_NAME).symlink_to(target)
    with pytest.raises(NovakeeperError) as info, run_lock(os.fspath(node.instances),
                                                          os.fspath(node.cache)):
        pass
    assert info.value.code is ExitCode.PATH
    assert target.read_text() == "precious"


def test_orphaned_lock_files_are_reported(node: Node) -> None:
    lock_dir = Path(nova_lock_dir(os.fspath(node.instances)))
    lock_dir.mkdir()
    kept = node.original("kept", age=0)
    for name in (kept.name, sha1("gone"), "storage-registry-lock", "some-instance-lock"):
        (lock_dir / f"nova-{name}").write_text("")
        os.utime(lock_dir / f"nova-{name}", (NOW - 3 * DAY, NOW - 3 * DAY))
    orphans = orphaned_locks(os.fspath(lock_dir), {kept.name}, NOW, DAY)
    assert [o.name for o in orphans] == [sha1("gone")]
    assert orphaned_locks(os.fspath(lock_dir), {kept.name}, NOW, 4 * DAY) == []


def test_a_partial_download_is_removed_under_its_bases_lock(node: Node) -> None:
    """nova writes <name>.part under the lock of <name>: a stalled download that nova is
    still holding is busy, not removed."""
    part = node.cache / (sha1("slow") + ".part")
    part.write_bytes(b"half an image")
    set_age(part, 2 * 3600)
    plan = node.plan()
    assert [d.name for d in plan.removals] == [part.name]
    lock_dir = nova_lock_dir(os.fspath(node.instances))
    with nova_holds(lock_dir, sha1("slow")):
        report = executor(node, plan, wait=0.05).run()
    assert [o.action for o in report.outcomes] == [Action.SKIPPED]
    assert report.outcomes[0].reason.startswith("busy: nova holds its lock")
    assert part.exists()
    report = executor(node, node.plan(), wait=0.05).run()  # nova let go: stale, removed
    assert [o.action for o in report.outcomes] == [Action.REMOVED] and not part.exists()


def test_an_instance_folder_deleted_during_the_scan_is_no_problem(node: Node) -> None:
    """nova deletes an instance while we scan: its folder vanishes between the listing and
    the read. That is not an unreadable folder (which would hold everything)."""
    from novakeeper.cache.inventory import CachedProber, FolderKind, scan_folder

    gone = node.instances / "00000000-0000-4000-8000-000000000000"
    result = scan_folder(os.fspath(gone), FolderKind.INSTANCE, gone.name, CachedProber(), 0)
    assert result.problems == [] and result.disks == []
