"""Crash safety: SIGKILL during `clean` at many random points; after each kill the next run
completes, nothing in use is lost, and the history shows what happened.

The killed run is `novakeeper cache clean --yes` itself (cli.main), in a forked child that
counts interpreter events with sys.setprofile and sends itself SIGKILL at the N-th one, N
drawn at random: a deterministic point, reproducible from the seed, anywhere from the
scan to the last journal write. Most kills land inside the executor (from its first
call on: nova's lock, the re-check, the journal row, the unlink, the row's end), the rest
anywhere in the run. Each round adds fresh removable files to a node whose in-use bases
(plain, through a 2-deep chain, a disk in a `_resize` folder) stay put; the run after the
kill is the real command line (`python -m novakeeper cache clean --yes`).

NOVAKEEPER_CRASH_KILLS sets the number of kills (default 40), NOVAKEEPER_CRASH_SEED the
seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from _cli_tree import DAY, make_base, make_overlay, run_cli
from novakeeper import cli
from novakeeper.cache.executor import Executor, nova_lock_name
from novakeeper.cache.layout import image_hash
from novakeeper.errors import ExitCode
from novakeeper.state import journal
from novakeeper.state.db import open_state

KILLS = int(os.environ.get("NOVAKEEPER_CRASH_KILLS", "40"))
SEED = int(os.environ.get("NOVAKEEPER_CRASH_SEED", "0")) or random.randrange(1, 1 << 30)
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
FRESH_PER_ROUND = 8
EXECUTOR_RUN = Executor.run.__code__
JOURNAL_BEGIN = journal.Journal.begin_many.__code__
MODES = ("run", "executor", "executor", "executor", "after-begin", "after-unlink")
"""Where kills land: any event of the run; any event from Executor.run's first call on;
right after the k-th batch's journal rows are written (before their unlinks); right after
the k-th unlink (before its row is completed)."""


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.cache = self.instances / "_base"
        self.cache.mkdir(parents=True)
        (self.instances / "locks").mkdir()
        self.config = root / "nova.conf"
        self.config.write_text("[DEFAULT]\n")
        self.in_use: dict[str, int] = {}  # cache name -> inode
        self.disks: list[Path] = []
        self.fresh = 0

    def args(self, *more: str) -> list[str]:
        return ["--config-file", os.fspath(self.config), "--instances-path",
                os.fspath(self.instances), *more]

    def build_in_use(self) -> None:
        """Bases in use, old enough that only their use keeps them."""
        plain = make_base(os.fspath(self.cache / image_hash("used-plain")), age=40 * DAY)
        chained = make_base(os.fspath(self.cache / image_hash("used-chain")), age=40 * DAY)
        swap = make_base(os.fspath(self.cache / "swap_1024"), age=40 * DAY)
        # a qcow2 cache file backed by an original (force_raw_images = False): 2 deep
        mid = self.cache / (image_hash("used-chain") + "_10")
        make_overlay(os.fspath(mid), chained)
        os.utime(mid, (0, 0))
        # (young folders: each has its `disk`, so none looks like a spawn in progress)
        for n, disks in enumerate([
                [("disk", plain, "raw")], [("disk", os.fspath(mid), "qcow2")],
                [("disk", plain, "raw"), ("disk.swap", swap, "raw")],
                [("disk", plain, "raw")]]):
            folder = self.instances / f"{n:08x}-0000-4000-8000-{n:012x}"
            if n == 3:
                folder = folder.with_name(folder.name + "_resize")
            folder.mkdir()
            (folder / "console.log").touch()  # a finished spawn: no spawn hold
            for name, backing, fmt in disks:
                self.disks.append(Path(make_overlay(os.fspath(folder / name), backing, fmt)))
        for path in (plain, chained, swap, os.fspath(mid)):
            self.in_use[os.path.basename(path)] = os.stat(path).st_ino

    def add_removable(self) -> list[str]:
        """Fresh removable files: old originals, resized copies, a swap file, a stale
        partial download."""
        names = []
        for _ in range(FRESH_PER_ROUND):
            self.fresh += 1
            seed = f"gone-{self.fresh}"
            name = {0: image_hash(seed), 1: image_hash(seed) + "_20",
                    2: f"swap_{self.fresh}", 3: image_hash(seed) + ".part"}[self.fresh % 4]
            make_base(os.fspath(self.cache / name), size=1 << 16, age=40 * DAY)
            names.append(name)
        return names

    def check_in_use(self, when: str) -> None:
        for name, ino in self.in_use.items():
            path = self.cache / name
            assert path.exists(), f"{when}: in-use base {name} was removed"
            assert path.stat().st_ino == ino, f"{when}: in-use base {name} was replaced"
        for disk in self.disks:
            assert disk.exists(), f"{when}: disk {disk} was removed"


def killed_clean(args: list[str], kill_at: int, mode: str) -> tuple[bool, int]:
    """Run `cache clean` in a forked child that SIGKILLs itself at its kill_at-th event of
    `mode` (see MODES). Returns (killed, events counted); a child that finishes first
    exits with clean's own code."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.close(read)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            count = 0
            armed = mode == "run"

            def hook(frame, event, arg):  # type: ignore[no-untyped-def]
                nonlocal count, armed
                if mode == "after-begin":
                    if event != "return" or frame.f_code is not JOURNAL_BEGIN:
                        return
                elif mode == "after-unlink":
                    if event != "c_return" or arg is not os.unlink:
                        return
                elif not armed:
                    if event == "call" and frame.f_code is EXECUTOR_RUN:
                        armed = True
                    else:
                        return
                count += 1
                if count >= kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            sys.setprofile(hook)
            try:
                cli.main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                sys.setprofile(None)
            os.write(write, str(count).encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        counted = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True, kill_at
    assert os.WEXITSTATUS(status) == ExitCode.OK, f"unkilled clean exited {status}"
    return False, int(counted)


def history(node: Node) -> list[journal.JournalEntry]:
    db = open_state(os.environ["OS_NOVAKEEPER__STATE_PATH"], write=False)
    try:
        return journal.history(db)
    finally:
        db.close()


def test_sigkill_at_random_points_during_clean(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    node = Node(tmp_path)
    node.build_in_use()
    clean = node.args("cache", "clean", "--yes")
    # calibration: how many events a whole clean of one round's files makes
    events = {}
    for mode in dict.fromkeys(MODES):
        node.add_removable()
        killed, events[mode] = killed_clean(clean, 1 << 60, mode)
        assert not killed
    # one batch of 'before' rows, then one unlink per file
    assert (events["after-begin"], events["after-unlink"]) == (1, FRESH_PER_ROUND), events
    assert 0 < events["executor"] < events["run"], events
    node.check_in_use("after the calibration runs")

    outcomes: Counter[str] = Counter()
    kills = 0
    rounds = 0
    while kills < KILLS:
        rounds += 1
        assert rounds <= 3 * KILLS, f"only {kills} of {rounds} runs were killed"
        names = node.add_removable()
        mode = rng.choice(MODES)
        kill_at = rng.randint(1, events[mode])
        where = f"seed {SEED}, round {rounds}: killed at event {kill_at} of {mode}"
        killed, _ = killed_clean(clean, kill_at, mode)
        kills += killed
        node.check_in_use(f"{where}, right after the kill")
        # the next run completes, removes what the killed one left, loses nothing in use
        proc = run_cli(*clean)
        assert proc.returncode == ExitCode.OK, f"{where}: next run: {proc.stderr}"
        node.check_in_use(f"{where}, after the next run")
        for name in names:
            assert not (node.cache / name).exists(), f"{where}: {name} not removed"
        # the history: no row left 'started'; each file removed exactly once, by the
        # killed run, by the next one, or settled as removed-after-crash
        rows = history(node)
        assert not [r for r in rows if r.outcome is journal.Entry.STARTED], where
        for name in names:
            mine = [r.outcome for r in rows if r.name == name]
            removed = [o for o in mine if o in (journal.Entry.REMOVED,
                                                journal.Entry.RECOVERED_REMOVED)]
            assert len(removed) == 1, f"{where}: {name}: {mine}"
            # PURGED: the killed run had renamed it aside, the next one unlinked it
            assert set(mine) <= {journal.Entry.REMOVED, journal.Entry.RECOVERED_REMOVED,
                                 journal.Entry.RECOVERED_KEPT, journal.Entry.PURGED}, \
                f"{where}: {name}: {mine}"
        assert not {r.name for r in rows} & set(node.in_use), where
    for r in history(node):
        outcomes[str(r.outcome)] += 1

    # the command line tells the same story, crashes included
    proc = run_cli(*node.args("cache", "history", "--json"))
    assert proc.returncode == ExitCode.OK, proc.stderr
    entries = json.loads(proc.stdout)["entries"]
    assert Counter(e["outcome"] for e in entries) == outcomes
    # the kills did land between a journal row's start and end, both before and after
    # the unlink: the next run settled them
    assert outcomes["removed-after-crash"] > 0 and outcomes["kept-after-crash"] > 0, outcomes
    # qemu-img, the oracle: every disk's whole chain still opens
    for disk in node.disks:
        subprocess.run([QEMU_IMG, "info", "-U", "--backing-chain", os.fspath(disk)],
                       check=True, capture_output=True, timeout=60)
    print(f"seed {SEED}: {kills} kills in {rounds} rounds; history {dict(outcomes)}")


@pytest.mark.parametrize("mode", ["executor", "after-begin"])
def test_a_kill_holding_the_locks_blocks_nothing(tmp_path: Path, mode: str) -> None:
    """Killed holding the run lock (as the executor starts), or the run lock and nova's
    locks on a batch of bases (their journal rows just written): the kernel drops fcntl
    locks with the process, so the next run is neither BUSY nor kept waiting, and finishes
    the job."""
    node = Node(tmp_path)
    node.build_in_use()
    names = node.add_removable()
    killed, _ = killed_clean(node.args("cache", "clean", "--yes"), 1, mode)
    assert killed
    # a .part is removed under the lock of the base it becomes, as nova writes it
    locked = {nova_lock_name(n) for n in names}
    held = [n for n in os.listdir(node.instances / "locks") if n[len("nova-"):] in locked]
    # the lock files it died holding: every lock of its batch
    assert len(held) == (len(locked) if mode == "after-begin" else 0)
    proc = run_cli(*node.args("cache", "clean", "--yes"))
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert not any((node.cache / n).exists() for n in names)
    node.check_in_use("after the next run")
    settled = [r.outcome for r in history(node) if r.outcome is not journal.Entry.REMOVED]
    assert settled == ([journal.Entry.RECOVERED_KEPT] * len(names) if mode == "after-begin"
                       else [])
