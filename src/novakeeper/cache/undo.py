"""`novakeeper cache restore`: the way back out of the trash."""

from __future__ import annotations

import os

from novakeeper.cache.layout import TRASH_NAME
from novakeeper.cache.locks import NovaLocks
from novakeeper.cache.trash import TrashEntry, open_trash, restore, scan_trash
from novakeeper.errors import ExitCode, NovakeeperError


def restore_one(cache_path: str, name: str, locks: NovaLocks) -> TrashEntry:
    """`cache restore NAME`: under nova's lock on NAME (a fetch of the same image may be
    about to create it), put the trashed file back, never over an existing one."""
    if not name or name in (".", "..") or "/" in name:
        raise NovakeeperError(ExitCode.USAGE, f"{name!r} is not a cache file name")
    entry = next((e for e in scan_trash(cache_path) if e.name == name), None)
    if entry is None:
        raise NovakeeperError(ExitCode.PATH, f"{name} is not in the trash "
                              f"({os.path.join(cache_path, TRASH_NAME)})")
    cache_fd = os.open(cache_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        trash_fd = open_trash(cache_fd, create=False)
        if trash_fd is None:
            raise NovakeeperError(ExitCode.PATH, f"{name} is not in the trash")
        try:
            with locks.hold(name) as busy:
                if busy is not None:
                    raise NovakeeperError(ExitCode.BUSY, f"cannot restore {name}: {busy}")
                try:
                    restore(cache_fd, trash_fd, name)
                except FileExistsError:
                    raise NovakeeperError(
                        ExitCode.PATH, f"cannot restore {name}: the cache has a file of "
                        "that name again (nova fetched it anew); the trashed copy stays "
                        "until its grace period ends") from None
                except OSError as exc:
                    raise NovakeeperError(ExitCode.PATH, f"cannot restore {name}: "
                                          f"{exc.strerror}") from None
        finally:
            os.close(trash_fd)
    finally:
        os.close(cache_fd)
    return entry
