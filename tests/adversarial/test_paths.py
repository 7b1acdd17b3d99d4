"""Path safety: symlinks and hard links in the cache, a cache folder that is a symlink,
backing paths with `..` and into another host's cache, names with spaces, newlines and
non-UTF-8 bytes, and files swapped between the scan and the removal.

Each test builds a real node under tmp_path with files outside the cache folder too, runs
a whole clean (plan_pass, then the executor, exactly as the CLI does) and checks: no
crash, every in-use base is still there, and nothing outside the cache folder changed
(the whole tmp tree is snapshotted with lstat before and after, bytes paths, links not
followed; nova's lock folder, which clean uses by design, is left out).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from novakeeper.cache.executor import Action, Report
from novakeeper.cache.layout import image_hash
from novakeeper.cache.plan import Decision, Plan, Verdict
from novakeeper.cache.policy import PolicyConfig
from novakeeper.errors import NovakeeperError
from novakeeper.passes import Pass, executor_for, plan_pass
from novakeeper.settings import Settings

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
OLD = 30 * 86400
MiB = 1 << 20

Entry = tuple[int, int, int, int, str]


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[bytes, Entry]:
    """Every entry under root, links not followed: (mode, inode, size, mtime_ns, content
    hash or link target). Paths as bytes, so no name is beyond it."""
    skipped = {os.fsencode(p) for p in skip}
    out: dict[bytes, Entry] = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skipped]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if path in skipped:
                continue
            st = os.lstat(path)
            what = ""
            if os.path.islink(path):
                what = os.fsdecode(os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    what = hashlib.sha1(f.read()).hexdigest()
            mtime = 0 if os.path.isdir(path) and path in skipped else st.st_mtime_ns
            out[path] = (st.st_mode, st.st_ino, st.st_size, mtime, what)
    return out


class Node:
    """root/instances/_base, nova's lock folder, and root/outside with innocent files."""

    def __init__(self, root: Path, cache_name: str = "_base") -> None:
        self.root = root
        self.instances = root / "instances"
        self.cache = self.instances / cache_name
        self.cache.mkdir(parents=True)
        (self.instances / "locks").mkdir()
        self.outside = root / "outside"
        self.outside.mkdir()
        self.config = root / "nova.conf"  # for the command line; never /etc/nova
        self.config.write_text("[DEFAULT]\n")
        self.in_use: list[Path] = []
        self._n = 0

    def base(self, name: str | bytes, folder: Path | None = None, age: float = OLD,
             data: bytes = b"base") -> Path:
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder or self.cache),
                                             os.fsencode(name))))
        with open(path, "wb") as f:
            f.write(data)
            f.truncate(MiB)
        os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - age))
        return path

    def folder(self, name: str | bytes | None = None) -> Path:
        if name is None:
            self._n += 1
            name = f"{self._n:08x}-0000-4000-8000-{self._n:012x}"
        path = Path(os.fsdecode(os.path.join(os.fsencode(self.instances), os.fsencode(name))))
        path.mkdir()
        (path / "console.log").touch()  # a finished spawn: nova made it after the disks
        return path

    def disk(self, backing: str | bytes | Path, folder: Path | None = None,
             name: str | bytes = "disk", protects: Path | None = None) -> Path:
        """A qcow2 disk naming `backing` exactly as given (relative names are relative
        to the disk's folder, as qemu reads them)."""
        folder = folder or self.folder()
        path = os.path.join(os.fsencode(folder), os.fsencode(name))
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b",
                        os.fsencode(backing), "-F", "raw", path, "1G"],
                       check=True, capture_output=True, timeout=60, cwd=folder)
        if protects is not None:
            self.in_use.append(protects)
        return Path(os.fsdecode(path))

    def settings(self) -> Settings:
        return Settings(instances_path=os.fspath(self.instances),
                        subdirectory_name=self.cache.name, manager_interval=2400, host="h",
                        policy=PolicyConfig(), touch_in_use=True, config_files=(),
                        state_path=os.environ["OS_NOVAKEEPER__STATE_PATH"],
                        lock_wait_seconds=1.0)

    def clean(self, between: Callable[[Pass], None] | None = None) -> tuple[Plan, Report]:
        """A whole clean; `between` runs after the plan, before the executor."""
        conf = self.settings()
        with plan_pass(conf, write_state=True) as result:
            if between is not None:
                between(result)
            report = executor_for(result, conf).run()
        return result.plan, report

    def guarded_clean(self, between: Callable[[Pass], None] | None = None,
                      cache_real: Path | None = None) -> tuple[Plan, Report]:
        """clean, checking that nothing outside the cache folder changed and that every
        base some disk uses is still there. What `between` changes is the test's doing:
        the tree is snapshotted again after it. A file outside that is a hard link of a
        cache file is that file: its mtime moves when clean marks the file in use."""
        cache = cache_real or self.cache
        skip = (cache, self.instances / "locks")
        before = snapshot(self.root, skip)
        inodes = {p: p.stat().st_ino for p in self.in_use}

        def test_changes(result: Pass) -> None:
            nonlocal before
            if between is not None:
                between(result)
                before = snapshot(self.root, skip)

        plan, report = self.clean(test_changes)
        after = snapshot(self.root, skip)
        shared = {e.inode() for e in os.scandir(cache)} if cache.is_dir() else set()
        changed = {p: (before.get(p), after.get(p)) for p in before.keys() | after.keys()
                   if not same(before.get(p), after.get(p), shared)}
        assert not changed, f"changed outside the cache folder: {changed}"
        for path, ino in inodes.items():
            assert path.exists() and path.stat().st_ino == ino, f"in-use {path} lost"
        assert not report.failed, report.failed
        return plan, report


def same(a: Entry | None, b: Entry | None, shared: set[int]) -> bool:
    if a is None or b is None or a[1] not in shared:
        return a == b
    return a[:3] + a[4:] == b[:3] + b[4:]  # all but the mtime


def decision(plan: Plan, name: str) -> Decision:
    return next(d for d in plan.decisions if d.name == name)


def outcome(report: Report, name: str) -> Action | None:
    return next((o.action for o in report.outcomes if o.name == name), None)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


# -- symbolic links in the cache ---------------------------------------------------------


def test_symlinks_in_the_cache_are_never_followed_or_removed(node: Node) -> None:
    secret = node.base("passwd", folder=node.outside, data=b"root:x:0:0")
    outside_dir = node.outside / "dir"
    outside_dir.mkdir()
    node.base(image_hash("inside-dir"), folder=outside_dir)
    target = node.base(image_hash("target"))  # unused, old: removable by name
    used_via_link = node.base(image_hash("used-via-link"))
    links = {
        image_hash("to-outside-file"): os.fspath(secret),
        image_hash("to-base-inside"): target.name,
        image_hash("to-outside-dir"): os.fspath(outside_dir),
        image_hash("dangling"): "/nonexistent/base",
        image_hash("to-used-base"): used_via_link.name,
        image_hash("to-itself"): image_hash("to-itself"),
    }
    for name, to in links.items():
        os.symlink(to, node.cache / name)
    # a disk names its base through a link in the cache: the link's target is in use
    node.disk(node.cache / image_hash("to-used-base"), protects=used_via_link)
    plan, report = node.guarded_clean()
    for name, to in links.items():
        assert decision(plan, name).verdict is Verdict.UNKNOWN
        assert os.readlink(node.cache / name) == to  # every link kept as it was
    assert decision(plan, used_via_link.name).verdict is Verdict.IN_USE
    assert outcome(report, target.name) is Action.REMOVED  # the file itself, by its name


# -- hard links ---------------------------------------------------------------------------


def test_a_base_hard_linked_outside_frees_nothing_and_the_outside_link_stays(
        node: Node) -> None:
    base = node.base(image_hash("linked-out"), data=b"precious")
    outside = node.outside / "copy-kept-by-an-operator"
    os.link(base, outside)
    conf = node.settings()
    with plan_pass(conf) as result:
        d = decision(result.plan, base.name)
    assert d.removes and d.frees == 0 and "hard-linked" in d.reason
    before = outside.stat()
    _, report = node.clean()
    [o] = [o for o in report.outcomes if o.name == base.name]
    assert o.action is Action.REMOVED and o.freed == 0
    after = outside.stat()
    assert outside.read_bytes()[:8] == b"precious"
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert after.st_nlink == 1


def test_two_cache_names_of_one_in_use_file_both_stay(node: Node) -> None:
    """A disk uses a file through one cache name; another name of the same inode is the
    same file, so it is in use too (removing it would free nothing and hide nothing, but
    it is the operator's, and 'in use' is decided by identity)."""
    base = node.base(image_hash("one"))
    alias = node.cache / image_hash("alias")
    os.link(base, alias)
    node.disk(base, protects=base)
    node.in_use.append(alias)
    plan, _ = node.guarded_clean()
    assert decision(plan, base.name).verdict is Verdict.IN_USE
    assert decision(plan, alias.name).verdict is Verdict.IN_USE


def test_an_in_use_base_hard_linked_outside_keeps_both(node: Node) -> None:
    base = node.base(image_hash("used-and-linked"))
    outside = node.outside / "backup"
    os.link(base, outside)
    node.disk(base, protects=base)
    node.in_use.append(outside)
    plan, _ = node.guarded_clean()
    assert decision(plan, base.name).verdict is Verdict.IN_USE


# -- a cache folder that is itself a symbolic link --------------------------------------


def test_a_cache_folder_that_is_a_symlink_touches_only_its_target(tmp_path: Path) -> None:
    node = Node(tmp_path, cache_name="_real")  # built, then moved away and linked
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "cache"
    old = node.base(image_hash("old"))
    used = node.base(image_hash("used"))
    shutil.move(node.cache, real)
    link = node.instances / "_base"
    os.symlink(os.path.relpath(real, node.instances), link)
    node.cache = link
    # the target's siblings: named like cache files, old, unused
    for sibling in (image_hash("sibling"), image_hash("old")):
        node.base(sibling, folder=elsewhere)
    node.disk(link / used.name, protects=real / used.name)
    before = snapshot(tmp_path, (node.instances / "locks",))
    try:
        plan, report = node.guarded_clean(cache_real=real)
    except NovakeeperError:  # refusing is allowed; touching anything is not
        assert snapshot(tmp_path, (node.instances / "locks",)) == before
        return
    assert outcome(report, old.name) is Action.REMOVED and not (real / old.name).exists()
    assert decision(plan, used.name).verdict is Verdict.IN_USE
    assert (elsewhere / image_hash("old")).exists() and (elsewhere / image_hash("sibling")
                                                         ).exists()


def test_a_cache_folder_link_retargeted_after_the_scan(tmp_path: Path) -> None:
    """Between the plan and the removals the link is pointed at another folder holding
    files of the same names: the executor works on the folder it scanned (it resolved
    the link then), or refuses; the other folder is never touched."""
    node = Node(tmp_path, cache_name="_real")
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.move(node.cache, one)
    two.mkdir()
    link = node.instances / "_base"
    os.symlink(one, link)
    node.cache = link
    name = image_hash("same-name")
    node.base(name, folder=one)
    node.base(name, folder=two, data=b"someone else's")

    def retarget(_: Pass) -> None:
        os.unlink(link)
        os.symlink(two, link)

    try:
        _, report = node.guarded_clean(retarget, cache_real=one)
    except NovakeeperError as exc:
        assert "replaced since the scan" in exc.message
    else:  # removed from the folder it scanned, or kept: its re-check sees `two`
        assert outcome(report, name) in (Action.REMOVED, Action.SKIPPED)
        assert outcome(report, name) is Action.SKIPPED or not (one / name).exists()
    assert (two / name).read_bytes()[:14] == b"someone else's"


# -- backing paths -----------------------------------------------------------------------


def test_backing_paths_with_dot_dot_into_and_out_of_the_cache(node: Node) -> None:
    inside = node.base(image_hash("reached-by-dot-dot"))
    dotted = node.base(image_hash("reached-by-dots-and-slashes"))
    shadow_name = image_hash("shadowed")
    shadow = node.base(shadow_name)  # unused here: the disk below uses the outside one
    outside = node.base(shadow_name, folder=node.outside)
    node.disk(f"../_base/../_base/{inside.name}", protects=inside)
    node.disk(f".//..//_base/./{dotted.name}", protects=dotted)
    node.disk(f"../_base/../../outside/{shadow_name}", protects=outside)
    node.disk(f"../../instances/_base/../../outside/{shadow_name}")
    plan, report = node.guarded_clean()
    assert decision(plan, inside.name).verdict is Verdict.IN_USE
    assert decision(plan, dotted.name).verdict is Verdict.IN_USE
    # same name, another file: nova matches backing files by name, so the cache's own
    # copy is in use by name (and the outside file is never touched)
    assert decision(plan, shadow.name).verdict is Verdict.IN_USE
    assert decision(plan, shadow.name).reason.startswith("in use by name: backing file ")
    assert outcome(report, shadow.name) is None and shadow.exists()
    assert outside.exists()


def test_a_backing_path_into_another_hosts_cache(node: Node) -> None:
    """A disk here uses a file in another host's cache (another instances path): that
    file is never ours to touch; our file of the same name is in use by name, as nova
    counts it (the other path may be this cache after a move)."""
    other = node.root / "instances_other" / "_base"
    other.mkdir(parents=True)
    name = image_hash("shared-image")
    theirs = node.base(name, folder=other, data=b"theirs")
    ours = node.base(name, data=b"ours")
    also_theirs = node.base(image_hash("also-theirs"), folder=other)
    os.link(also_theirs, node.cache / also_theirs.name)  # the same inode in both caches
    node.disk(theirs, protects=theirs)
    node.disk(node.root / "instances_other" / "_base" / also_theirs.name,
              protects=node.cache / also_theirs.name)
    plan, report = node.guarded_clean()
    assert decision(plan, ours.name).verdict is Verdict.IN_USE
    assert outcome(report, ours.name) is None and ours.exists()
    assert decision(plan, also_theirs.name).verdict is Verdict.IN_USE
    assert theirs.read_bytes()[:6] == b"theirs"


# -- names --------------------------------------------------------------------------------

ODD_NAMES = [b"with space", b"new\nline", b"\xff\xfe-not-utf8", b"tab\there", b"-rf",
             b" " + image_hash("leading-space").encode(), image_hash("x").encode() + b"\n",
             b"\xe2\x80\xae" + image_hash("bidi").encode()]


def test_odd_names_in_the_cache_are_kept_and_reported(node: Node) -> None:
    for name in ODD_NAMES:
        node.base(name)
    old = node.base(image_hash("plain-old"))
    plan, report = node.guarded_clean()
    odd = {os.fsdecode(n) for n in ODD_NAMES}
    for d in plan.decisions:
        if d.name in odd:
            assert d.verdict is Verdict.UNKNOWN, d
    assert {os.fsdecode(n) for n in ODD_NAMES} <= set(os.listdir(node.cache))
    assert outcome(report, old.name) is Action.REMOVED


def cli_runs(node: Node, *commands: list[str]) -> None:
    """`python -m novakeeper cache COMMAND` for each command: exit 0, JSON that parses."""
    for command in commands:
        proc = subprocess.run([sys.executable, "-m", "novakeeper", "--config-file",
                               node.config, "--instances-path", node.instances, "cache",
                               *command], capture_output=True, timeout=60)
        assert proc.returncode == 0, (command, proc.stderr)
        if "--json" in command:
            json.loads(proc.stdout)  # valid JSON, whatever the names


def test_odd_names_in_the_cache_through_the_command_line(node: Node) -> None:
    """plan (table and JSON), status, clean and history as an operator runs them: exit
    0, the odd names listed, the plain old base removed."""
    for name in ODD_NAMES:
        node.base(name)
    old = node.base(image_hash("plain-old"))
    before = snapshot(node.root, (node.cache, node.instances / "locks"))
    cli_runs(node, ["plan"], ["plan", "--json"], ["status"], ["status", "--json"],
             ["clean", "--yes"], ["history"], ["history", "--json"])
    assert not old.exists()
    assert {os.fsdecode(n) for n in ODD_NAMES} <= set(os.listdir(node.cache))
    assert snapshot(node.root, (node.cache, node.instances / "locks")) == before


def test_odd_names_of_instance_folders_and_disks_still_protect(node: Node) -> None:
    bases = []
    for n, name in enumerate(ODD_NAMES):
        base = node.base(image_hash(f"odd-{n}"))
        bases.append(base)
        folder = node.folder(b"folder " + name)
        node.disk(base, folder=folder, name=b"disk" if n % 2 else name, protects=base)
    plan, _ = node.guarded_clean()
    for base in bases:
        assert decision(plan, base.name).verdict is Verdict.IN_USE, base


def test_a_node_whose_every_path_is_odd(tmp_path: Path) -> None:
    """instances_path itself with a space, a newline and non-UTF-8 bytes: every path
    the scan, the plan, the journal and the log see is one."""
    root = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"n\xffo de\nx")))
    node = Node(root)
    used = node.base(image_hash("used"))
    old = node.base(image_hash("old"))
    odd = node.base(b"\xfe odd")
    node.disk(used, protects=used)
    node.disk(f"../_base/{used.name}", folder=node.folder(b"\xff\nfolder"))
    plan, report = node.guarded_clean()
    assert decision(plan, used.name).verdict is Verdict.IN_USE
    assert outcome(report, old.name) is Action.REMOVED
    assert odd.exists()
    # and as an operator runs it
    node.base(image_hash("old-too"))
    cli_runs(node, ["clean", "--yes"], ["history", "--json"], ["plan", "--json"])
    assert not (node.cache / image_hash("old-too")).exists() and used.exists()


# -- swapped between the scan and the removal ------------------------------------------


def test_a_base_replaced_by_a_directory_after_the_scan(node: Node) -> None:
    base = node.base(image_hash("becomes-a-dir"))

    def swap(_: Pass) -> None:
        os.unlink(base)
        base.mkdir()
        (base / "precious").write_bytes(b"keep me")

    _, report = node.guarded_clean(swap)
    assert outcome(report, base.name) is Action.SKIPPED
    assert (base / "precious").read_bytes() == b"keep me"


def test_a_base_replaced_by_a_symlink_after_the_scan(node: Node) -> None:
    base = node.base(image_hash("becomes-a-link"))
    victim = node.base("victim", folder=node.outside, data=b"victim")

    def swap(_: Pass) -> None:
        os.unlink(base)
        os.symlink(victim, base)

    _, report = node.guarded_clean(swap)
    assert outcome(report, base.name) is Action.SKIPPED
    assert os.readlink(base) == os.fspath(victim) and victim.read_bytes()[:6] == b"victim"


def test_a_base_replaced_by_another_file_after_the_scan(node: Node) -> None:
    base = node.base(image_hash("replaced"))

    def swap(_: Pass) -> None:
        os.unlink(base)
        node.base(base.name, data=b"new download")

    _, report = node.guarded_clean(swap)
    assert outcome(report, base.name) is Action.SKIPPED
    assert base.read_bytes()[:12] == b"new download"


def test_the_cache_folder_replaced_by_a_symlink_after_the_scan(node: Node) -> None:
    """The whole cache folder renamed away and a link to an outside folder with the same
    names put in its place: nothing in that folder is touched."""
    name = image_hash("in-both")
    node.base(name)
    decoy = node.outside / "decoy"
    decoy.mkdir()
    node.base(name, folder=decoy, data=b"decoy")
    moved = node.root / "moved-cache"

    def swap(_: Pass) -> None:
        os.rename(node.cache, moved)
        os.symlink(decoy, node.cache)

    with pytest.raises(NovakeeperError):
        node.guarded_clean(swap, cache_real=moved)
    assert (decoy / name).read_bytes()[:5] == b"decoy" and (moved / name).exists()
