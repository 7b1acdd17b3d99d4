"""The undo window: removed bases wait in _base/.novakeeper-trash, are unlinked after the
grace period, count as freed only then, and `cache restore` puts one back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from _tree import DAY, NOW, MiB, Node, sha1

from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.executor import Action, Executor
from novakeeper.cache.layout import TRASH_NAME
from novakeeper.cache.locks import NovaLocks, nova_lock_dir
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import PolicyConfig, decide
from novakeeper.cache.undo import restore_one
from novakeeper.errors import ExitCode, NovakeeperError

OLD = 30 * DAY


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def run(node: Node, config: PolicyConfig, now: float) -> tuple[object, object]:
    plan = decide(node.scan(), config, now)
    assert node.scanner is not None and node.inventory is not None
    report = Executor(node.scanner, node.inventory, plan, False, None,
                      NovaLocks(nova_lock_dir(os.fspath(node.instances)), 0),
                      trash_grace=config.trash_grace_seconds).run()
    return plan, report


def test_removal_moves_into_the_trash_and_frees_nothing_yet(node: Node) -> None:
    old = node.original("old", age=OLD, data=b"x" * MiB)
    inode = os.lstat(old).st_ino
    _, report = run(node, PolicyConfig(trash_grace_seconds=3600), time.time())
    assert [o.action for o in report.outcomes] == [Action.TRASHED]
    assert report.freed == 0
    trashed = node.cache / TRASH_NAME / old.name
    assert not old.exists() and os.lstat(trashed).st_ino == inode  # a rename: same inode
    # the trash is not a cache file, and a second plan shows it in the trash only
    plan = decide(node.scan(), PolicyConfig(trash_grace_seconds=3600), time.time())
    assert [d.name for d in plan.decisions] == []
    assert [t.name for t in plan.trash] == [old.name] and plan.trash_due() == ()


def test_purged_after_the_grace_period_and_counted_then(node: Node) -> None:
    old = node.original("old", age=OLD, data=b"x" * MiB)
    config = PolicyConfig(trash_grace_seconds=3600)
    run(node, config, time.time())
    trashed = node.cache / TRASH_NAME / old.name
    allocated = os.lstat(trashed).st_blocks * 512
    _, report = run(node, config, time.time() + 1800)  # within the grace: kept
    assert report.outcomes == [] and trashed.exists()
    _, report = run(node, config, time.time() + 3601)  # past it: unlinked, freed now
    assert [o.action for o in report.outcomes] == [Action.PURGED]
    assert report.freed == allocated and not trashed.exists()


def test_turning_the_trash_off_empties_it(node: Node) -> None:
    node.original("old", age=OLD)
    run(node, PolicyConfig(trash_grace_seconds=3600), time.time())
    _, report = run(node, PolicyConfig(trash_grace_seconds=0), time.time())
    assert [o.action for o in report.outcomes] == [Action.PURGED]


def test_budget_counts_the_trash_as_on_its_way_out(node: Node) -> None:
    """Bytes in the trash still take space, but eviction must not take more bases for
    them: otherwise every pass during the grace period would evict again."""
    a = node.original("a", age=OLD, data=b"a" * MiB)
    node.original("b", age=2 * 3600, data=b"b" * MiB)  # too young for the age rule
    node.original("c", age=3 * 3600, data=b"c" * MiB)
    size = os.lstat(a).st_blocks * 512
    budget = BudgetConfig(max_cache_size=size, eviction_min_age_seconds=0)
    config = PolicyConfig(trash_grace_seconds=3600, budget=budget)
    now = NOW  # the clock the ages above were set against
    plan, _ = run(node, config, now)
    assert {d.name: d.verdict for d in plan.decisions if d.removes} == {
        a.name: Verdict.REMOVE, sha1("c"): Verdict.EVICT}
    # next pass: 3 MiB held (2 of them in the trash), limit 1 MiB: nothing more to evict
    plan = decide(node.scan(), config, now + 60)
    assert plan.budget is not None
    assert plan.budget.in_trash == 2 * size
    assert plan.budget.need == 2 * size and plan.budget.shortfall == 0
    assert plan.removals == ()


def test_restore_puts_it_back_under_its_name(node: Node) -> None:
    old = node.original("old", age=OLD)
    run(node, PolicyConfig(trash_grace_seconds=3600), time.time())
    locks = NovaLocks(nova_lock_dir(os.fspath(node.instances)), 0)
    entry = restore_one(os.fspath(node.cache), old.name, locks)
    assert entry.name == old.name and old.is_file()
    assert not (node.cache / TRASH_NAME / old.name).exists()
    with pytest.raises(NovakeeperError) as info:
        restore_one(os.fspath(node.cache), old.name, locks)
    assert info.value.code is ExitCode.PATH and "not in the trash" in info.value.message


def test_restore_never_replaces_a_new_download(node: Node) -> None:
    old = node.original("old", age=OLD, data=b"old bytes")
    run(node, PolicyConfig(trash_grace_seconds=3600), time.time())
    old.write_bytes(b"fetched anew")  # nova downloaded the image again meanwhile
    with pytest.raises(NovakeeperError) as info:
        restore_one(os.fspath(node.cache), old.name,
                    NovaLocks(nova_lock_dir(os.fspath(node.instances)), 0))
    assert "has a file of that name again" in info.value.message
    assert old.read_bytes() == b"fetched anew"
    assert (node.cache / TRASH_NAME / old.name).read_bytes().startswith(b"old bytes")


@pytest.mark.parametrize("name", ["../x", "", "a/b"])
def test_restore_takes_names_only(node: Node, name: str) -> None:
    with pytest.raises(NovakeeperError) as info:
        restore_one(os.fspath(node.cache), name,
                    NovaLocks(nova_lock_dir(os.fspath(node.instances)), 0))
    assert info.value.code is ExitCode.USAGE


def test_a_trash_that_is_a_link_is_refused(node: Node, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (node.cache / TRASH_NAME).symlink_to(elsewhere)
    old = node.original("old", age=OLD)
    with pytest.raises(NovakeeperError) as info:
        run(node, PolicyConfig(trash_grace_seconds=3600), time.time())
    assert info.value.code is ExitCode.PATH and "nothing removed" in info.value.message
    assert old.exists() and os.listdir(elsewhere) == []
