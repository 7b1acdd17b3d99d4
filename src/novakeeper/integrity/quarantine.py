"""The quarantine: where `cache verify` moves a corrupt base nobody uses. Never deleted.

`_base/.novakeeper-quarantine/` lies inside the cache, on its file system: moving a base
there is a rename (instant, same inode, nothing copied), and a dot name that nova's own
cache manager and novakeeper's scan both pass over. Once the base is out of the cache,
the next instance that needs the image makes nova fetch it again from Glance, which is
the repair. The corrupt copy stays for the operator to examine (or to hand to the
storage vendor) and to delete by hand: nothing in novakeeper ever unlinks it.

As for the trash, everything works through directory file descriptors, refusing links.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from novakeeper.cache.layout import QUARANTINE_NAME
from novakeeper.cache.trash import regular_files


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    name: str
    path: str
    size: int
    allocated: int
    quarantined_at: float
    """ctime: the rename into the quarantine is the last change made to it."""
    dev: int
    ino: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "size": self.size,
                "allocated": self.allocated, "quarantined_at": self.quarantined_at}


def scan_quarantine(cache_path: str) -> list[QuarantineEntry]:
    """Regular files in the quarantine (for status, metrics and the operator)."""
    return [QuarantineEntry(e.name, e.path, st.st_size, st.st_blocks * 512, st.st_ctime,
                            st.st_dev, st.st_ino)
            for e, st in regular_files(cache_path, QUARANTINE_NAME)]


def open_quarantine(cache_fd: int, create: bool) -> int | None:
    """An fd of the quarantine folder (made, mode 0750, if asked); None when there is none.
    A link or a file where the folder should be is refused (OSError)."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(QUARANTINE_NAME, 0o750, dir_fd=cache_fd)
    try:
        return os.open(QUARANTINE_NAME,
                       os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=cache_fd)
    except FileNotFoundError:
        if create:
            raise
        return None


def free_name(quarantine_fd: int, name: str) -> str:
    """`name`, or `name.1`, `name.2`...: a second corrupt copy of the same image (fetched
    again, corrupted again) must not replace the first, which is evidence."""
    candidate, n = name, 0
    while True:
        try:
            os.lstat(candidate, dir_fd=quarantine_fd)
        except FileNotFoundError:
            return candidate
        n += 1
        candidate = f"{name}.{n}"


def move_in(cache_fd: int, quarantine_fd: int, name: str, target: str) -> None:
    """Rename cache file `name` to `target` in the quarantine. The caller holds nova's lock
    on `name` and chose `target` with free_name under it."""
    os.rename(name, target, src_dir_fd=cache_fd, dst_dir_fd=quarantine_fd)
