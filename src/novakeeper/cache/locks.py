"""Locks: nova's own per-base lock, and novakeeper's one-run-per-cache lock.

Nova serialises every use of a cache file on an oslo.concurrency external lock named after
the file: `utils.synchronized(filename, external=True, lock_path=$instances_path/locks)`
with nova's prefix, so the lock file is `$instances_path/locks/nova-<basename>`. It holds it
while it downloads a base (`.part`, then the rename), while it makes a resized copy, while
it creates an instance's qcow2 overlay on a base, and while its own cache manager removes
one. Taking the same lock (the same library, so the same fcntl/lockf byte-range lock,
which NFSv4 and CephFS honour across hosts) before the final re-check means that no nova
operation on the file can be half done while we decide.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from oslo_concurrency import lockutils

from novakeeper.cache import inventory
from novakeeper.cache.layout import RUN_LOCK_NAME, BaseKind, classify
from novakeeper.errors import ExitCode, NovakeeperError

LOG = logging.getLogger("novakeeper.cache")

NOVA_LOCK_PREFIX = "nova-"
LOCKS_FOLDER = "locks"


def nova_lock_dir(instances_path: str) -> str:
    return os.path.join(instances_path, LOCKS_FOLDER)


@dataclass(frozen=True)
class NovaLocks:
    """Nova's lock folder and how long to wait for one lock before calling a file busy."""

    lock_dir: str
    wait_seconds: float = 5.0

    def path(self, name: str) -> str:
        return os.path.join(self.lock_dir, NOVA_LOCK_PREFIX + name.replace(os.sep, "_"))

    @contextmanager
    def hold(self, name: str) -> Iterator[str | None]:
        """Hold nova's lock on cache file `name`; yields None when held, or why not."""
        lock = lockutils.external_lock(name, lock_file_prefix=NOVA_LOCK_PREFIX,
                                       lock_path=self.lock_dir)
        try:
            acquired = lock.acquire(blocking=False)
            if not acquired and self.wait_seconds > 0:
                LOG.info("Waiting up to %g s for nova's lock %s: nova is using %s",
                         self.wait_seconds, self.path(name), name)
                acquired = lock.acquire(blocking=True, timeout=self.wait_seconds)
        except OSError as exc:
            yield f"cannot take nova's lock {self.path(name)}: {exc.strerror or exc}"
            return
        if not acquired:
            yield (f"busy: nova holds its lock {self.path(name)} (waited "
                   f"{self.wait_seconds:g} s); a fetch or a spawn is using it")
            return
        try:
            yield None
        finally:
            lock.release()

    def remove(self, name: str) -> None:
        """After a removal, drop the lock file as nova's manager does; it is recreated by
        whoever needs the lock next."""
        lockutils.remove_external_lock_file(name, lock_file_prefix=NOVA_LOCK_PREFIX,
                                            lock_path=self.lock_dir)


@dataclass(frozen=True, slots=True)
class OrphanLock:
    path: str
    name: str
    age: float


def orphaned_locks(lock_dir: str, cache_names: set[str], now: float,
                   min_age: float) -> list[OrphanLock]:
    """nova-<name> lock files for cache-style names no longer in the cache, untouched for
    min_age: what nova leaves behind when a removal happened elsewhere. Reported only;
    locks for other names (instances, nova's own) are not ours to judge."""
    try:
        entries = list(os.scandir(lock_dir))
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(NOVA_LOCK_PREFIX):
            continue
        name = entry.name[len(NOVA_LOCK_PREFIX):]
        if name in cache_names or classify(name).kind in (BaseKind.UNKNOWN,):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        age = now - st.st_mtime
        if age >= min_age:
            out.append(OrphanLock(entry.path, name, age))
    out.sort(key=lambda o: o.name)
    return out


@contextmanager
def run_lock(instances_path: str, cache_path: str) -> Iterator[None]:
    """One clean at a time per cache, across hosts sharing it: an fcntl lock on a file in
    the cache folder (POSIX locks work over NFSv4). The holder's pid and host are written
    into it for the message the second run prints. The file stays: unlinking a lock file
    lets two runs lock two different inodes."""
    inventory.check_dir(instances_path, "instances path")
    inventory.check_dir(cache_path, "cache folder")
    try:
        dir_fd = os.open(cache_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NovakeeperError(ExitCode.PATH,
                              f"cache folder {cache_path}: {exc.strerror}") from None
    try:
        try:
            fd = os.open(RUN_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=dir_fd)
        except OSError as exc:
            code = ExitCode.PERMISSION if exc.errno in (errno.EACCES, errno.EPERM,
                                                        errno.EROFS) else ExitCode.PATH
            raise NovakeeperError(code, f"cannot create the run lock "
                                  f"{os.path.join(cache_path, RUN_LOCK_NAME)}: "
                                  f"{exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise NovakeeperError(
                ExitCode.BUSY, f"another novakeeper run is cleaning {cache_path} "
                f"({holder}); this one exits without touching anything") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
