"""In use by name: nova matches a disk's backing file to a cache file by its basename, so
after a tree was copied or moved, a share mounted at another path, or instances_path
changed while old instances still point to the old place, a backing path outside the
cache folder still makes the cache file of that name in use. Real qcow2 chains."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tree import DAY, Node, by_name, set_age, sha1, verdicts

from conftest import make_raw
from novakeeper.cache.executor import Action
from novakeeper.cache.plan import Verdict

OLD = 30 * DAY


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "new")


def test_a_backing_path_outside_the_cache_protects_its_namesake(node: Node,
                                                              tmp_path: Path) -> None:
    """The issue's repro: old/_base/X and new/_base/X, new/<uuid>/disk backed by
    old/_base/X, instances_path = new: X is in use, by name."""
    name = sha1("moved")
    old_base = make_raw(tmp_path / "old" / "_base" / name, 1 << 20)
    set_age(old_base, OLD)
    namesake = node.base(name, age=OLD)
    other = node.original("unused", age=OLD)
    folder = node.folder()
    disk = node.disk(folder, old_base, relative=False)
    plan = node.plan()
    assert verdicts(plan) == {name: "in-use", other.name: "remove"}
    d = by_name(plan)[name]
    assert d.reason == f"in use by name: backing file {old_base} (of {disk})"
    assert d.by_name == (f"{old_base} (of {disk})",)
    assert d.disks == (str(disk),)
    report = node.execute(plan)
    assert [o.name for o in report.removed] == [other.name]
    assert namesake.exists()


def test_by_name_is_said_beside_the_inode_users(node: Node, tmp_path: Path) -> None:
    name = sha1("both")
    old_base = make_raw(tmp_path / "old" / "_base" / name, 1 << 20)
    base = node.base(name, age=OLD)
    node.disk(node.folder(), base, relative=False)
    moved = node.disk(node.folder(), old_base, relative=False)
    d = by_name(node.plan())[name]
    assert d.verdict is Verdict.IN_USE
    assert d.reason == (f"in use by 2 instances (2 disks); by name: backing file "
                        f"{old_base} (of {moved})")


def test_the_chain_is_followed_through_the_outside_file(node: Node, tmp_path: Path) -> None:
    """old/_base/X is itself a qcow2 over old/_base/Y: both X and Y of the cache are in use
    by name (force_raw_images = False on the old tree)."""
    x, y = sha1("x"), sha1("y")
    old = tmp_path / "old" / "_base"
    old_y = make_raw(old / y, 1 << 20)
    old_x = node.disk(old, old_y, name=x, relative=False)
    node.base(x, age=OLD)
    node.base(y, age=OLD)
    node.disk(node.folder(), old_x, relative=False)
    plan = node.plan()
    assert verdicts(plan) == {x: "in-use", y: "in-use"}
    assert by_name(plan)[y].reason.startswith(f"in use by name: backing file {old_y}")


def test_a_missing_outside_backing_file_still_holds_its_namesake(node: Node,
                                                                tmp_path: Path) -> None:
    """The old share is not mounted here: the chain breaks, and the break holds the cache
    file of that name (another host may see it mounted)."""
    name = sha1("unmounted")
    node.base(name, age=OLD)
    gone = tmp_path / "old" / "_base" / name
    node.disk(node.folder(), gone, relative=False, unsafe=True)
    d = by_name(node.plan())[name]
    assert d.verdict is Verdict.HELD and "chain-broken" in d.reason


def test_a_name_that_is_no_cache_file_protects_nothing(node: Node, tmp_path: Path) -> None:
    elsewhere = make_raw(tmp_path / "elsewhere" / "some-image.raw", 1 << 20)
    other = node.original("unused", age=OLD)
    node.disk(node.folder(), elsewhere, relative=False)
    plan = node.plan()
    assert verdicts(plan) == {other.name: "remove"}
    assert [o.action for o in node.execute(plan).outcomes] == [Action.REMOVED]
