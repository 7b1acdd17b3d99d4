"""The executor: the only code that deletes.

It works through a file descriptor of the cache folder and names relative to it, so a path
outside the folder is never touched and no symlink is followed. For each removal it takes
nova's own lock on the file (`$instances_path/locks/nova-<name>`, bounded wait: busy means
kept), then, under that lock, rescans what changed on the node and re-checks the file:
still the same regular file, untouched since the plan, used by no disk, held by no
problem, no fresh `.part`/`.converted` of it. On any doubt it skips the file and says why.
After a removal it drops the lock file, as nova's manager does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from novakeeper.cache.inventory import Inventory, Problem, Scanner
from novakeeper.cache.layout import TRASH_NAME, BaseKind
from novakeeper.cache.locks import NovaLocks, nova_lock_dir
from novakeeper.cache.plan import Decision, Plan, Verdict
from novakeeper.cache.trash import move_in, open_trash, restore
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.state.journal import Entry, Journal

LOG = logging.getLogger("novakeeper.cache")


class Action(StrEnum):
    REMOVED = "removed"
    TRASHED = "trashed"  # moved into the trash: unlinked when its grace period ends
    PURGED = "purged"  # unlinked from the trash
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    path: str
    action: Action
    reason: str
    freed: int = 0


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    touched: int = 0

    def _with(self, action: Action) -> list[Outcome]:
        return [o for o in self.outcomes if o.action is action]

    @property
    def removed(self) -> list[Outcome]:
        return self._with(Action.REMOVED)

    @property
    def trashed(self) -> list[Outcome]:
        return self._with(Action.TRASHED)

    @property
    def purged(self) -> list[Outcome]:
        return self._with(Action.PURGED)

    @property
    def skipped(self) -> list[Outcome]:
        return self._with(Action.SKIPPED)

    @property
    def failed(self) -> list[Outcome]:
        return self._with(Action.FAILED)

    @property
    def freed(self) -> int:
        return sum(o.freed for o in self.outcomes)


def open_cache_dir(inventory: Inventory) -> int:
    """Open the cache folder the plan was made for, refusing one swapped since the scan."""
    try:
        fd = os.open(inventory.cache_real_path,
                     os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NovakeeperError(
            ExitCode.PATH, f"cache folder {inventory.cache_path}: {exc.strerror}"
        ) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (inventory.cache_dev, inventory.cache_ino):
        os.close(fd)
        raise NovakeeperError(
            ExitCode.PATH, f"cache folder {inventory.cache_path} was replaced since the scan"
        )
    return fd


def nova_lock_name(name: str) -> str:
    """The lock nova takes for this file: a `.part` or `.converted` is written under the
    lock of the base it becomes (fetch_to_raw runs inside fetch_func_sync's lock)."""
    for suffix in (".part", ".converted"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _holder(inventory: Inventory, kind: BaseKind, name: str) -> Problem | None:
    """The first problem that holds this file, if any."""
    return next((p for p in inventory.problems if p.holds(kind, name)), None)


def _exists(fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=fd)
    except OSError:
        return False
    return True


def _same_file(st: os.stat_result, d: Decision) -> bool:
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (d.dev, d.ino)


class Executor:
    def __init__(self, scanner: Scanner, inventory: Inventory, plan: Plan,
                 touch_in_use: bool = True, journal: Journal | None = None,
                 locks: NovaLocks | None = None, fresh_sibling_seconds: float = 3600,
                 trash_grace: float = 0.0) -> None:
        self.scanner = scanner
        self.inventory = inventory
        self.plan = plan
        self.touch_in_use = touch_in_use
        self.journal = journal
        self.locks = locks if locks is not None else NovaLocks(
            nova_lock_dir(inventory.instances_path))
        self.fresh_sibling_seconds = fresh_sibling_seconds
        self.trash_grace = trash_grace
        self.trash_fd: int | None = None
        self.staging_fd: int | None = None
        """The trash folder used only to rename a file aside before its unlink."""
        self.should_stop: Callable[[], bool] | None = None
        """Asked before each removal (the service's SIGTERM): stop between removals."""

    def run(self) -> Report:
        report = Report()
        fd = open_cache_dir(self.inventory)
        try:
            if self.trash_grace > 0 or self.inventory.trash:
                try:
                    self.trash_fd = open_trash(fd, create=self.trash_grace > 0)
                except OSError as exc:  # a link or a file where the trash should be
                    raise NovakeeperError(
                        ExitCode.PATH, f"trash folder {self.inventory.cache_path}/"
                        f"{TRASH_NAME}: {exc.strerror}; nothing removed") from None
            report.outcomes.extend(self._purge_trash())
            for decision in self.plan.removals:
                if self.should_stop is not None and self.should_stop():
                    LOG.info("Stopping between removals: %d of %d done",
                             len(report.outcomes), len(self.plan.removals))
                    break
                report.outcomes.append(self._remove_one(fd, decision))
            # After the removals: touching changes the bases' ctime, which would make every
            # re-check above rescan every folder whose chain reaches a touched base.
            if self.touch_in_use:
                report.touched = self._touch_in_use(fd)
        finally:
            for extra in (self.trash_fd, self.staging_fd):
                if extra is not None:
                    os.close(extra)
            if self.trash_grace <= 0:  # only a staging area: leave no empty folder
                with contextlib.suppress(OSError):
                    os.rmdir(TRASH_NAME, dir_fd=fd)
            self.trash_fd = self.staging_fd = None
            os.close(fd)
        return report

    def _purge_trash(self) -> list[Outcome]:
        """Unlink trashed bases whose grace period has ended (counted as freed now)."""
        out: list[Outcome] = []
        if self.trash_fd is None:
            return out
        for t in self.plan.trash_due():
            try:
                st = os.lstat(t.name, dir_fd=self.trash_fd)
            except OSError:
                continue  # restored or purged by someone else since the scan
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (t.dev, t.ino):
                continue
            freed = st.st_blocks * 512 if st.st_nlink <= 1 else 0
            d = Decision(name=t.name, path=t.path, kind=t.kind, verdict=Verdict.REMOVE,
                         reason=f"trash grace period of {self.trash_grace:g} s ended",
                         age=time.time() - t.trashed_at, min_age=self.trash_grace,
                         size=t.size, allocated=t.allocated, frees=freed, dev=t.dev,
                         ino=t.ino)
            entry = None
            if self.journal is not None:
                try:
                    entry = self.journal.begin(d, freed, time.time())
                except sqlite3.Error as exc:
                    out.append(Outcome(t.name, t.path, Action.SKIPPED,
                                       f"journal unavailable: {exc}"))
                    continue
            LOG.info("Removing base file from the trash: %s", t.path)
            try:
                os.unlink(t.name, dir_fd=self.trash_fd)
            except OSError as exc:
                outcome = Outcome(t.name, t.path, Action.FAILED, exc.strerror or str(exc))
            else:
                outcome = Outcome(t.name, t.path, Action.PURGED, d.reason, freed)
            self._journal_end(entry, outcome)
            out.append(outcome)
        return out

    def _touch_in_use(self, fd: int) -> int:
        """Mark in-use bases as nova does, so their age means 'time since last in use' and a
        nova manager on another host sharing the storage never sees a live base as old."""
        now = time.time()
        touched = 0
        for d in self.plan.decisions:
            if d.verdict is not Verdict.IN_USE:
                continue
            try:
                st = os.lstat(d.name, dir_fd=fd)
                if _same_file(st, d):
                    os.utime(d.name, (st.st_atime, now), dir_fd=fd, follow_symlinks=False)
                    touched += 1
            except OSError as exc:
                LOG.warning("Could not mark %s as in use: %s", d.path, exc.strerror)
        return touched

    def _recheck(self, d: Decision) -> str | None:
        """Why `d` must not be removed now, or None when it still may."""
        inventory = self.scanner.refresh()
        base = next((b for b in inventory.bases if b.name == d.name), None)
        if base is None:
            return "already gone"
        if (base.dev, base.ino) != (d.dev, d.ino):
            return "replaced since the plan"
        if base.mtime != d.mtime:
            return "modified since the plan (touched by nova: in use elsewhere?)"
        users = inventory.users_of(d.name)
        if users:
            return f"now in use by {users[0].path}"
        problem = _holder(inventory, base.kind, base.name)
        return None if problem is None else f"now held by {problem.code} at {problem.path}"

    def _fresh_sibling(self, fd: int, d: Decision) -> str | None:
        """A .part/.converted of this very file touched recently: nova is (re)making it."""
        for suffix in (".part", ".converted"):
            try:
                st = os.lstat(d.name + suffix, dir_fd=fd)
            except OSError:
                continue
            age = time.time() - st.st_mtime
            if age < self.fresh_sibling_seconds:
                return f"{d.name}{suffix} was touched {age:.0f} s ago: a fetch is in progress"
        return None

    def _remove_one(self, fd: int, d: Decision) -> Outcome:
        if os.sep in d.name or d.name in (".", ".."):  # never a path, only a name in the folder
            return Outcome(d.name, d.path, Action.SKIPPED, "not a plain file name")
        with self.locks.hold(nova_lock_name(d.name)) as busy:
            if busy is not None:
                LOG.info("Not removing %s: %s", d.path, busy)
                return Outcome(d.name, d.path, Action.SKIPPED, busy)
            # Under nova's lock nothing can start using the file: check one last time.
            try:
                why = self._recheck(d) or self._fresh_sibling(fd, d)
            except NovakeeperError as exc:
                why = f"re-check failed: {exc.message}"
            if why is not None:
                LOG.info("Not removing %s: %s", d.path, why)
                return Outcome(d.name, d.path, Action.SKIPPED, why)
            outcome = self._unlink(fd, d)
        if outcome.action in (Action.REMOVED, Action.TRASHED):
            try:
                lock = nova_lock_name(d.name)
                if lock == d.name or not _exists(fd, lock):  # a live base keeps its lock
                    self.locks.remove(lock)
            except OSError as exc:
                LOG.debug("Failed to remove lock file for %s: %s", d.name, exc)
        return outcome

    def _unlink(self, fd: int, d: Decision) -> Outcome:
        try:
            st = os.lstat(d.name, dir_fd=fd)
        except OSError as exc:
            return Outcome(d.name, d.path, Action.SKIPPED, f"cannot stat: {exc.strerror}")
        if not _same_file(st, d):
            return Outcome(d.name, d.path, Action.SKIPPED, "no longer the planned regular file")
        freed = st.st_blocks * 512 if st.st_nlink <= 1 else 0
        entry = None
        if self.journal is not None:
            try:  # no record, no removal: the history must show every unlink
                entry = self.journal.begin(d, freed, time.time())
            except sqlite3.Error as exc:
                return Outcome(d.name, d.path, Action.SKIPPED, f"journal unavailable: {exc}")
        LOG.info("Removing base file: %s", d.path,
                 extra={"data": {"event": "remove", "file": d.path, "kind": str(d.kind),
                                 "verdict": str(d.verdict), "reason": d.reason,
                                 "frees": freed, "trash": self.trash_grace > 0}})
        outcome = self._dispose(fd, d, freed)
        self._journal_end(entry, outcome)
        return outcome

    def _staging(self, fd: int) -> int:
        if self.trash_fd is not None:
            return self.trash_fd
        if self.staging_fd is None:
            self.staging_fd = open_trash(fd, create=True)
            assert self.staging_fd is not None
        return self.staging_fd

    def _dispose(self, fd: int, d: Decision, freed: int) -> Outcome:
        """Rename the file aside, look once more, then unlink it (or leave it in the trash).

        Nova 34's Qcow2.create_image checks `os.path.exists(base)` without the lock and, if
        the base is there, only takes the lock later to create the disk on it. A spawn
        that looked between our last check and the removal would lose its base. After the
        rename it can no longer see the file (it will fetch it again), and a spawn that
        looked before the rename has its instance folder by then: the rescan shows it as a
        spawning hold (or a chain that now misses this name), and the file goes back."""
        try:
            staging = self._staging(fd)
            older = move_in(fd, staging, d.name)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return Outcome(d.name, d.path, Action.SKIPPED, "already gone")
            LOG.error("Failed to remove %s, error was %s", d.path, exc)
            return Outcome(d.name, d.path, Action.FAILED, exc.strerror or str(exc))
        try:
            why = self._held_now(d)
        except NovakeeperError as exc:
            why = f"re-check failed: {exc.message}"
        if why is not None:
            try:
                restore(fd, staging, d.name)
            except OSError as exc:  # nobody can create the name while we hold nova's lock
                LOG.error("Could not put %s back from %s: %s", d.path, TRASH_NAME, exc)
                return Outcome(d.name, d.path, Action.FAILED,
                               f"{why}; putting it back failed: {exc.strerror}")
            LOG.info("Put back %s: %s", d.path, why)
            return Outcome(d.name, d.path, Action.SKIPPED, f"put back: {why}", older)
        if self.trash_grace > 0:
            return Outcome(d.name, d.path, Action.TRASHED, d.reason, older)
        try:
            os.unlink(d.name, dir_fd=staging)
        except OSError as exc:
            LOG.error("Failed to remove %s, error was %s", d.path, exc)
            return Outcome(d.name, d.path, Action.FAILED, exc.strerror or str(exc))
        return Outcome(d.name, d.path, Action.REMOVED, d.reason, freed + older)

    def _held_now(self, d: Decision) -> str | None:
        """With the file renamed aside: does anything on the node now hold it?"""
        problem = _holder(self.scanner.refresh(), d.kind, d.name)
        if problem is None:
            return None
        return f"{problem.code} at {problem.path} appeared during the removal"

    def _journal_end(self, entry: int | None, outcome: Outcome) -> None:
        if self.journal is None or entry is None:
            return
        kind = {Action.REMOVED: Entry.REMOVED, Action.SKIPPED: Entry.SKIPPED,
                Action.FAILED: Entry.FAILED, Action.TRASHED: Entry.TRASHED,
                Action.PURGED: Entry.PURGED}[outcome.action]
        detail = "" if outcome.action in (Action.REMOVED, Action.PURGED) else outcome.reason
        try:
            self.journal.end(entry, kind, outcome.freed, detail, time.time())
        except sqlite3.Error as exc:  # the next run settles the row from its scan
            LOG.warning("Journal: could not complete the record of %s: %s", outcome.path, exc)
