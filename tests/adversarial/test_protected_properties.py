"""Property: on random compute nodes built for real (bases, qcow2 cache files over bases,
disks over bases directly, through a symlink, through an intermediate qcow2 elsewhere,
disks that are hard links of a base, symlinks and hard links in the cache, broken and
unreadable disks, pins), the removal set never meets the PROTECTED set, and after the
removals every protected file is still there.

PROTECTED is computed apart from novakeeper, with qemu-img as the oracle:
  * every file in any disk's backing chain as `qemu-img info --backing-chain` sees it
    (by inode: every cache name of that file), the disk file itself included;
  * for a disk qemu-img cannot follow to the end (corrupt, unknown feature, missing or
    unreadable backing file): the files it did reach, the cache file named like the one
    it could not open, and every base of a kind a disk of that name can use (nova's
    naming: `disk` a root image, `disk.local`/`disk.eph*` ephemeral, `disk.swap` swap,
    anything else any kind);
  * pinned files.
Ages are all far past every minimum and the spawning hold is off (stale_partial_seconds
= 0), so only what the disks use protects anything.

As root, permission bits are no obstacle to novakeeper, so the hypothesis trees use
truncated and corrupt headers as the 'unreadable' stand-in; a separate test makes files
and folders really unreadable (chmod 000) and runs clean under setpriv without the
capabilities that let root ignore them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from _cli_tree import permission_prefix, run_cli
from novakeeper.cache.policy import PolicyConfig
from novakeeper.errors import ExitCode
from novakeeper.passes import executor_for, plan_pass
from novakeeper.settings import Settings
from novakeeper.state import pins

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
OLD = 30 * 86400
ROOT_KINDS = {"original", "resized"}
ALL_KINDS = {"original", "resized", "swap", "ephemeral"}
DISK_NAMES = ["disk", "disk", "disk.local", "disk.swap", "disk.eph0", "disk.rescue",
              "disk.config", "extra.img"]
FOLDER_NAMES = ["{uuid}", "{uuid}", "{uuid}_resize", "{uuid}_del", "instance-{n:08x}",
                "hand-made-{n}"]
BROKEN = ["truncated", "bad-version", "unknown-feature", "missing-backing",
          "dangling-symlink", "bad-cluster-bits"]


def sha1(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()


def base_name(kind: str, n: int) -> str:
    return {"original": sha1(f"image-{n}"), "resized": sha1(f"image-{n}") + "_20",
            "swap": f"swap_{n + 1}", "ephemeral": f"ephemeral_{n + 1}_0706d66"}[kind]


def kind_of(name: str) -> str | None:
    """The oracle's own reading of nova's cache names."""
    if len(name) == 40:
        return "original"
    if name.endswith("_20"):
        return "resized"
    if name.startswith("swap_"):
        return "swap"
    if name.startswith("ephemeral_"):
        return "ephemeral"
    return None


def usable_kinds(disk_name: str) -> set[str]:
    if disk_name in ("disk", "disk.rescue"):
        return ROOT_KINDS
    if disk_name == "disk.local" or disk_name.startswith("disk.eph"):
        return {"ephemeral"}
    if disk_name == "disk.swap":
        return {"swap"}
    return ALL_KINDS


# -- the tree ------------------------------------------------------------------------------


@dataclass
class Spec:
    bases: list[tuple[str, int | None]]
    """(kind, index of the base it is a qcow2 over, or None for raw)."""
    cache_links: list[tuple[str, int]]
    """('symlink' | 'hardlink', base index): extra names in the cache."""
    folders: list[tuple[str, list[tuple[str, tuple]]]]
    """(folder pattern, [(disk name, target)])."""
    pinned: list[int] = field(default_factory=list)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    bases: list[tuple[str, int | None]] = []
    for _ in range(draw(st.integers(1, 5))):
        raw = [j for j, (_, over) in enumerate(bases) if over is None]
        over = draw(st.none() | st.sampled_from(raw)) if raw else None
        bases.append((draw(st.sampled_from(sorted(ALL_KINDS))), over))
    index = st.integers(0, len(bases) - 1)
    links = draw(st.lists(st.tuples(st.sampled_from(["symlink", "hardlink"]), index),
                          max_size=2))
    target = st.one_of(
        st.tuples(st.just("base"), index, st.sampled_from(["abs", "rel", "local-link"])),
        st.tuples(st.just("cache-link"), st.integers(0, 1)),
        st.tuples(st.just("mid"), index),
        st.tuples(st.just("is-base"), index),
        st.tuples(st.just("broken"), st.sampled_from(BROKEN), index),
        # without a backing file: with one, see the xfail test at the end
        st.tuples(st.just("data-file"), index),
        st.tuples(st.just("standalone")),
    )
    folders = draw(st.lists(st.tuples(
        st.sampled_from(FOLDER_NAMES),
        st.lists(st.tuples(st.sampled_from(DISK_NAMES), target), min_size=1, max_size=3,
                 unique_by=lambda d: d[0])), max_size=4))
    pinned = draw(st.lists(index, max_size=1))
    return Spec(bases, links, folders, pinned)


def qemu_create(path: Path, backing: str | None, fmt: str = "raw") -> None:
    args = [QEMU_IMG, "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-u", "-b", backing, "-F", fmt]
    subprocess.run([*args, os.fspath(path), "64M"], check=True, capture_output=True,
                   timeout=60, cwd=path.parent)


def make_data_file_disk(path: Path, data: Path, backing: Path | None,
                        raw: bool = False) -> None:
    """A qcow2 disk whose data lives in the external file `data`."""
    args = ["-b", os.fspath(backing), "-F", "raw"] if backing is not None else []
    option = f"data_file={data}" + (",data_file_raw=on" if raw else "")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", *args, "-o", option,
                    os.fspath(path), "1M"], check=True, capture_output=True, timeout=60)


def set_old(path: Path) -> None:
    t = os.stat(path).st_mtime - OLD
    os.utime(path, (t, t), follow_symlinks=False)


def break_disk(path: Path, how: str, base: Path) -> None:
    """A disk whose chain cannot be read to its end, as root can produce it."""
    if how == "dangling-symlink":
        os.symlink("/nonexistent/volume/disk", path)
        return
    if how == "missing-backing":
        qemu_create(path, os.path.join(os.path.dirname(base), sha1("gone")))
        return
    qemu_create(path, os.fspath(base))
    data = bytearray(path.read_bytes()[:4096])
    if how == "truncated":
        data = data[:48]
    elif how == "bad-version":
        data[4:8] = (7).to_bytes(4, "big")
    elif how == "unknown-feature":
        data[72] |= 0x80  # incompatible feature bit 63: nobody knows it
    elif how == "bad-cluster-bits":
        data[20:24] = (40).to_bytes(4, "big")  # cluster_bits out of range
    path.write_bytes(bytes(data))


class Tree:
    def __init__(self, root: Path, spec: Spec) -> None:
        self.root = root
        self.instances = root / "instances"
        self.cache = self.instances / "_base"
        self.cache.mkdir(parents=True)
        (self.instances / "locks").mkdir()
        self.disks: list[Path] = []
        self.bases: list[Path] = []
        for i, (kind, over) in enumerate(spec.bases):
            path = self.cache / base_name(kind, i)
            if over is None:
                with open(path, "wb") as f:
                    f.write(b"base %d" % i)
                    f.truncate(1 << 20)
            else:
                qemu_create(path, os.fspath(self.bases[over]))
            self.bases.append(path)
        self.cache_links: list[Path] = []
        for j, (how, i) in enumerate(spec.cache_links):
            link = self.cache / sha1(f"{how}-{j}")
            if how == "symlink":
                os.symlink(self.bases[i].name, link)
            else:
                os.link(self.bases[i], link)
            self.cache_links.append(link)
        snapshots = root / "volumes"  # outside instances_path: reached only as backing
        for n, (pattern, disks) in enumerate(spec.folders):
            uuid = f"{n:08x}-0000-4000-8000-{n:012x}"
            folder = self.instances / pattern.format(uuid=uuid, n=n)
            folder.mkdir()
            (folder / "console.log").touch()  # a finished spawn
            for name, target in disks:
                self.make_disk(folder / name, target, snapshots)
        for path in [*self.bases, *self.cache_links]:
            set_old(path)
        self.pinned = {self.bases[i].name for i in spec.pinned}

    def make_disk(self, path: Path, target: tuple, snapshots: Path) -> None:
        what = target[0]
        if what == "base":
            base, how = self.bases[target[1]], target[2]
            if how == "local-link":
                os.symlink(base, path.parent / (path.name + ".base"))
                qemu_create(path, path.name + ".base")
            else:
                qemu_create(path, os.fspath(base) if how == "abs"
                            else os.path.relpath(base, path.parent))
        elif what == "cache-link":
            links = [lnk for lnk in self.cache_links if lnk.is_symlink()]
            backing = links[target[1] % len(links)] if links else self.bases[0]
            qemu_create(path, os.fspath(backing))
        elif what == "mid":
            snapshots.mkdir(exist_ok=True)
            mid = snapshots / f"mid-{len(self.disks)}.qcow2"
            qemu_create(mid, os.path.relpath(self.bases[target[1]], snapshots))
            qemu_create(path, os.fspath(mid), "qcow2")
        elif what == "data-file":  # its data in a file outside the cache
            snapshots.mkdir(exist_ok=True)
            data = snapshots / f"data-{len(self.disks)}.raw"
            make_data_file_disk(path, data, None)
        elif what == "is-base":
            os.link(self.bases[target[1]], path)
        elif what == "broken":
            break_disk(path, target[1], self.bases[target[2]])
        else:
            qemu_create(path, None)
        self.disks.append(path)

    def settings(self, state: str) -> Settings:
        return Settings(
            instances_path=os.fspath(self.instances), subdirectory_name="_base",
            manager_interval=2400, host="h",
            policy=PolicyConfig(stale_partial_seconds=0), touch_in_use=True,
            config_files=(), state_path=state, lock_wait_seconds=1.0,
            pins=tuple(pins.from_config([], sorted(self.pinned))))


# -- the oracle ------------------------------------------------------------------------------


def qemu_json(*args: str) -> object | None:
    proc = subprocess.run([QEMU_IMG, "info", "-U", "--output=json", *args],
                          capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def chain_of(disk: Path) -> tuple[list[str], str | None]:
    """What qemu-img says the disk reads besides itself: the paths of its backing files
    (and external data files), and the path it could not open (None when it followed
    the chain to its end)."""
    whole = qemu_json("--backing-chain", os.fspath(disk))
    if isinstance(whole, list):
        files = [image["filename"] for image in whole[1:]]
        for image in whole:
            data = image.get("format-specific", {}).get("data", {}).get("data-file")
            if data:
                files.append(os.path.join(os.path.dirname(image["filename"]), data))
        return files, None
    files, current = [], os.fspath(disk)  # broken: walk it one image at a time
    for _ in range(70):
        info = qemu_json(current)
        if not isinstance(info, dict) or current in files:
            return files, current
        if current != os.fspath(disk):
            files.append(current)
        nxt = info.get("full-backing-filename")
        if not nxt:
            return files, os.fspath(disk)  # e.g. opened, but --backing-chain refused it
        current = nxt
    return files, current


def names_on_the_way(path: str, cache: Path) -> set[str]:
    """The cache names opening `path` goes through: the name itself when it lies in the
    cache folder, and every symbolic link hop that does (hard links: only the name used)."""
    real_cache = os.path.realpath(cache)
    names = set()
    for _ in range(40):
        folder, name = os.path.split(path)
        if os.path.realpath(folder) == real_cache:
            names.add(name)
        if not os.path.islink(path):
            break
        path = os.path.join(folder, os.readlink(path))
    return names


def protected(tree: Tree) -> tuple[set[str], list[str], list[Path]]:
    """Cache names that must stay, why, and the disks whose chain qemu-img followed to
    its end."""
    names = {e.name for e in os.scandir(tree.cache) if not e.is_symlink()}
    keep: set[str] = set(tree.pinned)
    why = [f"pinned {n}" for n in tree.pinned]
    whole = []
    for disk in tree.disks:
        files, broken_at = chain_of(disk)
        uses = set().union(*(names_on_the_way(f, tree.cache) for f in files))
        keep |= uses
        if broken_at is None:
            whole.append(disk)
            why.append(f"{disk} uses {sorted(uses)}")
            continue
        # a disk whose header cannot be read could be backed by any base of its class; a
        # dangling link has no header: it could use only what it names, which is not there
        dangling = os.path.islink(disk) and not os.path.exists(disk)
        kinds = set() if dangling else usable_kinds(disk.name)
        held = {n for n in names if kind_of(n) in kinds}
        held |= names_on_the_way(broken_at, tree.cache) | (
            {os.path.basename(broken_at)} & names)
        keep |= held
        why.append(f"{disk} uses {sorted(uses)}, broken at {broken_at}: holds {sorted(held)}")
    return keep & (names | tree.pinned), why, whole


SETTINGS = settings(max_examples=int(os.environ.get("NOVAKEEPER_TREE_EXAMPLES", "50")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(spec=specs())
def test_the_removal_set_never_meets_the_protected_set(spec: Spec) -> None:
    with tempfile.TemporaryDirectory(prefix="novakeeper-tree-") as folder:
        tree = Tree(Path(folder), spec)
        keep, why, whole = protected(tree)
        inodes = {n: os.lstat(tree.cache / n).st_ino for n in keep}
        conf = tree.settings(os.path.join(folder, "state.db"))
        with plan_pass(conf, write_state=True) as result:
            removals = {d.name for d in result.plan.removals}
            assert not removals & keep, (removals & keep, why, result.plan.to_dict())
            report = executor_for(result, conf).run()
        assert not report.failed
        for name, ino in inodes.items():
            path = tree.cache / name
            assert os.path.lexists(path) and os.lstat(path).st_ino == ino, (name, why)
        for disk in whole:  # every chain qemu-img could follow still opens
            assert chain_of(disk)[1] is None, (disk, why)
        event(f"removed {len(report.removed)} of {len(tree.bases)} bases")
        event(f"protected {len(keep & {b.name for b in tree.bases})} bases")


# -- really unreadable, as an unprivileged process sees it ---------------------------------


def unprivileged_clean(tree: Tree, unreadable: list[Path]) -> set[str]:
    """clean --yes --json in a child that permission bits apply to, with `unreadable`
    chmod 000 meanwhile; the names it removed."""
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("root cannot drop CAP_DAC_OVERRIDE here (no working setpriv)")
    config = tree.root / "nova.conf"
    config.write_text("[DEFAULT]\n[novakeeper]\nstale_partial_seconds = 0\n")
    modes = {p: p.stat().st_mode for p in unreadable}
    for path in unreadable:
        path.chmod(0)
    try:
        proc = run_cli("--config-file", os.fspath(config), "--instances-path",
                       os.fspath(tree.instances), "cache", "clean", "--yes", "--json",
                       prefix=prefix)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert proc.returncode == ExitCode.PROBLEMS, proc.stderr
    return {o["name"] for o in json.loads(proc.stdout)["result"]["outcomes"]
            if o["action"] == "removed"}


def test_unreadable_disks_and_backing_files_hold_their_bases(tmp_path: Path) -> None:
    spec = Spec(
        bases=[("original", None), ("original", None), ("swap", None),
               ("ephemeral", None), ("resized", None), ("ephemeral", None)],
        cache_links=[],
        folders=[("{uuid}", [("disk", ("base", 0, "abs"))]),          # disk unreadable
                 ("{uuid}", [("disk", ("mid", 1))]),                  # its mid unreadable
                 ("{uuid}", [("disk.local", ("base", 3, "abs"))])])   # readable
    tree = Tree(tmp_path, spec)
    keep, why, _ = protected(tree)  # as root: qemu-img reads everything
    disk = tree.instances / f"{0:08x}-0000-4000-8000-{0:012x}" / "disk"
    mid = next((tree.root / "volumes").iterdir())
    removed = unprivileged_clean(tree, [disk, mid])
    assert not removed & keep, (removed, why)
    names = [b.name for b in tree.bases]
    # the unreadable root disks hold every original and resized copy; the swap file and
    # the unused ephemeral disk are no root disk's: they go
    assert removed == {names[2], names[5]}, (removed, why)


def test_an_unreadable_instance_folder_holds_every_base(tmp_path: Path) -> None:
    spec = Spec(bases=[("original", None), ("swap", None), ("ephemeral", None),
                       ("resized", None)],
                cache_links=[],
                folders=[("{uuid}", [("disk.swap", ("base", 1, "abs"))]),
                         ("{uuid}", [("disk", ("base", 0, "abs"))])])
    tree = Tree(tmp_path, spec)
    folder = tree.instances / f"{0:08x}-0000-4000-8000-{0:012x}"
    assert unprivileged_clean(tree, [folder]) == set()
    assert all(b.exists() for b in tree.bases)


def test_the_backing_file_of_a_disk_with_a_data_file_is_protected(tmp_path: Path) -> None:
    tree = Tree(tmp_path, Spec(bases=[("ephemeral", None)], cache_links=[], folders=[]))
    folder = tree.instances / f"{0:08x}-0000-4000-8000-{0:012x}"
    folder.mkdir()
    disk = folder / "disk"
    make_data_file_disk(disk, tmp_path / "disk.data", tree.bases[0])
    tree.disks.append(disk)
    keep, why, _ = protected(tree)
    assert tree.bases[0].name in keep, why  # qemu-img: the disk's backing file
    assert_kept(tree, keep)


def test_a_disks_external_data_file_in_the_cache_is_protected(tmp_path: Path) -> None:
    tree = Tree(tmp_path, Spec(bases=[("original", None), ("swap", None)], cache_links=[],
                               folders=[]))
    folder = tree.instances / f"{0:08x}-0000-4000-8000-{0:012x}"
    folder.mkdir()
    disk = folder / "disk.swap"
    make_data_file_disk(disk, tree.bases[0], None, raw=True)
    set_old(tree.bases[0])  # qemu-img wrote to it
    tree.disks.append(disk)
    keep, why, _ = protected(tree)
    assert tree.bases[0].name in keep, why  # qemu-img names it as the data file
    assert_kept(tree, keep)


def assert_kept(tree: Tree, keep: set[str]) -> None:
    conf = tree.settings(os.fspath(tree.root / "state.db"))
    with plan_pass(conf, write_state=True) as result:
        removals = {d.name for d in result.plan.removals}
        executor_for(result, conf).run()
    assert not removals & keep, removals
    assert all((tree.cache / n).exists() for n in keep)
