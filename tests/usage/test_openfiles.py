"""The open-files source against the real /proc: real processes (sleep, qemu-io) holding
real cache files open, found by inode whatever path they opened."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))  # the Node builder
from _tree import MiB, Node

from conftest import make_qcow2
from novakeeper.cache.inventory import Inventory
from novakeeper.usage.base import FileId, Sighting, SourceResult
from novakeeper.usage.openfiles import OpenFiles, OpenFilesResult


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def file_id(path: str | os.PathLike[str]) -> FileId:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def whos(result: SourceResult) -> dict[FileId, list[str]]:
    return {key: sorted(s.who for s in seen) for key, seen in result.by_file.items()}


def collect(inventory: Inventory, proc_root: str = "/proc") -> OpenFilesResult:
    result = OpenFiles(proc_root).collect(inventory)
    assert result.source == "open-files"
    return result


class Holder:
    """`sleep infinity` holding the given files open as inherited descriptors."""

    def __init__(self, *paths: str | os.PathLike[str]) -> None:
        files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed below, after the fork
        try:
            self.proc = subprocess.Popen(
                ["sleep", "infinity"], stdin=subprocess.DEVNULL,
                pass_fds=[f.fileno() for f in files])
        finally:
            for f in files:
                f.close()
        self.pid = self.proc.pid

    @property
    def who(self) -> str:
        return f"pid {self.pid} (sleep)"  # Popen returns once exec has succeeded

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


def test_a_process_holding_a_base_open_protects_it_until_it_exits(node, holders):
    held = node.original("held", size=MiB)
    node.original("free", size=MiB)
    inventory = node.scan()
    holder = Holder(held)
    holders.append(holder)

    result = collect(inventory)

    assert result.error is None
    assert result.by_file == {file_id(held): (Sighting("open-files", holder.who),)}
    assert result.seen > 1  # every process on the host, not only ours

    holder.stop()
    assert collect(inventory).by_file == {}


def test_several_holders_and_several_bases(node, holders):
    a = node.original("a", size=MiB)
    b = node.original("b", size=MiB)
    node.original("c", size=MiB)
    inventory = node.scan()
    one = Holder(a, b)
    two = Holder(a)
    holders += [one, two]

    assert whos(collect(inventory)) == {
        file_id(a): sorted([one.who, two.who]),
        file_id(b): [one.who],
    }


def test_opened_through_a_symlink_or_a_hard_link_still_matches_by_inode(node, tmp_path, holders):
    via_symlink = node.original("via-symlink", size=MiB)
    via_hardlink = node.original("via-hardlink", size=MiB)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sym").symlink_to(via_symlink)
    os.link(via_hardlink, elsewhere / "hard")
    # a copy elsewhere is another file: opening it protects nothing
    copy = elsewhere / "copy"
    copy.write_bytes(via_symlink.read_bytes())
    inventory = node.scan()
    holder = Holder(elsewhere / "sym", elsewhere / "hard", copy)
    holders.append(holder)

    assert whos(collect(inventory)) == {
        file_id(via_symlink): [holder.who],
        file_id(via_hardlink): [holder.who],
    }


def test_qemu_holds_the_whole_backing_chain_open(node, tmp_path):
    """Why /proc/<pid>/fd is enough: qemu's block layer (here qemu-io, which opens images
    exactly as qemu does) keeps a descriptor on every file of the chain."""
    base = node.original("chained", size=MiB)
    resized = node.qcow2_base(base.name + "_2147483648", str(base))  # a qcow2 cache file
    disk = make_qcow2(tmp_path / "rescue" / "disk.rescue", resized, backing_fmt="qcow2",
                      size="2G")
    unrelated = node.original("unrelated", size=MiB)
    inventory = node.scan()
    qemu = subprocess.Popen(["qemu-io", "-r", "-f", "qcow2", str(disk)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert qemu.stdin is not None and qemu.stdout is not None
        qemu.stdin.write("info\n")
        qemu.stdin.flush()
        assert "qcow2" in qemu.stdout.readline()  # answered: the chain is open
        result = collect(inventory)
    finally:
        qemu.kill()
        qemu.wait()

    who = f"pid {qemu.pid} (qemu-io)"
    assert whos(result) == {file_id(base): [who], file_id(resized): [who]}
    assert file_id(unrelated) not in result.by_file


def test_processes_coming_and_going_during_the_walk_never_break_it(node, tmp_path, holders):
    """Hundreds of short-lived processes, some of them opening the base, start and exit
    while the source walks /proc again and again: no exception, no error, and the
    long-lived holder is found every time."""
    base = node.original("busy", size=MiB)
    inventory = node.scan()
    holder = Holder(base)
    holders.append(holder)
    churn = subprocess.Popen(
        ["sh", "-c", 'i=0; while [ $i -lt 200 ]; do cat "$1" >/dev/null; /bin/true; '
                     "i=$((i+1)); done", "churn", str(base)])
    try:
        rounds = 0
        while churn.poll() is None and rounds < 2000:
            result = collect(inventory)
            rounds += 1
            assert result.error is None
            assert set(result.by_file) <= {file_id(base)}
            assert holder.who in whos(result)[file_id(base)]
    finally:
        churn.kill()
        churn.wait()
    assert rounds > 0


def test_a_process_that_vanished_or_denies_access_is_counted_not_fatal(node, tmp_path):
    """A fake /proc (the one way to make the race happen every time): a process whose fd
    folder is gone, one whose descriptor closed since the listing, two holding the base,
    one with a descriptor that cannot be followed (counted as denied: it may be anything)."""
    base = node.original("in-use", size=MiB)
    inventory = node.scan()
    proc = tmp_path / "proc"
    (proc / "100").mkdir(parents=True)  # exited: its fd folder is gone
    (proc / "101" / "fd").mkdir(parents=True)
    (proc / "101" / "fd" / "3").symlink_to(tmp_path / "closed-since")
    (proc / "102" / "fd").mkdir(parents=True)
    (proc / "102" / "fd" / "7").symlink_to(base)
    (proc / "102" / "comm").write_text("qemu-kvm\n")
    (proc / "103" / "fd").mkdir(parents=True)
    (proc / "103" / "fd" / "1").symlink_to(base)  # no comm: exited before we asked
    (proc / "104" / "fd").mkdir(parents=True)  # a descriptor that cannot be followed
    (proc / "104" / "fd" / "5").symlink_to(proc / "104" / "fd" / "5")
    (proc / "self").mkdir()  # not a process

    result = collect(inventory, str(proc))

    assert result.error is None
    assert result.vanished == 1
    assert result.denied == 1
    assert result.seen == 3
    assert whos(result) == {file_id(base): ["pid 102 (qemu-kvm)", "pid 103 (?)"]}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_processes_we_may_not_inspect_are_counted_as_denied(node, holders):
    """Not root: other users' descriptors cannot be read. The holder is then not seen, and
    the result says so in `denied` rather than pretending nobody uses the base."""
    base = node.original("hidden", size=MiB)
    inventory = node.scan()
    holder = Holder(base)  # root's process
    holders.append(holder)
    os.seteuid(65534)
    try:
        result = collect(inventory)
    finally:
        os.seteuid(0)

    assert result.error is None
    assert result.by_file == {}
    assert result.denied >= 1
    assert collect(inventory).by_file == {file_id(base): (Sighting("open-files", holder.who),)}


def test_an_unreadable_proc_is_an_error(node, tmp_path):
    inventory = node.scan()

    missing = collect(inventory, str(tmp_path / "no-proc-here"))
    assert missing.error is not None and "no-proc-here" in missing.error
    assert missing.by_file == {}

    (tmp_path / "empty").mkdir()
    empty = collect(inventory, str(tmp_path / "empty"))
    assert empty.error is not None and "not a proc file system" in empty.error


def test_a_base_opened_after_the_plan_is_kept_by_clean(tmp_path, holders):
    """Open files are asked again under nova's locks, before each batch's removals: a
    process that opens an unused base after the plan (a `qemu-img convert` of it, say)
    keeps it, and the executor says so in the plan's words."""
    from novakeeper.cache.executor import Action
    from novakeeper.cache.policy import PolicyConfig
    from novakeeper.passes import executor_for, plan_pass
    from novakeeper.settings import Settings

    node = Node(tmp_path)
    late = node.original("opened-late", age=30 * 86400, size=MiB)
    free = node.original("free", age=30 * 86400, size=MiB)
    node.settle()
    settings = Settings(
        instances_path=os.fspath(node.instances), subdirectory_name="_base",
        manager_interval=0, host="h", policy=PolicyConfig(), touch_in_use=False,
        config_files=(), state_path=os.fspath(tmp_path / "state.db"),
        usage_sources=("open-files",))
    with plan_pass(settings, write_state=True) as result:
        assert {d.name for d in result.plan.removals} == {late.name, free.name}
        holder = Holder(late)
        holders.append(holder)
        report = executor_for(result, settings).run()
    outcomes = {o.name: o for o in report.outcomes}
    assert outcomes[free.name].action is Action.REMOVED
    assert outcomes[late.name].action is Action.SKIPPED
    assert outcomes[late.name].reason == f"now in use: open-files: {holder.who}"
    assert late.exists()
