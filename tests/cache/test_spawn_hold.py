"""The spawn hold, designed from nova 34's spawn sequence (`_create_image`): the instance
folder is made first; each disk's Image object writes its `disk.info` entry; `Image.cache`
looks for the base without a lock, touches it, then creates the disk under the lock;
`console.log` is made right after the last disk. Each rule is tested on a real tree with
its own clock; the liveness test shows that diskless folders never stop cleaning."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _tree import DAY, Node

from novakeeper.cache.inventory import ProblemCode, Scanner
from novakeeper.cache.layout import BaseKind
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import PolicyConfig, decide
from novakeeper.passes import narrow_building

OLD = 30 * DAY
HOLD = 120.0
ZERO_AGES = PolicyConfig(remove_unused_original_minimum_age_seconds=0,
                         remove_unused_resized_minimum_age_seconds=0,
                         spawn_hold_seconds=int(HOLD))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def disk_info(folder: Path, *names: str) -> None:
    """What nova's Image objects write before `Image.cache` runs: one JSON line."""
    (folder / "disk.info").write_text(
        json.dumps({os.fspath(folder / n): "qcow2" for n in names}) + "\n")


def verdicts_at(node: Node, now: float, config: PolicyConfig = ZERO_AGES,
                scanner: Scanner | None = None) -> tuple[dict[str, Verdict], tuple]:
    node.settle()
    if scanner is None:
        scanner = Scanner(os.fspath(node.instances), "_base", spawn_window=HOLD)
        inventory = scanner.scan(now=now)
    else:
        inventory = scanner.refresh_at(now)
    plan = decide(inventory, config, now)
    return {d.name: d.verdict for d in plan.decisions}, plan.problems


def test_a_folder_still_being_built_holds_every_base_kind(node: Node) -> None:
    orig = node.original("image", age=OLD)
    swap = node.base("swap_512", age=OLD)
    folder = node.folder()  # made by _create_image; disks not created yet
    disk_info(folder, "disk")
    now = time.time()
    verdicts, problems = verdicts_at(node, now)
    assert verdicts == {orig.name: Verdict.HELD, swap.name: Verdict.HELD}
    [p] = problems
    assert p.code is ProblemCode.SPAWNING and p.transient
    assert "no console.log yet" in p.detail and f"held for {HOLD:g} s" in p.detail


def test_an_announced_disk_not_created_yet_holds_its_kind_only(node: Node) -> None:
    """A rescue (or a disk deleted after a failed spawn): console.log is there, disk.info
    announces `disk.rescue`, the file does not exist yet: root kinds are held, not swap."""
    orig = node.original("rescue-image", age=OLD)
    swap = node.base("swap_512", age=OLD)
    folder = node.folder()
    (folder / "console.log").write_text("")
    disk_info(folder, "disk.rescue")
    verdicts, problems = verdicts_at(node, time.time())
    assert verdicts == {orig.name: Verdict.HELD, swap.name: Verdict.REMOVE}
    [p] = problems
    assert p.holds_kinds == {BaseKind.ORIGINAL, BaseKind.RESIZED}
    assert "disk.info announces disk.rescue not created yet" in p.detail


def test_a_boot_from_volume_folder_holds_nothing(node: Node) -> None:
    """console.log made, no `disk` announced: nothing will ever come from _base."""
    orig = node.original("unused", age=OLD)
    folder = node.folder()
    (folder / "console.log").write_text("")
    disk_info(folder, "disk.config")
    (folder / "disk.config").write_bytes(b"iso")
    verdicts, problems = verdicts_at(node, time.time())
    assert verdicts == {orig.name: Verdict.REMOVE}
    assert problems == ()


def test_a_finished_spawn_holds_by_its_chain_not_by_its_folder(node: Node) -> None:
    used = node.original("used", age=OLD)
    other = node.original("other", age=OLD)
    folder = node.folder()
    node.disk(folder, used)
    disk_info(folder, "disk")
    (folder / "console.log").write_text("")
    verdicts, problems = verdicts_at(node, time.time())
    assert verdicts == {used.name: Verdict.IN_USE, other.name: Verdict.REMOVE}
    assert problems == ()


def test_the_hold_ends_after_spawn_hold_seconds(node: Node) -> None:
    """A failed spawn's folder holds for the hold only; the folder's scan is reused while
    the clock runs on (the clock decides at assembly time)."""
    orig = node.original("image", age=OLD)
    folder = node.folder()
    disk_info(folder, "disk")
    now = time.time()
    scanner = Scanner(os.fspath(node.instances), "_base", spawn_window=HOLD)
    node.settle()
    scanner.scan(now=now)
    verdicts, _ = verdicts_at(node, now + HOLD - 1, scanner=scanner)
    assert verdicts[orig.name] is Verdict.HELD
    verdicts, problems = verdicts_at(node, now + HOLD, scanner=scanner)
    assert verdicts[orig.name] is Verdict.REMOVE and problems == ()


def test_a_base_touched_by_a_spawn_waits_out_the_hold(node: Node) -> None:
    """Past the folder's hold (a long fetch), nova's touch of the base keeps it."""
    now = time.time()
    touched = node.original("touched", age=0)
    os.utime(touched, (now - 5, now - 5))
    node.ages.pop(touched)  # keep the real mtime
    verdicts, _ = verdicts_at(node, now)
    assert verdicts[touched.name] is Verdict.TOO_YOUNG


def test_the_nova_api_narrows_a_building_instance_to_what_it_cannot_name(
        node: Node) -> None:
    """With the nova-api source, a building instance's image is named by the API (its
    sighting); the folder keeps only swap and ephemeral templates, not every image."""
    orig = node.original("someone-elses", age=OLD)
    swap = node.base("swap_512", age=OLD)
    folder = node.folder()
    disk_info(folder, "disk")
    now = time.time()
    node.settle()
    inventory = Scanner(os.fspath(node.instances), "_base", spawn_window=HOLD).scan(now=now)
    [p] = inventory.problems
    narrowed = narrow_building(inventory, frozenset({p.instance or ""}))
    plan = decide(narrowed, ZERO_AGES, now)
    assert {d.name: d.verdict for d in plan.decisions} == {orig.name: Verdict.REMOVE,
                                                            swap.name: Verdict.HELD}
    [q] = narrowed.problems
    assert q.holds_kinds == {BaseKind.SWAP, BaseKind.EPHEMERAL}
    assert "the Nova API names its image" in q.detail
    # an instance the API does not list as building keeps the blanket hold
    assert narrow_building(inventory, frozenset({"another"})).problems == inventory.problems


def test_liveness_diskless_folders_every_few_minutes_never_stop_cleaning(node: Node) -> None:
    """Two hours of a busy node, replayed on a clock: every 3 minutes a folder appears
    that will never get a disk from _base (a boot-from-volume instance, or a failed spawn
    whose disk.info announces a `disk` that never came), and every 3 minutes an image falls
    out of use. Passes run every minute (clean, with the real executor). Every unused base
    is removed, and none waits longer than the hold plus one pass interval: the longest
    delay a spawn can cause is spawn_hold_seconds. (The old rule, a 1 h hold for any
    diskless young folder, removed nothing on such a node.)"""
    from novakeeper.cache.executor import Executor

    start = time.time()
    scanner = Scanner(os.fspath(node.instances), "_base", spawn_window=HOLD)
    interval, every = 60.0, 180.0
    became_removable: dict[str, float] = {}
    removed_at: dict[str, float] = {}
    for step in range(int(2 * 3600 / interval)):
        now = start + step * interval
        if step % int(every / interval) == 0:
            n = step // int(every / interval)
            folder = node.folder()
            if n % 2:
                (folder / "console.log").write_text("")  # boot from volume, finished
                disk_info(folder, "disk.config")
            else:
                disk_info(folder, "disk")  # a failed spawn, left behind
            os.utime(folder, (now, now))
            base = node.original(f"fell-out-of-use-{n}", age=OLD)
            became_removable[base.name] = now
        node.settle()
        inventory = scanner.refresh_at(now) if step else scanner.scan(now=now)
        plan = decide(inventory, ZERO_AGES, now)
        report = Executor(scanner, inventory, plan, touch_in_use=False,
                          config=ZERO_AGES).run()
        for outcome in report.removed:
            removed_at[outcome.name] = now
    assert set(removed_at) == set(became_removable)
    delays = {n: removed_at[n] - became_removable[n] for n in removed_at}
    assert max(delays.values()) <= HOLD + interval
    assert max(delays.values()) >= HOLD  # the hold did hold: each base waited it out
