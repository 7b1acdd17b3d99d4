"""What the disk report needs besides the cache pass: the file system as nova reads it,
and the bytes of every file in instance folders that is not a disk. One lstat per such
file, on top of the scan that already listed every folder and read every disk header.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from novakeeper.cache.inventory import (
    FolderKind,
    FolderScan,
    Inventory,
    Problem,
    ProblemCode,
    check_dir,
)
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.images.probe import ProbeError, ProbeErrorKind, probe
from novakeeper.usage.libvirt import Domain


@dataclass(frozen=True, slots=True)
class FileSystem:
    """statvfs of one path, in nova's terms (`libvirt_utils.get_fs_info`)."""

    path: str
    dev: int
    total: int
    """f_frsize × f_blocks."""
    free: int
    """f_frsize × f_bavail: what nova calls free (root's reserve excluded)."""
    used: int
    """f_frsize × (f_blocks − f_bfree)."""

    @property
    def reserved(self) -> int:
        """Blocks only root may fill (f_bfree − f_bavail): neither used nor free."""
        return self.total - self.used - self.free

    @classmethod
    def of(cls, path: str, what: str) -> FileSystem:
        """Raises NovakeeperError (one line) when `path` is missing or unreadable."""
        dev = check_dir(path, what).st_dev
        try:
            st = os.statvfs(path)
        except OSError as exc:
            raise NovakeeperError(ExitCode.PATH, f"statvfs {path}: {exc.strerror}") from None
        return cls(path, dev, st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail,
                   st.f_frsize * (st.f_blocks - st.f_bfree))


class Other:
    """Categories of bytes under instances_path that are neither cache nor instance disk."""

    CONSOLE_LOGS = "console-logs"
    LOGS = "logs"
    DELETED = "deleted-folders"
    RESIZE = "resize-folders"
    OTHER = "other-files"

    ALL = (CONSOLE_LOGS, LOGS, DELETED, RESIZE, OTHER)



@dataclass(frozen=True, slots=True)
class DiskFacts:
    """A disk read outside the scan (a domain's disk elsewhere)."""

    format: str
    virtual_size: int
    size: int
    allocated: int


def disk_facts(path: str) -> DiskFacts | str | None:
    """What nova's accounting needs of one disk; a reason when it cannot be read, None
    when it does not exist."""
    try:
        info = probe(path)
    except ProbeError as exc:
        return None if exc.kind is ProbeErrorKind.MISSING else exc.detail
    except ValueError:
        return "unusable path"
    return DiskFacts(str(info.format), info.virtual_size, info.size, info.allocated)


Counted = tuple[list[str], dict[str, Problem]]
"""(names of the disks nova would attach, those of them unreadable: name -> problem)."""


@dataclass(frozen=True)
class Survey:
    fs: FileSystem
    cache_fs: FileSystem
    other: Mapping[str, int]
    """Category (Other.ALL) -> allocated bytes of files that are not counted disks, the
    files directly in instances_path and in its locks/ folder included."""
    unreadable: Mapping[str, int] = field(default_factory=dict)
    """Path of a disk that could not be read -> its allocated bytes (0 if even lstat failed)."""
    counted: Mapping[str, Counted] = field(default_factory=dict)
    """Instance folder -> its disks nova would attach (`counted_in`)."""
    domains: tuple[Domain, ...] | None = None
    """libvirt's domains (the libvirt usage source), None when not known."""
    outside: Mapping[str, DiskFacts | str | None] = field(default_factory=dict)
    """A domain's file disk that no instance folder holds -> its facts, why it could not
    be read, or None when it does not exist."""


def counted_disk(name: str) -> bool:
    """The file names nova gives the disks it attaches to a domain (root, ephemeral,
    swap, config drive, rescue): `disk` and `disk.*` (disk.info is not a disk)."""
    return (name == "disk" or name.startswith("disk.")) and name != "disk.info"


def _allocated(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_blocks * 512


def _category(name: str) -> str:
    """Of a file in an instance folder (or another folder) that is not a disk."""
    if name.startswith("console.log"):
        return Other.CONSOLE_LOGS
    if name.endswith(".log") or ".log." in name:
        return Other.LOGS
    return Other.OTHER


UNREADABLE = (ProblemCode.DISK_UNREADABLE, ProblemCode.DISK_CORRUPT)
INSTANCE_KINDS = (FolderKind.INSTANCE, FolderKind.LEGACY)


def counted_in(folder: FolderScan) -> Counted:
    """The folder's disks nova would attach (names), and those of them that could not be
    read (name -> the problem); none for `_del`, `_resize` and other folders."""
    if folder.kind not in INSTANCE_KINDS:
        return [], {}
    cut = len(folder.path) + 1
    names = [n for n in (d.path[cut:] for d in folder.disks) if counted_disk(n)]
    bad = {p.path[cut:]: p for p in folder.problems
           if p.code in UNREADABLE and counted_disk(p.path[cut:])}
    return names, bad


def folder_facts(folder: FolderScan, skip: Container[str], other: dict[str, int]) -> None:
    """Adds the bytes of every entry that is not a counted disk (`skip`) to `other`, by
    category (a `_del` or `_resize` folder counts whole: its disks are leftovers, not a
    domain's)."""
    whole = {FolderKind.DELETED: Other.DELETED,
             FolderKind.RESIZE: Other.RESIZE}.get(folder.kind)
    prefix = folder.path + "/"
    for name in folder.entries:
        if name in skip:
            continue
        path = prefix + name
        try:
            st = os.lstat(path)
        except OSError:
            continue  # gone since the scan
        size = st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            size += _tree_bytes(path)
        other[whole or _category(name)] += size


def _tree_bytes(path: str) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            total += _allocated(os.path.join(root, name))
    return total


def _top_level(instances_path: str) -> int:
    """Files directly in instances_path, and nova's locks/ folder. The folders were
    scanned: their type comes from the listing (d_type), with no stat each."""
    total = 0
    try:
        entries = list(os.scandir(instances_path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            elif entry.name == "locks" and entry.is_dir(follow_symlinks=False):
                total += _allocated(entry.path) + _tree_bytes(entry.path)
        except OSError:
            continue
    return total


def survey(inventory: Inventory, folders: Mapping[str, FolderScan],
           domains: tuple[Domain, ...] | None = None) -> Survey:
    """The facts the disk report adds to a cache pass; raises NovakeeperError when the
    instances path cannot be read. With libvirt's domains, their file disks that no
    folder's scan read are read here."""
    fs = FileSystem.of(inventory.instances_path, "instances path")
    cache_fs = FileSystem.of(inventory.cache_real_path, "cache folder")
    other = dict.fromkeys(Other.ALL, 0)
    unreadable: dict[str, int] = {}
    counted: dict[str, Counted] = {}
    for path, scan in folders.items():
        names, bad = found = counted_in(scan)
        if names or bad:
            counted[path] = found
            for problem in bad.values():
                unreadable[problem.path] = _allocated(problem.path)
            folder_facts(scan, {*names, *bad}, other)
        else:
            folder_facts(scan, (), other)
    other[Other.OTHER] += _top_level(inventory.instances_path)
    outside: dict[str, DiskFacts | str | None] = {}
    if domains is not None:
        scanned = {d.path for scan in folders.values() for d in scan.disks}
        scanned.update(unreadable)
        for dom in domains:
            for disk in dom.disks:
                if (disk.kind == "file" and disk.path and disk.path not in scanned
                        and disk.path not in outside):
                    outside[disk.path] = disk_facts(disk.path)
    return Survey(fs, cache_fs, other, unreadable, counted, domains, outside)
