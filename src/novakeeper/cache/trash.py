"""The undo window: removed bases wait in a trash folder inside the cache before the
unlink, so `novakeeper cache restore NAME` can put one back.

The trash is `_base/.novakeeper-trash/`: the same file system as the cache, so moving a
base there is a rename (instant, no copy, same inode: a guest that has it open keeps
reading it). A base in the trash still takes its space; it is counted as freed only when
its grace period (`[novakeeper] trash_grace_seconds`, from the rename, which sets the
file's ctime) has passed and it is really unlinked. Everything works through directory
file descriptors; nothing is followed out of the cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from typing import Any

from novakeeper.cache.layout import TRASH_NAME, BaseKind, classify


@dataclass(frozen=True, slots=True)
class TrashEntry:
    name: str
    path: str
    kind: BaseKind
    size: int
    allocated: int
    trashed_at: float
    """ctime: the rename into the trash is the last change made to it."""
    dev: int
    ino: int
    nlink: int

    @property
    def frees(self) -> int:
        return self.allocated if self.nlink <= 1 else 0

    def purge_at(self, grace: float) -> float:
        return self.trashed_at + grace

    def to_dict(self, grace: float) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": str(self.kind),
                "size": self.size, "allocated": self.allocated,
                "trashed_at": self.trashed_at, "purge_at": self.purge_at(grace)}


def regular_files(cache_path: str, folder_name: str) -> list[tuple[os.DirEntry[str],
                                                                   os.stat_result]]:
    """(entry, lstat) of the regular files in one of novakeeper's own folders inside the
    cache, by name; nothing when the folder is missing or is not a folder (a link is
    never followed). Anything else in there is left alone."""
    folder = os.path.join(cache_path, folder_name)
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return []
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((entry, st))
    out.sort(key=lambda pair: pair[0].name)
    return out


def scan_trash(cache_path: str) -> list[TrashEntry]:
    """Regular files in the trash."""
    return [TrashEntry(e.name, e.path, classify(e.name).kind, st.st_size, st.st_blocks * 512,
                       st.st_ctime, st.st_dev, st.st_ino, st.st_nlink)
            for e, st in regular_files(cache_path, TRASH_NAME)]


def open_trash(cache_fd: int, create: bool) -> int | None:
    """An fd of the trash folder (made if asked); None when there is none. Refuses a
    trash that is a link."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(TRASH_NAME, 0o750, dir_fd=cache_fd)
    try:
        return os.open(TRASH_NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=cache_fd)
    except FileNotFoundError:
        if create:
            raise
        return None


def move_in(cache_fd: int, trash_fd: int, name: str) -> int:
    """Rename `name` from the cache into the trash. An older trashed copy of the same name
    is unlinked first; returns the bytes that unlink freed."""
    freed = 0
    try:
        st = os.lstat(name, dir_fd=trash_fd)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISREG(st.st_mode):
            os.unlink(name, dir_fd=trash_fd)
            freed = st.st_blocks * 512 if st.st_nlink <= 1 else 0
        else:
            raise OSError(errno.EEXIST, f"{TRASH_NAME}/{name} exists and is not a file")
    os.rename(name, name, src_dir_fd=cache_fd, dst_dir_fd=trash_fd)
    return freed


def restore(cache_fd: int, trash_fd: int, name: str) -> None:
    """Put `name` back without ever replacing a file of that name in the cache: link
    (which fails if the name exists) then drop the trash name."""
    os.link(name, name, src_dir_fd=trash_fd, dst_dir_fd=cache_fd, follow_symlinks=False)
    os.unlink(name, dir_fd=trash_fd)

