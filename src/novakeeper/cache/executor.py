"""The executor: the only code that deletes.

It works through a file descriptor of the cache folder and names relative to it, so a path
outside the folder is never touched and no symlink is followed. Removals go in batches:

1. nova's own lock on every file of the batch (`$instances_path/locks/nova-<name>`,
   bounded wait: busy means kept), held until the batch is done;
2. the journal's "before" rows, one transaction;
3. one incremental rescan of the node, and the usage sources asked again, then every file
   judged again by the plan's own rules (`policy.recheck`): the same regular file,
   untouched since the plan, still removable;
4. right before each unlink, the cheap signs of a spawn begun since the rescan (a new
   entry in `instances_path`, or in `_base` before the first one): any sign sends the
   rest of the batch back to step 3;
5. unlink (or rename into the trash), then the journal's "after" rows, one transaction.

No step makes a base's name vanish and come back: nova 34 looks for an existing base
without any lock and then uses it, so a name that blinks fails the spawn that looked.
After a removal the lock file is dropped, as nova's manager does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from novakeeper.cache.inventory import Inventory, Scanner
from novakeeper.cache.layout import TRASH_NAME
from novakeeper.cache.locks import NovaLocks, nova_lock_dir
from novakeeper.cache.plan import Decision, Plan, Verdict
from novakeeper.cache.policy import Observed, PolicyConfig, recheck
from novakeeper.cache.trash import move_in, open_trash
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.gcpause import cyclic_gc_paused
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


def _exists(fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=fd)
    except OSError:
        return False
    return True


def _same_file(st: os.stat_result, d: Decision) -> bool:
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (d.dev, d.ino)


def _still_planned(fd: int, d: Decision) -> tuple[os.stat_result | None, str]:
    """The file's lstat if it is still the planned regular file, else why not."""
    try:
        st = os.lstat(d.name, dir_fd=fd)
    except OSError as exc:
        return None, ("already gone" if exc.errno == errno.ENOENT
                      else f"cannot stat: {exc.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return None, "no longer a regular file"
    if (st.st_dev, st.st_ino) != (d.dev, d.ino):
        return None, "replaced since the plan"
    return st, ""


Rejudge = Callable[[Inventory, float, Sequence[Decision]], dict[str, str | None]]
"""(fresh inventory, clock, planned removals) -> why each must not go now (None: it may)."""

BATCH_SIZE = 128
"""The smallest batch: removals decided by one rescan, with nova's lock held on each."""
MAX_BATCHES = 4
"""Larger cleans grow their batches so that they need at most this many rescans: a clean
costs a few rescans of the node plus its removals, never disks x removals."""
SPARE_FDS = 256
"""File descriptors kept free beside a batch's locks (the state database, /proc walks)."""


def batch_size(removals: int, smallest: int) -> int:
    """How many removals one rescan decides: at least `smallest`, enough for at most
    MAX_BATCHES batches, and no more locks (one file descriptor each) than the process
    may open; its soft limit is raised towards the hard one when that is needed."""
    wanted = max(smallest, -(-removals // MAX_BATCHES))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted + SPARE_FDS > soft and soft != resource.RLIM_INFINITY:
        raised = wanted + SPARE_FDS if hard == resource.RLIM_INFINITY else min(
            hard, wanted + SPARE_FDS)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft != resource.RLIM_INFINITY:
        wanted = min(wanted, max(1, soft - SPARE_FDS))
    return max(1, wanted)
MAX_RESCANS = 8
"""Rescans of one batch while spawns keep starting; then the rest waits for the next run."""
COARSE_SECONDS = 1.0
"""A folder changed this recently may change again within the same timestamp tick (ext4's
clock is the kernel's coarse one): compare its listing, not only its stat."""


@dataclass(frozen=True, slots=True)
class Signs:
    """What a folder looks like, cheaply: a new entry changes one of these."""

    stat: tuple[int, int, int, int, int]
    """(inode, mtime_ns, ctime_ns, nlink, size): nlink counts sub-folders on ext4/XFS,
    size grows with names on btrfs."""
    names: frozenset[str] | None
    """The listing, taken only when the stat alone cannot be trusted (changed just now)."""

    @staticmethod
    def of(path: str, now: float) -> Signs:
        st = os.stat(path)
        names = None
        if st.st_mtime_ns >= (now - COARSE_SECONDS) * 1e9:
            names = frozenset(os.listdir(path))
        return Signs((st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_size),
                     names)

    def still(self, path: str) -> bool:
        """True when nothing was added or removed since these signs were taken. The stat
        comes last, so it can be the executor's last look before an unlink."""
        return self.listing_same(path) and self.stat_same(path)

    def listing_same(self, path: str) -> bool:
        try:
            return self.names is None or frozenset(os.listdir(path)) == self.names
        except OSError:
            return False

    def stat_same(self, path: str) -> bool:
        """One stat: the last look before an unlink, with nothing in between."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, st.st_size) == self.stat


class Executor:
    def __init__(self, scanner: Scanner, inventory: Inventory, plan: Plan,
                 touch_in_use: bool = True, journal: Journal | None = None,
                 locks: NovaLocks | None = None, trash_grace: float = 0.0,
                 rejudge: Rejudge | None = None, config: PolicyConfig | None = None,
                 batch_size: int = BATCH_SIZE) -> None:
        self.scanner = scanner
        self.inventory = inventory
        self.plan = plan
        self.touch_in_use = touch_in_use
        self.journal = journal
        self.locks = locks if locks is not None else NovaLocks(
            nova_lock_dir(inventory.instances_path))
        self.trash_grace = trash_grace
        self.trash_fd: int | None = None
        if rejudge is None:
            policy = config if config is not None else PolicyConfig()

            def rejudge(inv: Inventory, now: float, ds: Sequence[Decision]
                        ) -> dict[str, str | None]:
                return recheck(inv, policy, now, Observed(), ds)
        self.rejudge = rejudge
        self.batch_size = max(1, batch_size)
        self.should_stop: Callable[[], bool] | None = None
        """Asked before each batch (the service's SIGTERM): stop between batches."""
        self.rescans = 0
        """Rescans made by this run (the cost a benchmark reads)."""
        self._started = time.monotonic()

    def _now(self) -> float:
        """The plan's clock, run on: a replayed plan keeps its own time."""
        return self.plan.now + (time.monotonic() - self._started)

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
            removals = self.plan.removals
            size = batch_size(len(removals), self.batch_size)
            for start in range(0, len(removals), size):
                if self.should_stop is not None and self.should_stop():
                    LOG.info("Stopping between removals: %d of %d done",
                             start, len(removals))
                    break
                report.outcomes.extend(self._batch(fd, removals[start:start + size]))
            # After the removals: touching changes the bases' ctime, which would make every
            # re-check above rescan every folder whose chain reaches a touched base.
            if self.touch_in_use:
                report.touched = self._touch_in_use(fd)
        finally:
            if self.trash_fd is not None:
                os.close(self.trash_fd)
            self.trash_fd = None
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
            if entry is not None:
                self._journal_end([(entry, outcome)])
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

    # -- one batch ----------------------------------------------------------------------

    def _batch(self, fd: int, batch: Sequence[Decision]) -> list[Outcome]:
        done: dict[str, Outcome] = {}

        def skip(d: Decision, why: str) -> None:
            LOG.info("Not removing %s: %s", d.path, why)
            done[d.name] = Outcome(d.name, d.path, Action.SKIPPED, why)

        with contextlib.ExitStack() as held:
            locked: list[Decision] = []
            for d in batch:
                if os.sep in d.name or d.name in (".", ".."):  # only names in the folder
                    skip(d, "not a plain file name")
                    continue
                busy = held.enter_context(self.locks.hold(nova_lock_name(d.name)))
                if busy is not None:
                    skip(d, busy)
                else:
                    locked.append(d)
            # Under nova's locks nothing can fetch these files or create a disk on them.
            entries = self._begin(fd, locked, skip)
            pending = [d for d in locked if d.name not in done]
            for _ in range(MAX_RESCANS):
                if not pending:
                    break
                pending = self._settle(fd, pending, done, skip)
            for d in pending:
                skip(d, f"spawns kept starting during {MAX_RESCANS} re-checks; left for "
                        "the next run")
            self._journal_end([(entries[name], done[name]) for name in entries])
        for d in batch:  # after the locks are released, as nova's manager does
            outcome = done[d.name]
            if outcome.action not in (Action.REMOVED, Action.TRASHED):
                continue
            try:
                lock = nova_lock_name(d.name)
                if lock == d.name or not _exists(fd, lock):  # a live base keeps its lock
                    self.locks.remove(lock)
            except OSError as exc:
                LOG.debug("Failed to remove lock file for %s: %s", d.name, exc)
        return [done[d.name] for d in batch]

    def _begin(self, fd: int, locked: Sequence[Decision],
               skip: Callable[[Decision, str], None]) -> dict[str, int]:
        """The journal's 'before' rows (no record, no removal: the history must show every
        unlink), with what each removal frees now; the row of each file by name."""
        frees: dict[str, int] = {}
        for d in locked:
            st, why = _still_planned(fd, d)
            if st is None:
                skip(d, why)
                continue
            frees[d.name] = st.st_blocks * 512 if st.st_nlink <= 1 else 0
        entries: dict[str, int] = {}
        if self.journal is None or not frees:
            return entries
        todo = [d for d in locked if d.name in frees]
        try:
            ids = self.journal.begin_many([(d, frees[d.name]) for d in todo], time.time())
        except sqlite3.Error as exc:
            for d in todo:
                skip(d, f"journal unavailable: {exc}")
            return entries
        entries.update(zip((d.name for d in todo), ids, strict=True))
        return entries

    def _settle(self, fd: int, pending: list[Decision], done: dict[str, Outcome],
                skip: Callable[[Decision, str], None]) -> list[Decision]:
        """One rescan and judgement of `pending`, then the removals it allows, each right
        after a look at the cheap signs. Returns what a sign sent back for another rescan."""
        now = self._now()
        instances = self.inventory.instances_path
        try:
            before = (Signs.of(instances, time.time()),
                      Signs.of(self.inventory.cache_path, time.time()))
            self.rescans += 1
            inventory = self.scanner.refresh_at(now)
            verdicts = self.rejudge(inventory, now, pending)
        except (NovakeeperError, OSError) as exc:
            message = exc.message if isinstance(exc, NovakeeperError) else str(exc)
            for d in pending:
                skip(d, f"re-check failed: {message}")
            return []
        allowed = []
        for d in pending:
            why = verdicts.get(d.name, "not judged")
            if why is not None:
                skip(d, why)
            else:
                allowed.append(d)
        if allowed and not before[1].still(self.inventory.cache_path):
            return allowed  # a new entry in _base during the rescan: look again
        with cyclic_gc_paused():  # no pause between the last look and the unlink
            return self._remove_allowed(fd, allowed, before[0], skip, done)

    def _remove_allowed(self, fd: int, allowed: list[Decision], signs: Signs,
                        skip: Callable[[Decision, str], None], done: dict[str, Outcome]
                        ) -> list[Decision]:
        instances = self.inventory.instances_path
        for i, d in enumerate(allowed):
            st, why = _still_planned(fd, d)
            if st is None:
                skip(d, why)
                continue
            freed = st.st_blocks * 512 if st.st_nlink <= 1 else 0  # last of a hard-linked pair
            LOG.info("Removing base file: %s", d.path,
                     extra={"data": {"event": "remove", "file": d.path, "kind": str(d.kind),
                                     "verdict": str(d.verdict), "reason": d.reason,
                                     "frees": freed, "trash": self.trash_grace > 0}})
            # The last look, one stat away from the unlink: a spawn makes its instance
            # folder before it looks for its base, so a new folder since the rescan may
            # belong to a spawn that already saw this base.
            if not signs.still(instances):  # its last step is one stat
                LOG.info("A new entry in %s since the re-check: looking again before "
                         "removing %d more", instances, len(allowed) - i)
                return allowed[i:]
            done[d.name] = outcome = self._dispose(fd, d, freed)
            if outcome.action in (Action.REMOVED, Action.TRASHED) and not signs.stat_same(
                    instances):
                # Microseconds after the last look, an instance folder appeared: a spawn
                # that looked for this base in that instant would fail. Never seen in
                # the race tests; said loudly so an operator can tie it to a failed spawn.
                LOG.warning("An entry appeared in %s while %s was being removed: a spawn "
                            "that looked for it in that instant will fetch it again or "
                            "fail", instances, d.path)
                return allowed[i + 1:]
        return []

    def _dispose(self, fd: int, d: Decision, freed: int) -> Outcome:
        """Unlink the file, or rename it into the trash: either way its name is gone for
        good (only `cache restore` brings a trashed one back)."""
        try:
            if self.trash_fd is not None and self.trash_grace > 0:
                older = move_in(fd, self.trash_fd, d.name)
                return Outcome(d.name, d.path, Action.TRASHED, d.reason, older)
            os.unlink(d.name, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return Outcome(d.name, d.path, Action.SKIPPED, "already gone")
            LOG.error("Failed to remove %s, error was %s", d.path, exc)
            return Outcome(d.name, d.path, Action.FAILED, exc.strerror or str(exc))
        return Outcome(d.name, d.path, Action.REMOVED, d.reason, freed)

    def _journal_end(self, rows: Sequence[tuple[int, Outcome]]) -> None:
        if self.journal is None or not rows:
            return
        kinds = {Action.REMOVED: Entry.REMOVED, Action.SKIPPED: Entry.SKIPPED,
                 Action.FAILED: Entry.FAILED, Action.TRASHED: Entry.TRASHED,
                 Action.PURGED: Entry.PURGED}
        ends = [(entry, kinds[o.action], o.freed,
                 "" if o.action in (Action.REMOVED, Action.PURGED) else o.reason)
                for entry, o in rows]
        try:
            self.journal.end_many(ends, time.time())
        except sqlite3.Error as exc:  # the next run settles the rows from its scan
            LOG.warning("Journal: could not complete %d records: %s", len(rows), exc)
