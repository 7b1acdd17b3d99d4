"""Open files: any process on this host that holds a cache file open is using it.

A running qemu holds every file of its disks' backing chains open as a file descriptor,
from start to exit (it opens the chain at start and keeps the descriptors, read-only for
the backing files), so `/proc/<pid>/fd` is enough: `/proc/<pid>/maps` adds nothing for
qemu, which reads images with pread and never maps them. The same holds for `qemu-img
convert`, `dd`, rsync and nova's own copies while they run.

The walk is cheap: one stat per descriptor (following the fd link to the open file's
inode, never opening anything), matched against the (device, inode) set of the cache's
regular files, and one small read of `/proc/<pid>/comm` only for a process that matched.

Limits, which docs/safety.md should repeat: only processes in novakeeper's own PID
namespace are seen (run it in the host's, as kolla does with `pid: host`); a /proc
mounted with `hidepid` hides other users' processes without any error; without root
(CAP_SYS_PTRACE) other users' descriptors cannot be read and such processes are counted
in `denied`, never silently taken as "uses nothing".
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Literal

from novakeeper.cache.inventory import Inventory
from novakeeper.cache.layout import BaseKind
from novakeeper.usage.base import FileId, Sighting, SourceResult

SOURCE = "open-files"

_NOT_FILES = frozenset({BaseKind.SYMLINK, BaseKind.DIRECTORY, BaseKind.SPECIAL})
_GONE = frozenset({errno.ENOENT, errno.ESRCH})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_Status = Literal["ok", "vanished", "denied"]


def cache_file_ids(inventory: Inventory) -> frozenset[FileId]:
    """(dev, ino) of the cache's regular files: the only identities worth reporting.
    Links, folders and entries that could not be stat'ed have no file of their own."""
    return frozenset(
        (b.dev, b.ino) for b in inventory.bases if b.kind not in _NOT_FILES and b.ino
    )


@dataclass(frozen=True)
class OpenFilesResult(SourceResult):
    """A SourceResult that also says how many processes could not be looked at."""

    vanished: int = 0
    """Processes that exited between the listing of /proc and the look at their
    descriptors: harmless, a process that is gone holds nothing."""
    denied: int = 0
    """Processes (or some of their descriptors) that could not be read: permission denied
    (novakeeper not root) or another error. A count above zero means the answer may be
    incomplete; the caller decides whether to warn or hold."""


class OpenFiles:
    """Usage source "open-files": who holds a cache file open right now."""

    name = SOURCE

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root

    def collect(self, inventory: Inventory) -> OpenFilesResult:
        """`seen` counts the processes whose descriptors were all read."""
        wanted = cache_file_ids(inventory)
        try:
            with os.scandir(self.proc_root) as it:
                pids = [entry.name for entry in it if entry.name.isdigit()]
        except OSError as exc:
            return OpenFilesResult(
                SOURCE, error=f"cannot list processes in {self.proc_root}: "
                f"{exc.strerror or exc}")
        if not pids:
            # a real /proc always lists at least novakeeper itself
            return OpenFilesResult(
                SOURCE, error=f"no processes listed in {self.proc_root}: not a proc file system")
        me = str(os.getpid())  # novakeeper's own reads of cache files are no use
        by_file: dict[FileId, dict[str, Sighting]] = {}
        looked = vanished = denied = 0
        for pid in pids:
            if pid == me:
                continue
            status, hits = self._process(pid, wanted)
            if status == "vanished":
                vanished += 1
            elif status == "denied":
                denied += 1
            else:
                looked += 1
            if hits:
                who = f"pid {pid} ({self._comm(pid)})"
                for file_id in hits:
                    by_file.setdefault(file_id, {})[who] = Sighting(SOURCE, who)
        return OpenFilesResult(
            SOURCE,
            by_file={key: tuple(seen.values()) for key, seen in by_file.items()},
            seen=looked,
            vanished=vanished,
            denied=denied,
        )

    def _process(self, pid: str, wanted: frozenset[FileId]) -> tuple[_Status, set[FileId]]:
        """How the look went, and the wanted files this process holds open."""
        hits: set[FileId] = set()
        try:
            # the fd folder opened once, each descriptor stat'ed relative to it: no walk
            # of /proc/<pid>/fd/ for every descriptor (a qemu holds dozens)
            dir_fd = os.open(f"{self.proc_root}/{pid}/fd", _DIR_FLAGS)
        except OSError as exc:
            return ("vanished" if exc.errno in _GONE else "denied"), hits
        try:
            try:
                fds = os.listdir(dir_fd)
            except OSError as exc:
                return ("vanished" if exc.errno in _GONE else "denied"), hits
            status: _Status = "ok"
            for fd in fds:
                try:
                    st = os.stat(fd, dir_fd=dir_fd)  # follows the link to the open file
                except OSError as exc:
                    # ENOENT, ESRCH: closed since the listing, or the process exited
                    if exc.errno not in _GONE:
                        status = "denied"  # EACCES, or ESTALE on a dead NFS handle: unknown
                    continue
                key = (st.st_dev, st.st_ino)
                if key in wanted:
                    hits.add(key)
            return status, hits
        finally:
            os.close(dir_fd)

    def _comm(self, pid: str) -> str:
        """The process's name, read only for a process that matched."""
        try:
            with open(f"{self.proc_root}/{pid}/comm", "rb") as f:
                raw = f.read(64)
        except OSError:
            return "?"
        return raw.rstrip(b"\n").decode("utf-8", "replace") or "?"
