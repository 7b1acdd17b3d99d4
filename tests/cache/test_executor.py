"""The executor, the only code that deletes: exactly the plan's removals, re-checked one by
one against the node as it is now, never anything outside the cache folder."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace

import pytest
from _tree import (
    DAY,
    HOUR,
    NOW,
    MiB,
    Node,
    allocated,
    by_name,
    make_qcow2,
    set_age,
    sha1,
    snapshot,
    truncate,
)

from novakeeper.cache.executor import Action, Executor
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import PolicyConfig
from novakeeper.errors import ExitCode, NovakeeperError

OLD = 30 * DAY


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def every_verdict(node: Node) -> dict[str, str]:
    """A node with files of every verdict; returns name -> expected verdict."""
    used = node.original("used", age=OLD)
    node.disk(node.folder(), used)
    held_by = node.folder()
    truncate(node.disk(held_by, node.cache / "swap_1", name="disk.swap", unsafe=True))
    unknown_dir = node.cache / sha1("dir")
    unknown_dir.mkdir()
    node.age(unknown_dir, OLD)
    link = node.cache / sha1("link")
    link.symlink_to(used.name)
    node.age(link, OLD)
    expected = {
        used.name: "in-use",
        node.original("old", age=OLD, data=b"o" * MiB).name: "remove",
        node.base(f"{sha1('old')}_20", age=2 * HOUR, data=b"r" * MiB).name: "remove",
        node.base("swap_512", age=OLD, data=b"s" * MiB).name: "held",
        node.base("ephemeral_1_0706d66", age=OLD, data=b"e" * MiB).name: "remove",
        node.original("young", age=HOUR).name: "too-young",
        node.base(f"{sha1('p')}.part", age=2 * HOUR, data=b"p").name: "stale-partial",
        node.base(f"{sha1('c')}.converted", age=2 * HOUR).name: "stale-partial",
        node.base(f"{sha1('i')}.info", age=2 * HOUR).name: "stale-partial",
        node.base(f"{sha1('d')}.part", age=60).name: "downloading",
        node.base("stray.img", age=OLD).name: "unknown",
        unknown_dir.name: "unknown",
        link.name: "unknown",
    }
    return expected


def test_clean_removes_exactly_the_plans_removals(node, tmp_path):
    expected = every_verdict(node)
    plan = node.plan()
    assert {d.name: str(d.verdict) for d in plan.decisions} == expected
    before = snapshot(tmp_path)

    report = node.execute(plan)

    after = snapshot(tmp_path)
    planned = {os.path.relpath(d.path, tmp_path) for d in plan.removals}
    assert len(planned) == 6
    assert before - after == planned
    # nova's lock folder, made by taking nova's locks; the lock files went with the bases
    assert after - before == {"instances/locks"}
    assert sorted(o.name for o in report.removed) == sorted(d.name for d in plan.removals)
    assert report.skipped == report.failed == []
    assert all(o.action is Action.REMOVED for o in report.outcomes)


def test_dry_plan_and_clean_agree_and_a_second_pass_removes_nothing(node):
    every_verdict(node)
    plan = node.plan()
    report = node.execute(plan)
    assert {o.name for o in report.removed} == {d.name for d in plan.removals}
    again = node.plan()
    assert again.removals == ()
    assert node.execute(again).outcomes == []


def test_removal_is_logged_in_novas_words(node, caplog):
    old = node.original("old", age=OLD)
    plan = node.plan()
    with caplog.at_level(logging.INFO, logger="novakeeper.cache"):
        node.execute(plan)
    assert f"Removing base file: {old}" in caplog.messages


# -- re-checks --------------------------------------------------------------------------


def test_skips_a_base_that_came_into_use_after_the_plan(node):
    a = node.original("a", age=OLD)
    b = node.original("b", age=OLD)
    c = node.original("c", age=OLD)
    existing = node.folder()
    node.disk(existing, node.original("used", age=OLD))
    set_age(existing, OLD)  # an old instance folder: its mtime is days old
    plan = node.plan()
    assert {d.name for d in plan.removals} == {a.name, b.name, c.name}

    # between plan and clean: nova spawns an instance on a, another disk appears on b
    node.disk(node.folder(), a)
    node.disk(existing, b, name="disk.rescue")
    report = node.execute(plan)

    outcomes = {o.name: o for o in report.outcomes}
    for base in (a, b):
        assert outcomes[base.name].action is Action.SKIPPED
        assert "in use" in outcomes[base.name].reason
        assert base.exists()
    assert outcomes[c.name].action is Action.REMOVED
    assert not c.exists()


def test_skips_a_base_whose_disk_was_rebased_onto_it_in_place(node):
    """`qemu-img rebase -u` rewrites the header in place: the folder's mtime does not
    change, yet the disk now uses another base."""
    first = node.original("first", age=OLD)
    target = node.original("target", age=OLD)
    f = node.folder()
    disk = node.disk(f, first)
    set_age(disk, OLD)  # an old instance, idle since
    set_age(f, OLD)
    plan = node.plan()
    assert [d.name for d in plan.removals] == [target.name]

    done = os.system(f"qemu-img rebase -q -u -f qcow2 -b {target} -F raw {disk}")
    assert done == 0
    assert os.stat(f).st_mtime == NOW - OLD  # the folder does not show the change
    set_age(disk, OLD)  # nor, once reset, does the disk's mtime
    report = node.execute(plan)

    (outcome,) = report.outcomes
    assert outcome.action is Action.SKIPPED
    assert "in use" in outcome.reason
    assert target.exists()


def test_skips_a_base_held_by_a_problem_met_after_the_plan(node):
    swap = node.base("swap_512", age=OLD)
    orig = node.original("o", age=OLD)
    plan = node.plan()
    assert {d.name for d in plan.removals} == {swap.name, orig.name}

    truncate(node.disk(node.folder(), swap, name="disk.swap"))
    report = node.execute(plan)

    outcomes = {o.name: o for o in report.outcomes}
    assert outcomes[swap.name].action is Action.SKIPPED
    assert outcomes[swap.name].reason.startswith("now held: disk-corrupt")
    assert swap.exists()
    assert outcomes[orig.name].action is Action.REMOVED


def test_skips_a_file_replaced_by_another_inode(node):
    old = node.original("old", age=OLD)
    plan = node.plan()
    fresh = node.cache / "fresh"
    fresh.write_bytes(b"new content")
    set_age(fresh, OLD)  # same mtime: only the inode tells them apart
    os.replace(fresh, old)
    new_ino = os.stat(old).st_ino
    assert new_ino != by_name(plan)[old.name].ino

    (outcome,) = node.execute(plan).outcomes

    assert outcome.action is Action.SKIPPED
    assert outcome.reason == "replaced since the plan"
    assert os.stat(old).st_ino == new_ino


def test_skips_a_file_whose_mtime_changed(node):
    old = node.original("old", age=OLD)
    plan = node.plan()
    set_age(old, OLD - 1)  # nova on another host marked it in use

    (outcome,) = node.execute(plan).outcomes

    assert outcome.action is Action.SKIPPED
    assert outcome.reason.startswith("modified since the plan")
    assert old.exists()


def test_skips_a_file_replaced_by_a_directory(node):
    old = node.original("old", age=OLD)
    plan = node.plan()
    old.unlink()
    old.mkdir()
    (old / "keep").write_bytes(b"k")
    set_age(old, OLD)  # even with the same mtime (and maybe the same inode number)

    (outcome,) = node.execute(plan).outcomes

    assert outcome.action is Action.SKIPPED
    assert old.is_dir()
    assert (old / "keep").exists()


def test_skips_a_file_already_gone(node):
    old = node.original("old", age=OLD)
    plan = node.plan()
    old.unlink()
    (outcome,) = node.execute(plan).outcomes
    assert (outcome.action, outcome.reason) == (Action.SKIPPED, "already gone")


# -- marking in-use bases -----------------------------------------------------------


def test_touch_in_use_marks_in_use_bases_only(node):
    expected = every_verdict(node)
    plan = node.plan()
    mtimes = {n: os.lstat(node.cache / n).st_mtime for n in expected}
    start = time.time()

    report = node.execute(plan)

    assert report.touched == 1
    for name, verdict in expected.items():
        if verdict in ("remove", "stale-partial"):
            assert not os.path.lexists(node.cache / name)
            continue
        mtime = os.lstat(node.cache / name).st_mtime
        if verdict == "in-use":
            assert mtime >= start - 1, name
        else:
            assert mtime == mtimes[name], name


def test_touch_in_use_off_touches_nothing(node):
    used = node.original("used", age=OLD)
    node.disk(node.folder(), used)
    plan = node.plan()
    report = node.execute(plan, touch_in_use=False)
    assert report.touched == 0
    assert os.stat(used).st_mtime == NOW - OLD


def test_kept_by_config_removes_nothing_but_still_marks(node, tmp_path):
    expected = every_verdict(node)
    plan = node.plan(PolicyConfig(remove_unused_base_images=False))
    before = snapshot(tmp_path)
    report = node.execute(plan)
    assert snapshot(tmp_path) == before
    assert report.outcomes == []
    assert report.touched == list(expected.values()).count("in-use")


# -- bytes freed ----------------------------------------------------------------------


def test_freed_bytes_are_the_allocated_bytes(node):
    names = [
        node.original("a", age=OLD, data=b"a" * (2 * MiB)).name,
        node.base("swap_4", age=OLD, size=4 * MiB, data=b"s" * MiB).name,
        node.base(f"{sha1('p')}.part", age=OLD, data=b"p" * 5000).name,
        node.original("empty", age=OLD).name,  # sparse: frees (almost) nothing
    ]
    sizes = {n: allocated(node.cache / n) for n in names}
    assert sizes[names[0]] >= 2 * MiB
    plan = node.plan()

    report = node.execute(plan)

    assert {o.name: o.freed for o in report.removed} == sizes
    assert report.freed == sum(sizes.values()) == plan.frees


def test_hard_linked_pair_frees_its_blocks_once(node):
    base = node.original("pair", age=OLD, data=b"h" * MiB)
    os.link(base, node.cache / f"{base.name}_40")
    blocks = allocated(base)
    plan = node.plan()
    assert plan.frees == 0  # neither removal alone frees anything
    report = node.execute(plan)
    assert len(report.removed) == 2
    assert report.freed == blocks


# -- the cache folder and nothing else ------------------------------------------------


def test_never_deletes_outside_the_cache_folder(node, tmp_path):
    old = node.original("old", age=OLD)
    outside = tmp_path / "outside"
    outside.mkdir()
    twins = [outside / old.name, node.instances / old.name, tmp_path / old.name]
    for twin in twins:
        twin.write_bytes(b"not in the cache")
        set_age(twin, OLD)
    # a link in the cache with a nova name that points out of it
    target = outside / sha1("target")
    target.write_bytes(b"precious")
    set_age(target, OLD)
    link = node.cache / sha1("target")
    link.symlink_to(target)
    node.age(link, OLD)
    f = node.folder()
    for twin in twins:  # and files with cache names inside an instance folder
        shutil.copy(twin, f / twin.name)
    plan = node.plan(PolicyConfig(remove_unused_original_minimum_age_seconds=0))
    assert by_name(plan)[link.name].verdict is Verdict.UNKNOWN
    assert [d.name for d in plan.removals] == [old.name]

    # a tampered plan naming files outside the folder
    removal = plan.removals[0]
    forged = [
        replace(removal, name=f"../{old.name}", path=str(node.instances / old.name)),
        replace(removal, name=str(outside / old.name), path=str(outside / old.name)),
        replace(removal, name="..", path=str(node.instances)),
        replace(removal, name=link.name, path=str(target),
                dev=os.stat(target).st_dev, ino=os.stat(target).st_ino,
                mtime=os.stat(target).st_mtime),
    ]
    report = node.execute(replace(plan, decisions=(*forged, *plan.decisions)))

    assert [o.action for o in report.outcomes] == [Action.SKIPPED] * 4 + [Action.REMOVED]
    assert not old.exists()
    for twin in twins:
        assert twin.read_bytes() == b"not in the cache"
    assert link.is_symlink()
    assert target.read_bytes() == b"precious"
    assert node.instances.is_dir()


def test_refuses_a_cache_folder_swapped_after_the_scan(node):
    old = node.original("old", age=OLD)
    plan = node.plan()
    node.cache.rename(node.instances / "_base.old")
    node.cache.mkdir()
    twin = node.cache / old.name
    twin.write_bytes(b"the new folder's file")
    set_age(twin, OLD)

    with pytest.raises(NovakeeperError) as err:
        node.execute(plan)

    assert err.value.code is ExitCode.PATH
    assert "replaced since the scan" in err.value.message
    assert twin.exists()
    assert (node.instances / "_base.old" / old.name).exists()


def test_refuses_a_cache_folder_gone_after_the_scan(node):
    node.original("old", age=OLD)
    plan = node.plan()
    node.cache.rename(node.instances / "_base.old")
    with pytest.raises(NovakeeperError):
        node.execute(plan)
    assert len(os.listdir(node.instances / "_base.old")) == 1


def test_cache_folder_reached_through_a_symlink(node, tmp_path):
    real = tmp_path / "shared-storage" / "cache"
    real.mkdir(parents=True)
    node.cache.rmdir()
    node.cache.symlink_to(real)
    used = node.original("used", age=OLD)
    old = node.original("old", age=OLD)
    node.disk(node.folder(), used)
    plan = node.plan()
    assert [d.name for d in plan.removals] == [old.name]

    report = node.execute(plan)

    assert [o.name for o in report.removed] == [old.name]
    assert not (real / old.name).exists()
    assert (real / used.name).exists()
    assert node.cache.is_symlink()


def test_cache_symlink_repointed_after_the_scan_removes_nothing(node, tmp_path):
    real = tmp_path / "a"
    other = tmp_path / "b"
    real.mkdir()
    other.mkdir()
    node.cache.rmdir()
    node.cache.symlink_to(real)
    old = node.original("old", age=OLD, size=MiB)
    shutil.copy2(old, other / old.name)
    plan = node.plan()
    assert len(plan.removals) == 1
    node.cache.unlink()
    node.cache.symlink_to(other)

    try:
        report = node.execute(plan)
    except NovakeeperError:
        pass
    else:
        assert report.removed == []
    assert (real / old.name).exists()
    assert (other / old.name).exists()


def test_a_new_disk_in_a_new_qcow2_chain_protects_every_link(node):
    """A chain built after the plan through an intermediate outside instance folders."""
    original = node.original("orig", age=OLD)
    plan = node.plan()
    assert [d.name for d in plan.removals] == [original.name]
    shared = node.instances / "shared"
    shared.mkdir()
    make_qcow2(shared / "mid.qcow2", f"../_base/{original.name}")
    node.disk(node.folder(), "../shared/mid.qcow2", backing_fmt="qcow2")
    (outcome,) = node.execute(plan).outcomes
    assert outcome.action is Action.SKIPPED
    assert "in use" in outcome.reason
    assert original.exists()


def test_batches_grow_so_a_clean_needs_at_most_four_rescans():
    """A clean costs a few rescans plus its removals: batches are at least the configured
    size and grow past it so that no clean needs more than MAX_BATCHES rescans, within
    the open-file limit (one descriptor per lock held)."""
    import resource

    from novakeeper.cache.executor import MAX_BATCHES, SPARE_FDS, batch_size

    assert batch_size(10, 128) == 128
    assert batch_size(450, 128) == 128  # 4 batches
    assert batch_size(1006, 128) == 252  # 4 batches, not 8
    assert batch_size(7, 3) == 3
    big = batch_size(20_000, 128)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert big <= soft - SPARE_FDS
    assert big == 5_000 or big == soft - SPARE_FDS  # raised as far as the hard limit lets
    assert -(-20_000 // big) >= MAX_BATCHES


def test_a_large_clean_rescans_a_few_times_not_once_per_batch_of_128(node):
    """600 removals: 4 rescans (batches of 150), each file removed once, nothing skipped."""
    names = [node.base(f"swap_{i + 1}", age=OLD, size=4096).name for i in range(600)]
    plan = node.plan()
    assert len(plan.removals) == 600
    assert node.scanner is not None and node.inventory is not None
    executor = Executor(node.scanner, node.inventory, plan, False, config=node.config)
    report = executor.run()
    assert sorted(o.name for o in report.removed) == sorted(names)
    assert executor.rescans == 4
