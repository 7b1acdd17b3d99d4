"""What the disk report needs besides the cache pass: the file system as nova reads it,
and the bytes of every file in instance folders that is not a disk. One lstat per such
file, on top of the scan that already listed every folder and read every disk header.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from novakeeper.cache.inventory import (
    FolderKind,
    FolderScan,
    Inventory,
    ProblemCode,
    pending_disks,
)
from novakeeper.errors import ExitCode, NovakeeperError


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
    files: int = 0
    files_free: int = 0

    @property
    def reserved(self) -> int:
        """Blocks only root may fill (f_bfree − f_bavail): neither used nor free."""
        return self.total - self.used - self.free

    @classmethod
    def of(cls, path: str) -> FileSystem:
        try:
            st = os.statvfs(path)
            dev = os.stat(path).st_dev
        except FileNotFoundError:
            raise NovakeeperError(ExitCode.PATH, f"{path} does not exist") from None
        except PermissionError:
            raise NovakeeperError(ExitCode.PERMISSION, f"{path}: permission denied") from None
        except OSError as exc:
            raise NovakeeperError(ExitCode.PATH, f"statvfs {path}: {exc.strerror}") from None
        return cls(path, dev, st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail,
                   st.f_frsize * (st.f_blocks - st.f_bfree), st.f_files, st.f_favail)


class Other:
    """Categories of bytes under instances_path that are neither cache nor instance disk."""

    CONSOLE_LOGS = "console-logs"
    LOGS = "logs"
    DELETED = "deleted-folders"
    RESIZE = "resize-folders"
    OTHER = "other-files"

    ALL = (CONSOLE_LOGS, LOGS, DELETED, RESIZE, OTHER)


@dataclass(frozen=True, slots=True)
class FolderFacts:
    """The non-disk side of one instance folder."""

    other: Mapping[str, int]
    """Category -> allocated bytes of files that are not counted disks."""
    missing: tuple[str, ...] = ()
    """Disks its disk.info announces that do not exist (finished folders only)."""


@dataclass(frozen=True)
class Survey:
    fs: FileSystem
    cache_fs: FileSystem
    folders: Mapping[str, FolderFacts]
    unreadable: Mapping[str, int] = field(default_factory=dict)
    """Path of a disk that could not be read -> its allocated bytes (0 if even lstat failed)."""
    top_level: int = 0
    """Files directly in instances_path (and in its locks/ folder)."""

    @property
    def cache_shares(self) -> bool:
        return self.fs.dev == self.cache_fs.dev


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


def _category(kind: FolderKind, name: str) -> str:
    if kind is FolderKind.DELETED:
        return Other.DELETED
    if kind is FolderKind.RESIZE:
        return Other.RESIZE
    if name.startswith("console.log"):
        return Other.CONSOLE_LOGS
    if name.endswith(".log") or ".log." in name:
        return Other.LOGS
    return Other.OTHER


def folder_facts(folder: FolderScan, disk_names: Iterable[str]) -> FolderFacts:
    """Bytes of every entry that is not a counted disk, by category; a `_del` or
    `_resize` folder counts whole (its disks are leftovers, not a domain's)."""
    counted = set(disk_names) if folder.kind in (FolderKind.INSTANCE,
                                                 FolderKind.LEGACY) else set()
    other: dict[str, int] = {}
    for name in folder.entries:
        if name in counted:
            continue
        cat = _category(folder.kind, name)
        path = os.path.join(folder.path, name)
        size = _allocated(path)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                size += _tree_bytes(path)
        except OSError:
            pass
        other[cat] = other.get(cat, 0) + size
    missing: tuple[str, ...] = ()
    if (folder.kind in (FolderKind.INSTANCE, FolderKind.LEGACY)
            and "console.log" in folder.entries):
        missing = tuple(sorted(n for n in pending_disks(folder) if counted_disk(n)))
    return FolderFacts(other, missing)


def _tree_bytes(path: str) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            total += _allocated(os.path.join(root, name))
    return total


def _top_level(instances_path: str, cache_name: str) -> int:
    total = 0
    try:
        entries = list(os.scandir(instances_path))
    except OSError:
        return 0
    for entry in entries:
        if entry.name == cache_name:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
        elif entry.name == "locks" and stat.S_ISDIR(st.st_mode):
            total += st.st_blocks * 512 + _tree_bytes(entry.path)
    return total


def survey(inventory: Inventory, folders: Mapping[str, FolderScan]) -> Survey:
    """The facts the disk report adds to a cache pass; raises NovakeeperError when the
    instances path cannot be read."""
    fs = FileSystem.of(inventory.instances_path)
    cache_fs = FileSystem.of(inventory.cache_real_path)
    disks_by_folder: dict[str, list[str]] = {}
    for disk in inventory.disks:
        folder, name = os.path.split(disk.path)
        if counted_disk(name):
            disks_by_folder.setdefault(folder, []).append(name)
    unreadable: dict[str, int] = {}
    for problem in inventory.problems:
        if problem.code in (ProblemCode.DISK_UNREADABLE, ProblemCode.DISK_CORRUPT):
            folder, name = os.path.split(problem.path)
            if counted_disk(name):
                unreadable[problem.path] = _allocated(problem.path)
                disks_by_folder.setdefault(folder, []).append(name)
    facts = {path: folder_facts(scan, disks_by_folder.get(path, ()))
             for path, scan in folders.items()}
    cache_name = os.path.basename(inventory.cache_path)
    return Survey(fs, cache_fs, facts, unreadable, _top_level(inventory.instances_path,
                                                                cache_name))
