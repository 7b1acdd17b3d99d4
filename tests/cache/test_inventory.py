"""The scan: which folders and files are disks, which cache files their whole backing
chains reach (by device and inode), sizes, and the problems that hold files."""

from __future__ import annotations

import os

import pytest
from _tree import DAY, GiB, MiB, Node, allocated, by_name, make_qcow2, sha1, truncate, verdicts

from novakeeper.cache.inventory import FolderKind, ProblemCode
from novakeeper.cache.layout import BaseKind
from novakeeper.cache.plan import Verdict

OLD = 30 * DAY


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def _users(inventory, name):
    return sorted(d.path for d in inventory.users_of(name))


# -- instance folders -----------------------------------------------------------------


def test_every_kind_of_instance_folder_is_scanned(node):
    uuid = node.folder(kind="uuid")
    legacy = node.folder("instance-0000abcd")
    resize = node.folder(kind="resize")
    deleted = node.folder(kind="del")
    other = node.folder("someone-elses-folder")
    expected = {}
    for folder, kind, instance in (
        (uuid, FolderKind.INSTANCE, uuid.name),
        (legacy, FolderKind.LEGACY, "instance-0000abcd"),
        (resize, FolderKind.RESIZE, resize.name.removesuffix("_resize")),
        (deleted, FolderKind.DELETED, deleted.name.removesuffix("_del")),
        (other, FolderKind.OTHER, other.name),
    ):
        base = node.original(folder.name, age=OLD)
        node.disk(folder, base)
        expected[str(folder / "disk")] = (kind, instance, base.name)
    unused = node.original("unused", age=OLD)

    inventory = node.scan()

    assert inventory.folders == 5
    seen = {d.path: (d.folder_kind, d.instance, os.path.basename(d.chain[0]))
            for d in inventory.disks}
    assert seen == expected
    for path, (_, _, base) in expected.items():
        assert _users(inventory, base) == [path]
    assert inventory.problems == ()
    plan = node.plan()
    assert {d.name for d in plan.removals} == {unused.name}
    assert plan.by_verdict()[Verdict.IN_USE] == 5


def test_locks_folder_and_the_cache_itself_are_not_instances(node):
    locks = node.instances / "locks"
    locks.mkdir()
    (locks / "nova-storage-registry-lock").write_bytes(b"")
    (locks / "disk").write_bytes(b"QFI\xfb")  # would be a problem if probed
    (node.cache / "disk").write_bytes(b"QFI\xfb")
    inventory = node.scan()
    assert inventory.folders == 0
    assert inventory.disks == ()
    assert inventory.problems == ()
    assert [b.name for b in inventory.bases] == ["disk"]


def test_every_disk_name_and_an_odd_qcow2_count(node):
    f = node.folder()
    names = ["disk", "disk.local", "disk.swap", "disk.eph0", "disk.eph1", "disk.rescue",
             "disk.config", "root-overlay.qcow2", "disk.snapshot-tmp"]
    bases = {}
    for i, name in enumerate(names):
        bases[name] = node.original(f"image-{i}", age=OLD)
        node.disk(f, bases[name], name=name)
    unused = node.original("unused", age=OLD)

    inventory = node.scan()

    assert sorted(os.path.basename(d.path) for d in inventory.disks) == sorted(names)
    for name, base in bases.items():
        assert _users(inventory, base.name) == [str(f / name)], name
    assert inventory.problems == ()
    v = verdicts(node.plan())
    assert v.pop(unused.name) == "remove"
    assert set(v.values()) == {"in-use"}


def test_files_that_are_never_disks_are_not_read(node):
    """console.log is written by the guest: whatever it holds, it is not probed, nor are
    libvirt.xml, disk.info, rotated logs, hidden files and raw files with other names."""
    f = node.folder()
    base = node.original("image", age=OLD)
    node.disk(f, base)
    qcow2_magic = b"QFI\xfb\x00\x00\x00\x03"  # a truncated qcow2 header: a problem if probed
    for name in ("console.log", "console.log.0", "libvirt.xml", "disk.info", ".disk.swp",
                 "qemu.log"):
        (f / name).write_bytes(qcow2_magic)
    (f / "notes.txt").write_bytes(b"raw data, no header\n")
    (f / "disk.eph0").mkdir()  # a folder is not a disk either
    unused = node.original("unused", age=OLD)

    inventory = node.scan()

    assert [d.path for d in inventory.disks] == [str(f / "disk")]
    assert inventory.problems == ()
    assert {d.name for d in node.plan().removals} == {unused.name}


def test_raw_disk_with_a_nova_name_is_a_disk_with_no_chain(node):
    f = node.folder()
    (f / "disk.config").write_bytes(b"CD001" * 100)
    inventory = node.scan()
    assert [(os.path.basename(d.path), d.format, d.chain) for d in inventory.disks] == [
        ("disk.config", "raw", ())
    ]


def test_bases_used_only_by_rescue_local_or_an_unshelved_snapshot_are_in_use(node):
    image = node.original("the-instance-image", age=OLD)  # unused: disk is the snapshot's
    snapshot = node.original("shelved-snapshot", age=OLD)
    rescue = node.original("rescue-image", age=OLD)
    eph_vfat = node.base("ephemeral_20_0706d66", age=OLD)
    eph_ext4 = node.base("ephemeral_20_40d1d2c", age=OLD)  # same size, other file system
    swap = node.base("swap_2048", age=OLD)
    f = node.folder()
    node.disk(f, snapshot)  # unshelved: backed by the snapshot's base
    node.disk(f, rescue, name="disk.rescue")
    node.disk(f, eph_ext4, name="disk.local")
    g = node.folder()
    node.disk(g, swap, name="disk.swap")

    v = verdicts(node.plan())

    assert v == {
        image.name: "remove",
        snapshot.name: "in-use",
        rescue.name: "in-use",
        eph_vfat.name: "remove",
        eph_ext4.name: "in-use",
        swap.name: "in-use",
    }


# -- chains -----------------------------------------------------------------------------


def test_deep_relative_chain_marks_every_cache_link(node):
    """disk -> ../shared/mid.qcow2 -> ../_base/<sha1>_20 (qcow2) -> <sha1> (raw)."""
    original = node.original("deep", age=OLD)
    resized = node.qcow2_base(f"{original.name}_20", original.name, age=OLD)
    shared = node.instances / "shared"
    shared.mkdir()
    mid = make_qcow2(shared / "mid.qcow2", f"../_base/{resized.name}", "qcow2")
    f = node.folder()
    disk = node.disk(f, "../shared/mid.qcow2", backing_fmt="qcow2")
    unused = node.original("unused", age=OLD)

    inventory = node.scan()

    d = next(x for x in inventory.disks if x.path == str(disk))
    assert [os.path.realpath(p) for p in d.chain] == [
        os.path.realpath(p) for p in (mid, resized, original)
    ]
    assert str(disk) in _users(inventory, resized.name)
    assert str(disk) in _users(inventory, original.name)
    # mid.qcow2 is a disk of its own too (a qcow2 in a scanned folder)
    assert str(mid) in _users(inventory, original.name)
    assert verdicts(node.plan()) == {
        original.name: "in-use",
        resized.name: "in-use",
        unused.name: "remove",
    }


def test_chain_of_depth_four_with_mixed_paths(node):
    original = node.original("four", age=OLD)
    a = node.instances / "a"
    b = node.instances / "a" / "b"
    b.mkdir(parents=True)
    make_qcow2(b / "l3.qcow2", original)  # absolute
    make_qcow2(a / "l2.qcow2", "b/l3.qcow2", "qcow2")  # relative, down
    f = node.folder()
    make_qcow2(f / "l1.qcow2", "../a/l2.qcow2", "qcow2")  # relative, across
    disk = node.disk(f, "l1.qcow2", backing_fmt="qcow2")
    inventory = node.scan()
    d = next(x for x in inventory.disks if x.path == str(disk))
    assert len(d.chain) == 4
    assert str(disk) in _users(inventory, original.name)
    assert verdicts(node.plan()) == {original.name: "in-use"}


def test_base_reached_through_symlinks_and_hard_links(node, tmp_path):
    via_link = node.original("via-symlinked-folder", age=OLD)
    via_cache_link = node.original("via-link-in-cache", age=OLD)
    via_hard_link = node.original("via-hard-link-outside", age=OLD)
    linked_pair = node.original("hard-linked-in-cache", age=OLD)
    unused = node.original("unused", age=OLD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cache-alias").symlink_to(node.cache)  # another path to the cache
    os.link(via_hard_link, elsewhere / "image.raw")
    os.link(linked_pair, node.cache / f"{linked_pair.name}_40")
    cache_link = node.cache / "swap_1"  # a link in the cache to another base
    cache_link.symlink_to(via_cache_link.name)
    node.age(cache_link, OLD)

    f = node.folder()
    node.disk(f, elsewhere / "cache-alias" / via_link.name, relative=False)
    node.disk(f, f"../_base/{cache_link.name}", name="disk.rescue")
    node.disk(f, elsewhere / "image.raw", name="disk.local", relative=False)
    g = node.folder()
    node.disk(g, linked_pair)

    v = verdicts(node.plan())

    assert v == {
        via_link.name: "in-use",
        via_cache_link.name: "in-use",
        via_hard_link.name: "in-use",
        linked_pair.name: "in-use",
        f"{linked_pair.name}_40": "in-use",  # the same inode under another name
        cache_link.name: "unknown",  # the link itself: never followed, never removed
        unused.name: "remove",
    }


def test_disk_that_is_itself_a_link_to_a_base_uses_it(node):
    """A raw disk that is a symbolic link into the cache (or a hard link to a base) reads
    that base: removing the base would break (or, for a hard link, not free) the disk."""
    via_symlink = node.original("symlinked-disk", age=OLD)
    via_hard_link = node.base("ephemeral_5_0706d66", age=OLD)
    unused = node.original("unused", age=OLD)
    f = node.folder()
    (f / "disk").symlink_to(f"../_base/{via_symlink.name}")
    os.link(via_hard_link, f / "disk.local")
    inventory = node.scan()
    assert _users(inventory, via_symlink.name) == [str(f / "disk")]
    assert _users(inventory, via_hard_link.name) == [str(f / "disk.local")]
    assert verdicts(node.plan()) == {
        via_symlink.name: "in-use",
        via_hard_link.name: "in-use",
        unused.name: "remove",
    }


def test_symlinked_instance_folder_is_scanned(node, tmp_path):
    base = node.original("linked-folder", age=OLD)
    real = tmp_path / "other-volume" / "instance"
    real.mkdir(parents=True)
    node.disk(real, base, relative=False)
    (node.instances / "00000009-0000-4000-8000-000000000009").symlink_to(real)
    assert verdicts(node.plan()) == {base.name: "in-use"}


# -- sizes ----------------------------------------------------------------------------


def test_allocated_size_is_blocks_not_apparent_size(node):
    sparse = node.original("sparse", age=OLD, size=GiB, data=b"z" * (3 * MiB))
    inventory = node.scan()
    base = next(b for b in inventory.bases if b.name == sparse.name)
    st = os.stat(sparse)
    assert base.size == GiB
    assert base.allocated == st.st_blocks * 512
    assert 3 * MiB <= base.allocated < GiB
    assert base.kind is BaseKind.ORIGINAL
    assert base.image_hash == sparse.name
    assert base.nlink == 1
    d = by_name(node.plan())[sparse.name]
    assert (d.size, d.allocated, d.frees) == (GiB, allocated(sparse), allocated(sparse))


def test_disk_sizes_are_recorded(node):
    base = node.original("sized", age=OLD, size=GiB)
    disk = node.disk(node.folder(), base)
    d = node.scan().disks[0]
    assert d.path == str(disk)
    assert d.format == "qcow2"
    assert d.virtual_size == GiB
    assert d.allocated == allocated(disk)


# -- problems -------------------------------------------------------------------------


def _all_kinds(node):
    """One old, unused base of every removable kind."""
    return {
        "original": node.original("o", age=OLD),
        "resized": node.base(f"{sha1('r')}_20", age=OLD),
        "swap": node.base("swap_512", age=OLD),
        "ephemeral": node.base("ephemeral_1_0706d66", age=OLD),
        "partial": node.base(f"{sha1('p')}.part", age=OLD),
    }


def test_missing_backing_file_of_disk_holds_roots_and_the_name(node):
    kinds = _all_kinds(node)
    f = node.folder()
    node.disk(f, node.cache / sha1("gone"), unsafe=True)

    inventory = node.scan()

    (problem,) = inventory.problems
    assert problem.code is ProblemCode.CHAIN_BROKEN
    assert problem.path == str(f / "disk")
    assert problem.instance == f.name
    assert "backing file missing" in problem.detail
    assert problem.holds_kinds == {BaseKind.ORIGINAL, BaseKind.RESIZED}
    assert problem.holds_names == {sha1("gone")}
    v = verdicts(node.plan())
    assert v == {
        kinds["original"].name: "held",
        kinds["resized"].name: "held",
        kinds["swap"].name: "remove",
        kinds["ephemeral"].name: "remove",
        kinds["partial"].name: "stale-partial",
    }


def test_missing_backing_of_swap_holds_swap_and_the_same_named_cache_file(node, tmp_path):
    kinds = _all_kinds(node)
    namesake = node.original("namesake", age=OLD)
    f = node.folder()
    # the swap disk names /nowhere/<sha1 of namesake>: missing, but a cache file of that
    # name could be what it meant (a moved cache, a renamed mount)
    node.disk(f, tmp_path / "nowhere" / namesake.name, name="disk.swap", relative=False,
              unsafe=True)

    (problem,) = node.scan().problems
    assert problem.holds_kinds == {BaseKind.SWAP}
    assert problem.holds_names == {namesake.name}
    v = verdicts(node.plan())
    assert v == {
        kinds["original"].name: "remove",
        kinds["resized"].name: "remove",
        kinds["swap"].name: "held",
        kinds["ephemeral"].name: "remove",
        kinds["partial"].name: "stale-partial",
        namesake.name: "held",
    }


def test_missing_link_deep_in_a_chain_is_a_problem(node):
    kinds = _all_kinds(node)
    shared = node.instances / "shared"
    shared.mkdir()
    make_qcow2(shared / "mid.qcow2", f"../_base/{sha1('gone')}", extra_args=("-u",))
    f = node.folder()
    node.disk(f, "../shared/mid.qcow2", name="disk.local", backing_fmt="qcow2", unsafe=True)
    problems = {p.path: p for p in node.scan().problems}
    # both the disk (an ephemeral) and mid.qcow2 (odd name: any kind) lack a backing file
    assert problems[str(f / "disk.local")].holds_kinds == {BaseKind.EPHEMERAL}
    assert problems[str(shared / "mid.qcow2")].code is ProblemCode.CHAIN_BROKEN
    v = verdicts(node.plan())
    assert set(v.values()) == {"held"}
    assert v[kinds["ephemeral"].name] == "held"


@pytest.mark.parametrize(
    ("disk_name", "held"),
    [
        ("disk", {"original", "resized"}),
        ("disk.rescue", {"original", "resized"}),
        ("disk.local", {"ephemeral"}),
        ("disk.eph0", {"ephemeral"}),
        ("disk.swap", {"swap"}),
        ("odd.qcow2", {"original", "resized", "swap", "ephemeral", "partial"}),
    ],
)
def test_truncated_disk_holds_its_class_only(node, disk_name, held):
    kinds = _all_kinds(node)
    f = node.folder()
    bad = truncate(node.disk(f, node.cache / "swap_512", name=disk_name), 60)

    inventory = node.scan()

    (problem,) = inventory.problems
    assert problem.code is ProblemCode.DISK_CORRUPT
    assert problem.path == str(bad)
    assert "truncated" in problem.detail
    assert inventory.disks == ()
    v = verdicts(node.plan())
    for kind, base in kinds.items():
        if kind in held:
            assert v[base.name] == "held", kind
        else:
            assert v[base.name] in ("remove", "stale-partial"), kind


@pytest.mark.parametrize("how", ["fifo", "symlink-loop", "folder-loop"])
def test_disk_that_cannot_be_read_holds_its_class(node, how):
    kinds = _all_kinds(node)
    f = node.folder()
    disk = f / "disk.local"
    if how == "fifo":
        os.mkfifo(disk)
    elif how == "symlink-loop":
        disk.symlink_to("disk.local")
    else:
        (node.root / "loop").symlink_to("loop")
        disk.symlink_to(node.root / "loop" / "disk")

    (problem,) = node.scan().problems

    assert problem.code is ProblemCode.DISK_UNREADABLE
    assert problem.path == str(disk)
    assert problem.holds_kinds == {BaseKind.EPHEMERAL}
    v = verdicts(node.plan())
    assert v[kinds["ephemeral"].name] == "held"
    assert v[kinds["original"].name] == "remove"
    assert v[kinds["swap"].name] == "remove"


def test_header_cut_inside_the_backing_name_is_a_problem(node):
    base = node.original("cut", age=OLD)
    disk = node.disk(node.folder(), base, relative=False)
    with open(disk, "rb") as fh:
        head = fh.read(4096)
    offset = int.from_bytes(head[8:16], "big")
    truncate(disk, offset + 3)
    (problem,) = node.scan().problems
    assert problem.code is ProblemCode.DISK_CORRUPT
    assert verdicts(node.plan()) == {base.name: "held"}


def test_one_bad_disk_does_not_stop_the_scan(node):
    good = node.original("good", age=OLD)
    for i in range(3):
        f = node.folder()
        node.disk(f, good)
        truncate(node.disk(f, node.cache / "swap_1", name="disk.swap", unsafe=True), 10 + i)
    old_swap = node.base("swap_1", age=OLD)
    old_orig = node.original("old", age=OLD)
    inventory = node.scan()
    assert len(inventory.disks) == 3
    assert len(inventory.problems) == 3
    assert verdicts(node.plan()) == {
        good.name: "in-use",
        old_swap.name: "held",
        old_orig.name: "remove",
    }


# -- chains inside the cache and dangling links ------------------------------------------


def test_qcow2_cache_file_keeps_the_cache_file_it_is_backed_by(node):
    """force_raw_images = False leaves qcow2 files in the cache; one backed by another
    cache file keeps it, even when no disk uses either (else removing the original would
    break the overlay that stays because it is younger)."""
    original = node.original("backed", age=OLD)
    overlay = node.qcow2_base(f"{original.name}_20", original.name, age=60)

    plan = node.plan()

    decisions = by_name(plan)
    assert decisions[original.name].verdict is Verdict.IN_USE
    assert decisions[original.name].users == (f"_base/{overlay.name}",)
    assert decisions[overlay.name].verdict is Verdict.TOO_YOUNG
    report = node.execute(plan)
    assert not report.removed
    assert original.exists()


def test_dangling_symlink_disk_holds_its_class(node):
    """A disk that is a link into a share that is not mounted could use any root base."""
    unused = node.original("unused", age=OLD)
    swap = node.base("swap_512", age=OLD)
    f = node.folder()
    os.symlink("/nonexistent/share/disk", f / "disk")

    plan = node.plan()

    assert verdicts(plan, [unused.name, swap.name]) == {unused.name: "held",
                                                        swap.name: "remove"}
    [problem] = plan.problems
    assert problem.code is ProblemCode.DISK_UNREADABLE
    assert "dangling symbolic link" in problem.detail


def test_fresh_info_leftover_is_too_young_not_downloading(node):
    info = node.base(f"{sha1('x')}.info", age=60)
    decision = by_name(node.plan())[info.name]
    assert decision.verdict is Verdict.TOO_YOUNG
    assert "removable in" in decision.reason
