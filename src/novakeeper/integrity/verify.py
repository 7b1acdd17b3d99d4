"""`cache verify`: is each base still the bytes it was?

A base is written once (nova fetches it to `.part` and renames it) and only ever read
after that: every instance booted from the image reads it through its qcow2 overlay. A
bit flipped on the disk under it corrupts every one of them at once, silently. So each
base's checksum is recorded at its first read with the file's identity and (size,
mtime_ns), and compared at every later read:

* the same file (device, inode) with a different digest is a mismatch. Its size and mtime
  say how: the same ones mean silent corruption (the disk, the controller, the file
  system: nothing wrote to the file); a smaller size means it was truncated; a moved
  mtime means something wrote into a base that nothing should write;
* a read error (EIO) is a mismatch too: the base cannot give its bytes back;
* another inode under the same name is a new download: its first read is its new record;
* when Glance is asked (glance.py: only for images whose ids are known, and only when
  nova stored the image's own bytes), a digest that differs from Glance's is a mismatch
  even on the first read: the copy may have been damaged before novakeeper ever saw it.

A file unchanged since its last good read (same inode, size and mtime_ns) is not read
again unless --force; the service (`verify_some`) re-reads a few files per pass, least
recently verified first, which is what finds bit rot in files nobody changed.

What happens to a mismatch depends on who uses the base. Unused: it is moved, under
nova's lock and after a last re-check, into the quarantine (quarantine.py): never deleted,
and nova fetches a good copy for the next instance that needs it. In use: it stays (moving
it would not repair the instances, whose disks are chained to this inode), and it is
reported loudly: an ERROR log line naming the instances at risk, exit code 12, the JSON
report, and a 'mismatch' row the plan and the metrics read (state.corrupt_in_use).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from novakeeper.cache.executor import open_cache_dir
from novakeeper.cache.inventory import BaseFile, Inventory
from novakeeper.cache.layout import QUARANTINE_NAME, BaseKind, image_hash
from novakeeper.cache.locks import NovaLocks, nova_lock_dir
from novakeeper.cache.plan import Decision, Verdict
from novakeeper.cache.storage import read_registry
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.integrity import quarantine
from novakeeper.integrity import state as istate
from novakeeper.integrity.checksum import (
    Interrupted,
    RateLimiter,
    check_algorithm,
    hash_fd,
    open_for_reading,
)
from novakeeper.integrity.glance import Glance, GlanceError, Reference, head_format, reference
from novakeeper.settings import Settings
from novakeeper.state import pins as pins_mod
from novakeeper.state.db import StateDB

if TYPE_CHECKING:  # the pass drives integrity, not the other way round
    from novakeeper.passes import Pass

LOG = logging.getLogger("novakeeper.cache")

VERIFIABLE_KINDS = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED, BaseKind.SWAP,
                              BaseKind.EPHEMERAL})
"""Finished cache files. Downloads in progress change by design; unknown files are not
nova's; .info files are leftovers."""


class FileStatus(StrEnum):
    OK = "ok"  # read: equal to its record (and to Glance's checksum when compared)
    RECORDED = "recorded"  # read for the first time (or a new file under the name)
    UNCHANGED = "unchanged"  # not read: same inode, size and mtime as at its last good read
    MISMATCH = "mismatch"  # differs from its record or from Glance, or unreadable (EIO)
    CHANGED = "changed"  # modified while it was read: nothing concluded, read next time
    BUSY = "busy"  # nova holds its lock: a fetch or a resize is writing it
    ERROR = "error"  # could not be read (permission denied, gone)
    INTERRUPTED = "interrupted"  # stopped mid-file (the service's SIGTERM)


class Action(StrEnum):
    NONE = "none"
    QUARANTINED = "quarantined"
    KEPT_IN_USE = "kept-in-use"  # instances use it: reported, not moved
    NOT_MOVED = "not-moved"  # unused, but it could not be moved (see detail)


@dataclass
class FileResult:
    name: str
    path: str
    kind: str
    status: FileStatus
    algorithm: str
    digest: str | None = None
    expected: str | None = None
    """The reference it was compared with (record or Glance); for a mismatch, the good one."""
    reference: str | None = None
    """Where `expected` comes from: "record" or "glance"."""
    detail: str = ""
    size: int = 0
    bytes_read: int = 0
    users: tuple[str, ...] = ()
    """Instances at risk (in-use mismatch), or who else holds it."""
    action: Action = Action.NONE
    quarantine_path: str | None = None
    image_id: str | None = None
    glance: str | None = None
    """What came of asking Glance, in words (compared, not comparable and why, failed)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind,
                "status": str(self.status), "algorithm": self.algorithm,
                "digest": self.digest, "expected": self.expected,
                "reference": self.reference, "detail": self.detail, "size": self.size,
                "bytes_read": self.bytes_read, "users": list(self.users),
                "action": str(self.action), "quarantine_path": self.quarantine_path,
                "image_id": self.image_id, "glance": self.glance}


@dataclass
class VerifyReport:
    algorithm: str
    rate_limit: float
    """MiB/s; 0: unlimited."""
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    throttled: float = 0.0
    """Seconds the rate limit made it wait."""
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def _with(self, *statuses: FileStatus) -> list[FileResult]:
        return [r for r in self.results if r.status in statuses]

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.results)

    @property
    def files_read(self) -> int:
        return sum(1 for r in self.results if r.bytes_read or r.status in (
            FileStatus.OK, FileStatus.RECORDED, FileStatus.MISMATCH))

    @property
    def mismatches(self) -> list[FileResult]:
        return self._with(FileStatus.MISMATCH)

    @property
    def quarantined(self) -> list[FileResult]:
        return [r for r in self.results if r.action is Action.QUARANTINED]

    @property
    def corrupt_in_use(self) -> list[FileResult]:
        return [r for r in self.results if r.action is Action.KEPT_IN_USE]

    @property
    def errors(self) -> list[FileResult]:
        return self._with(FileStatus.ERROR)

    def summary(self) -> dict[str, int]:
        counts = {str(s): 0 for s in FileStatus}
        for r in self.results:
            counts[str(r.status)] += 1
        counts["quarantined"] = len(self.quarantined)
        counts["corrupt_in_use"] = len(self.corrupt_in_use)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "rate_limit_mib_s": self.rate_limit,
                "seconds": round(self.seconds, 3), "throttled_seconds": round(self.throttled, 3),
                "bytes_read": self.bytes_read, "files_read": self.files_read,
                "interrupted": self.interrupted, "summary": self.summary(),
                "notes": list(self.notes), "files": [r.to_dict() for r in self.results]}


@dataclass(frozen=True, slots=True)
class Target:
    base: BaseFile
    read: bool
    """False: unchanged since its last good read, not read again."""


FileProgress = Callable[[str, int, int], None]
"""(name, bytes of it done, its size), after each read."""


# -- which files -----------------------------------------------------------------------


def resolve(inventory: Inventory, files: Sequence[str]) -> list[BaseFile]:
    """The cache files named by FILE arguments: names in the cache folder or paths to them.
    Anything else is a one-line NovakeeperError: outside the cache (a path into the trash
    or the quarantine included), missing, not a finished base, unreadable."""
    by_name = {b.name: b for b in inventory.bases}
    out: dict[str, BaseFile] = {}
    for arg in files:
        name = arg.rstrip("/") if arg not in ("/", "") else arg
        if os.sep in name:
            folder = os.path.realpath(os.path.dirname(name) or ".")
            name = os.path.basename(name)
            if folder != inventory.cache_real_path:
                raise NovakeeperError(ExitCode.USAGE, f"{arg}: not in the cache folder "
                                      f"{inventory.cache_path}; verify reads cache files only")
        if name in ("", ".", "..") or name.startswith(".novakeeper-"):
            raise NovakeeperError(ExitCode.USAGE, f"{arg}: not a cache file")
        base = by_name.get(name)
        if base is None:
            raise NovakeeperError(ExitCode.PATH,
                                  f"{arg}: no such file in the cache {inventory.cache_path}")
        if base.kind not in VERIFIABLE_KINDS:
            what = {BaseKind.SYMLINK: "a symbolic link", BaseKind.DIRECTORY: "a directory",
                    BaseKind.PARTIAL: "a download in progress",
                    BaseKind.CONVERTED: "a conversion in progress",
                    BaseKind.INFO: "a leftover .info file",
                    BaseKind.UNKNOWN: "not a name nova gives cache files",
                    BaseKind.SPECIAL: "not a regular file"}.get(base.kind, str(base.kind))
            raise NovakeeperError(ExitCode.USAGE, f"{arg}: {what}, not a base file")
        if not os.access(base.path, os.R_OK, follow_symlinks=False):
            raise NovakeeperError(ExitCode.PERMISSION, f"{base.path}: permission denied")
        out[base.name] = base
    return list(out.values())


def _needs_read(base: BaseFile, records: Mapping[tuple[str, str], istate.ChecksumRecord],
                algo: str, times: Mapping[str, tuple[int, int]]) -> bool:
    rec = records.get((base.name, algo))
    if rec is None or rec.status is istate.Status.MISMATCH or base.name not in times:
        return True
    return not rec.unchanged(base.dev, base.ino, base.size, *times[base.name])


def _times_ns(bases: Iterable[BaseFile]) -> dict[str, tuple[int, int]]:
    """(mtime_ns, ctime_ns) of each base: the scan keeps only a float mtime."""
    out = {}
    for b in bases:
        try:
            st = os.lstat(b.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino, st.st_size) == (b.dev, b.ino, b.size):
            out[b.name] = (st.st_mtime_ns, st.st_ctime_ns)
    return out


# -- the verifier ----------------------------------------------------------------------


class Verifier:
    """Verifies cache files of one pass (its inventory, its plan, its state database).

    `glance`: the lookups to make (None: compare with records only). `image_ids`: Glance
    image ids the operator named; their bases are read even when unchanged, to be compared.
    """

    def __init__(self, settings: Settings, pass_: Pass, *, algorithm: str | None = None,
                 rate_limit: float | None = None, force: bool = False,
                 image_ids: Sequence[str] = (), glance: Glance | None = None,
                 locks: NovaLocks | None = None, limiter: RateLimiter | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.pass_ = pass_
        self.inventory = pass_.inventory
        self.algorithm = check_algorithm(algorithm or settings.verify_algorithm)
        self.rate_limit = settings.verify_rate_limit if rate_limit is None else rate_limit
        self.limiter = limiter if limiter is not None else RateLimiter.mib_per_second(
            self.rate_limit)
        self.force = force
        self.explicit_ids = {image_hash(i.strip()): i.strip() for i in image_ids if i.strip()}
        self.glance = glance
        self.locks = locks or NovaLocks(nova_lock_dir(settings.instances_path),
                                        settings.lock_wait_seconds)
        self.should_stop = should_stop
        self.clock = clock
        self.decisions: dict[str, Decision] = {d.name: d for d in pass_.plan.decisions}
        self.db: StateDB | None = pass_.state
        self.records: dict[tuple[str, str], istate.ChecksumRecord] = {}
        self.known_ids: dict[str, str] = {}
        self._servers_listed = False
        self._glance_down: str | None = None
        self.notes: list[str] = []
        if self.db is not None:
            self.records = istate.load(self.db)
            self.known_ids = istate.image_ids(self.db)
        else:
            self.notes.append("no state database: checksums are neither compared with "
                              "earlier reads nor recorded, and nothing is quarantined")
        for pin in list(settings.pins) + (pins_mod.load(self.db) if self.db else []):
            if pin.kind == "image" and pin.hash != pin.value.strip().lower():
                self.known_ids.setdefault(image_hash(pin.value.strip()), pin.value.strip())
        self.known_ids.update(self.explicit_ids)
        missing = [i for h, i in self.explicit_ids.items()
                   if not any(b.image_hash == h and b.kind is BaseKind.ORIGINAL
                              for b in self.inventory.bases)]
        for image_id in missing:
            self.notes.append(f"--image-id {image_id}: no base of it in the cache "
                              f"(it would be named {image_hash(image_id)})")

    @property
    def writable(self) -> bool:
        return self.db is not None and self.db.writable

    # -- selection

    def select(self, files: Sequence[str] | None = None) -> list[Target]:
        """Targets for `cache verify [FILE...]`: every finished base (or those named), each
        read unless unchanged since its last good read (and not --force)."""
        bases = (resolve(self.inventory, files) if files
                 else [b for b in self.inventory.bases if b.kind in VERIFIABLE_KINDS])
        times = _times_ns(bases)
        explicit = {b.name for b in bases if b.kind is BaseKind.ORIGINAL
                    and b.image_hash in self.explicit_ids}
        return [Target(b, self.force or b.name in explicit
                       or _needs_read(b, self.records, self.algorithm, times))
                for b in bases]

    def select_some(self, limit: int) -> list[Target]:
        """Targets for one service pass: `limit` files, all read. First corrupt files no
        longer in use (to quarantine them), then files never verified or changed since,
        then the least recently verified: over passes, every base is re-read in turn."""
        if limit <= 0:
            return []
        times = _times_ns(b for b in self.inventory.bases if b.kind in VERIFIABLE_KINDS)
        # a base removed since the scan (the pass's clean ran first) is not a target
        bases = [b for b in self.inventory.bases if b.name in times]
        last = istate.last_verified(self.db) if self.db is not None else {}

        def rank(b: BaseFile) -> tuple[int, float, str]:
            rec = self.records.get((b.name, self.algorithm))
            if rec is not None and rec.status is istate.Status.MISMATCH:
                return (0 if not self._in_use(b.name)[0] else 2, rec.verified_at, b.name)
            if _needs_read(b, self.records, self.algorithm, times):
                return (1, last.get(b.name, 0.0), b.name)
            return (2, last.get(b.name, 0.0), b.name)

        return [Target(b, True) for b in sorted(bases, key=rank)[:limit]]

    # -- running

    def run(self, targets: Sequence[Target], progress: FileProgress | None = None
            ) -> VerifyReport:
        started = time.monotonic()
        report = VerifyReport(self.algorithm, self.rate_limit or 0.0, notes=self.notes)
        if self.writable:
            assert self.db is not None
            istate.prune(self.db, (b.name for b in self.inventory.bases))
            self._settle_moves()
        cache_fd = open_cache_dir(self.inventory)
        try:
            for target in targets:
                if not target.read:
                    report.results.append(self._unchanged(target.base))
                    continue
                if self.should_stop is not None and self.should_stop():
                    report.interrupted = True
                    break
                result = self._verify_one(cache_fd, target.base, progress)
                report.results.append(result)
                if result.status is FileStatus.INTERRUPTED:
                    report.interrupted = True
                    break
        finally:
            os.close(cache_fd)
            if self.glance is not None:
                self.glance.close()
        report.seconds = time.monotonic() - started
        report.throttled = self.limiter.slept if self.limiter is not None else 0.0
        return report

    def _unchanged(self, base: BaseFile) -> FileResult:
        rec = self.records[(base.name, self.algorithm)]
        LOG.debug("Base file %s unchanged since its check at %s: not read", base.path,
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.verified_at)))
        return FileResult(base.name, base.path, str(base.kind), FileStatus.UNCHANGED,
                          self.algorithm, rec.value, rec.value, "record",
                          "same inode, size and mtime as at its last good read",
                          base.size)

    def _in_use(self, name: str) -> tuple[bool, tuple[str, ...]]:
        """Whether the plan says something uses (or may use) the file, and who."""
        d = self.decisions.get(name)
        if d is None:  # not in the plan: nothing is known, so it is not ours to move
            return True, ("not in the plan",)
        who = tuple(f"instance {u}" for u in d.users) + d.seen_by
        if d.verdict is Verdict.HELD:
            return True, who or (d.reason,)
        return bool(d.verdict is Verdict.IN_USE or who), who

    def _verify_one(self, cache_fd: int, base: BaseFile, progress: FileProgress | None
                    ) -> FileResult:
        res = FileResult(base.name, base.path, str(base.kind), FileStatus.ERROR,
                         self.algorithm, size=base.size)
        # Nova writes a base whole under its lock (fetch, resized copy): opening it under
        # that lock means we read a finished file. The lock is let go before the read, so
        # a long, rate-limited read never holds up a spawn.
        with self.locks.hold(base.name) as busy:
            if busy is not None:  # busy, or the lock cannot be taken (permission denied)
                res.status = FileStatus.BUSY if busy.startswith("busy") else FileStatus.ERROR
                res.detail = busy
                LOG.log(logging.INFO if res.status is FileStatus.BUSY else logging.WARNING,
                        "Not verifying %s now: %s", base.path, busy)
                return res
            try:
                fd = open_for_reading(base.name, dir_fd=cache_fd)
            except OSError as exc:
                res.detail = _words(exc)
                LOG.log(logging.DEBUG if isinstance(exc, FileNotFoundError) else
                        logging.WARNING, "Cannot verify %s: %s", base.path, res.detail)
                return res
        try:
            return self._hash_and_judge(fd, base, res, progress)
        finally:
            os.close(fd)

    def _hash_and_judge(self, fd: int, base: BaseFile, res: FileResult,
                        progress: FileProgress | None) -> FileResult:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            res.detail = "not a regular file"
            return res
        res.size = before.st_size
        ref = self._glance_reference(fd, base, res)
        algos = [self.algorithm] + ([ref.algo] if ref and ref.algo != self.algorithm else [])

        def step(done: int) -> None:
            if progress is not None:
                progress(base.name, done, before.st_size)

        try:
            digest = hash_fd(fd, algos, self.limiter, step, self.should_stop)
        except Interrupted:
            res.status, res.detail = FileStatus.INTERRUPTED, "stopped before the end"
            return res
        except OSError as exc:
            offset = getattr(exc, "offset", 0)
            res.bytes_read = int(offset or 0)
            if exc.errno == errno.EIO:  # a base that cannot give its bytes back is corrupt
                res.detail = f"read error at byte {offset}: {exc.strerror}"
                return self._mismatch(base, res, before, None)
            res.detail = _words(exc)
            LOG.warning("Cannot verify %s: %s", base.path, res.detail)
            return res
        res.bytes_read = digest.bytes_read
        after = os.fstat(fd)
        if ((after.st_size, after.st_mtime_ns, after.st_ino) !=
                (before.st_size, before.st_mtime_ns, before.st_ino)
                or digest.bytes_read != before.st_size):
            res.status = FileStatus.CHANGED
            res.detail = "modified while it was read: nothing concluded, read again next time"
            LOG.info("Base file %s %s", base.path, res.detail)
            return res
        value = digest.digests[self.algorithm]
        res.digest = value
        now = self.clock()
        rec = self.records.get((base.name, self.algorithm))
        problem: str | None = None
        if rec is not None and rec.same_file(before.st_dev, before.st_ino):
            res.expected, res.reference = rec.value, "record"
            if value != rec.value:
                problem = _how_changed(rec, before)
        if problem is None and ref is not None:
            if digest.digests[ref.algo] != ref.value:
                res.expected, res.reference = ref.value, "glance"
                res.algorithm = ref.algo
                res.digest = digest.digests[ref.algo]
                sizes = ("" if ref.size in (None, before.st_size) else
                         f"; Glance's image is {ref.size} bytes, the base {before.st_size}")
                problem = f"differs from Glance's {ref.algo} of image {ref.image_id}{sizes}"
                res.glance = f"compared with image {ref.image_id}: differs"
            else:
                res.glance = f"compared with image {ref.image_id} ({ref.algo}): equal"
                if res.reference is None and ref.algo == self.algorithm:
                    res.expected, res.reference = ref.value, "glance"
        if problem is not None:
            res.detail = problem
            return self._mismatch(base, res, before, digest.digests)
        new = rec is None or not rec.same_file(before.st_dev, before.st_ino)
        res.status = FileStatus.RECORDED if new else FileStatus.OK
        if new and rec is not None:
            res.detail = "a new file under this name (another inode): recorded afresh"
        elif new:
            res.detail = "first read: recorded"
        if res.expected is None:
            res.expected, res.reference = value, "record"
        source = istate.Source.GLANCE if ref is not None else (
            rec.source if rec is not None and not new else istate.Source.LOCAL)
        self._save([istate.ChecksumRecord(
            base.name, algo, before.st_dev, before.st_ino, before.st_size,
            before.st_mtime_ns, before.st_ctime_ns, hexdigest, now, source, istate.Status.OK)
            for algo, hexdigest in digest.digests.items()])
        LOG.info("Verified base file %s: %s %s%s", base.path, self.algorithm,
                 "recorded" if new else "matches its record",
                 f"; {res.glance}" if res.glance else "",
                 extra={"data": {"event": "verify", "file": base.path,
                                 "status": str(res.status), "algorithm": self.algorithm,
                                 "digest": value, "bytes": digest.bytes_read}})
        return res

    def _save(self, records: list[istate.ChecksumRecord]) -> None:
        if not self.writable:
            return
        assert self.db is not None
        istate.save(self.db, records)
        for r in records:
            self.records[(r.name, r.algo)] = r

    # -- Glance

    def _image_id(self, base: BaseFile) -> str | None:
        if base.kind is not BaseKind.ORIGINAL or base.image_hash is None:
            return None
        image_id = self.known_ids.get(base.image_hash)
        if image_id is None and self.glance is not None and not self._servers_listed \
                and self._glance_down is None:
            self._servers_listed = True
            registry = read_registry(self.inventory.instances_path, self.clock())
            hosts = [self.settings.host, *(u.host for u in registry.active)]
            try:
                learned = self.glance.server_images(hosts)
            except GlanceError as exc:
                self.notes.append(f"Nova API: {exc}: image ids of this host's servers unknown")
                LOG.warning("Verify: Nova API: %s; only known image ids are compared with "
                            "Glance", exc)
                learned = {}
            new = {h: i for h, i in learned.items() if h not in self.known_ids}
            self.known_ids.update(new)
            if new and self.writable:
                assert self.db is not None
                istate.learn_image_ids(self.db, new, "nova-api", self.clock())
            image_id = self.known_ids.get(base.image_hash)
        if image_id is not None and base.image_hash in self.explicit_ids and self.writable:
            assert self.db is not None
            istate.learn_image_ids(self.db, {base.image_hash: image_id}, "--image-id",
                                   self.clock())
        return image_id

    def _glance_reference(self, fd: int, base: BaseFile, res: FileResult) -> Reference | None:
        image_id = self._image_id(base)
        res.image_id = image_id
        if image_id is None or self.glance is None:
            if base.kind is BaseKind.ORIGINAL and self.glance is not None:
                res.glance = "image id unknown: not compared with Glance"
            return None
        if self._glance_down is not None:
            res.glance = f"not asked: {self._glance_down}"
            return None
        try:
            image = self.glance.image(image_id)
        except GlanceError as exc:
            self._glance_down = f"Glance: {exc}"
            self.notes.append(f"{self._glance_down}; bases compared with their records only")
            LOG.warning("Verify: %s; comparing with records only", self._glance_down)
            res.glance = f"not asked: {self._glance_down}"
            return None
        if image is None:
            res.glance = f"image {image_id} is not in Glance (deleted?): not compared"
            return None
        try:
            head = os.pread(fd, 512, 0)
        except OSError:
            head = b""
        ref = reference(image, head_format(head))
        if isinstance(ref, str):
            res.glance = ref
            return None
        return ref

    # -- a mismatch

    def _mismatch(self, base: BaseFile, res: FileResult, st: os.stat_result,
                  digests: Mapping[str, str] | None) -> FileResult:
        res.status = FileStatus.MISMATCH
        in_use, who = self._in_use(base.name)
        now = self.clock()
        self._record_mismatch(base, res, st, digests, who if in_use else (), now)
        if in_use:
            return self._keep_in_use(base, res, who)
        return self._quarantine(base, res, st)

    def _record_mismatch(self, base: BaseFile, res: FileResult, st: os.stat_result,
                         digests: Mapping[str, str] | None, users: tuple[str, ...],
                         now: float) -> None:
        """Keep the good reference; put the bad digest in `observed`."""
        rec = self.records.get((base.name, res.algorithm))
        if rec is not None and not rec.same_file(st.st_dev, st.st_ino):
            rec = None  # the record of an earlier file under this name
        if res.reference == "glance" and res.expected is not None:
            rec = istate.ChecksumRecord(base.name, res.algorithm, st.st_dev, st.st_ino,
                                        st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                        res.expected, now, istate.Source.GLANCE,
                                        istate.Status.MISMATCH)
        if rec is None:  # unreadable at its first read: nothing good to keep
            rec = istate.ChecksumRecord(base.name, res.algorithm, st.st_dev, st.st_ino,
                                        st.st_size, st.st_mtime_ns, st.st_ctime_ns, "", now,
                                        istate.Source.LOCAL, istate.Status.MISMATCH)
        observed = digests.get(res.algorithm) if digests else None
        self._save([istate.ChecksumRecord(
            rec.name, rec.algo, rec.dev, rec.ino, rec.size, rec.mtime_ns, rec.ctime_ns,
            rec.value, now, rec.source, istate.Status.MISMATCH, observed, res.detail, users)])

    def _keep_in_use(self, base: BaseFile, res: FileResult, who: tuple[str, ...]
                     ) -> FileResult:
        res.action, res.users = Action.KEPT_IN_USE, who
        LOG.error("Base file %s is corrupt (%s) and in use, not moved: %s. Their disks "
                  "are chained to it: move those instances off it (rebuild, or migrate "
                  "with a fresh base), then verify again to quarantine it", base.path,
                  res.detail, ", ".join(who),
                  extra={"data": {"event": "corrupt-in-use", "file": base.path,
                                  "detail": res.detail, "instances": list(who),
                                  "expected": res.expected, "observed": res.digest}})
        return res

    def _quarantine(self, base: BaseFile, res: FileResult, st: os.stat_result) -> FileResult:
        res.action = Action.NOT_MOVED
        if not self.writable:
            res.detail += "; not quarantined: the state database is not writable, and " \
                          "every move must be journaled"
            LOG.error("Base file %s is corrupt (%s), unused; %s", base.path, res.detail,
                      "not quarantined: no writable state database")
            return res
        assert self.db is not None
        try:
            cache_fd = open_cache_dir(self.inventory)
        except NovakeeperError as exc:
            res.detail += f"; not quarantined: {exc.message}"
            return res
        try:
            return self._move(cache_fd, base, res, st, self.db)
        finally:
            os.close(cache_fd)

    def _move(self, cache_fd: int, base: BaseFile, res: FileResult, st: os.stat_result,
              db: StateDB) -> FileResult:
        with self.locks.hold(base.name) as busy:
            if busy is not None:
                res.detail += f"; not quarantined now: {busy}"
                LOG.warning("Base file %s is corrupt (%s); %s", base.path, res.detail, busy)
                return res
            why = self._recheck(base, st)
            if why is not None:
                in_use, who = why
                if in_use:
                    self._record_users(base, res, who)
                    return self._keep_in_use(base, res, who)
                res.detail += f"; not quarantined: {who[0]}"
                return res
            try:
                qfd = quarantine.open_quarantine(cache_fd, create=True)
            except OSError as exc:
                res.detail += (f"; not quarantined: quarantine folder "
                               f"{QUARANTINE_NAME}: {exc.strerror}")
                LOG.error("Base file %s is corrupt, unused; %s", base.path, res.detail)
                return res
            assert qfd is not None
            try:
                target = quarantine.free_name(qfd, base.name)
                target_path = os.path.join(self.inventory.cache_path, QUARANTINE_NAME, target)
                entry = istate.begin_move(db, base.name, base.path, target_path, st.st_dev,
                                          st.st_ino, st.st_size, res.detail, self.clock())
                try:
                    quarantine.move_in(cache_fd, qfd, base.name, target)
                except OSError as exc:
                    istate.end_move(db, entry, istate.Moved.FAILED, _words(exc), self.clock())
                    res.detail += f"; quarantine failed: {_words(exc)}"
                    LOG.error("Base file %s is corrupt, unused; %s", base.path, res.detail)
                    return res
                istate.end_move(db, entry, istate.Moved.QUARANTINED, "", self.clock())
            finally:
                os.close(qfd)
        res.action, res.quarantine_path = Action.QUARANTINED, target_path
        for key in [k for k in self.records if k[0] == base.name]:
            del self.records[key]
        with contextlib.suppress(OSError):  # as after a removal: the name is gone
            self.locks.remove(base.name)
        LOG.warning("Quarantined corrupt base file %s -> %s: %s; nothing uses it, nova "
                    "fetches the image again when an instance needs it", base.path,
                    target_path, res.detail,
                    extra={"data": {"event": "quarantine", "file": base.path,
                                    "target": target_path, "detail": res.detail}})
        return res

    def _recheck(self, base: BaseFile, st: os.stat_result
                 ) -> tuple[bool, tuple[str, ...]] | None:
        """Under nova's lock: None if the file may move, else (in use?, why / who)."""
        try:
            inventory = self.pass_.scanner.refresh()
        except NovakeeperError as exc:
            return False, (f"re-check failed: {exc.message}",)
        now = next((b for b in inventory.bases if b.name == base.name), None)
        if now is None:
            return False, ("gone since the read",)
        if (now.dev, now.ino) != (st.st_dev, st.st_ino):
            return False, ("replaced since the read (a new download)",)
        users = inventory.users_of(base.name)
        if users:
            return True, tuple(dict.fromkeys(f"instance {d.instance}" for d in users))
        for problem in inventory.problems:
            if problem.holds(now.kind, now.name):
                return True, (f"held by {problem.code} at {problem.path}",)
        return None

    def _record_users(self, base: BaseFile, res: FileResult, who: tuple[str, ...]) -> None:
        rec = self.records.get((base.name, res.algorithm))
        if rec is not None and self.writable:
            self._save([istate.ChecksumRecord(
                rec.name, rec.algo, rec.dev, rec.ino, rec.size, rec.mtime_ns, rec.ctime_ns,
                rec.value, rec.verified_at, rec.source, rec.status, rec.observed, rec.detail,
                who)])

    def _settle_moves(self) -> None:
        """Rows a crash left 'started': the file is in the quarantine or it is not."""
        assert self.db is not None
        present = {(e.dev, e.ino) for e in quarantine.scan_quarantine(
            self.inventory.cache_path)}
        rows = self.db.conn.execute("SELECT id, dev, ino FROM quarantine WHERE outcome = ?",
                                    (str(istate.Moved.STARTED),)).fetchall()
        for r in rows:
            moved = (r["dev"], r["ino"]) in present
            istate.end_move(self.db, r["id"],
                            istate.Moved.QUARANTINED if moved else istate.Moved.SKIPPED,
                            "settled after an interrupted run", self.clock())


def _how_changed(rec: istate.ChecksumRecord, st: os.stat_result) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.verified_at))
    if st.st_size < rec.size:
        return (f"truncated: {st.st_size} bytes, {rec.size} at its last good read "
                f"({when})")
    if st.st_size > rec.size:
        return f"grew in place: {st.st_size} bytes, {rec.size} at its last good read ({when})"
    if st.st_mtime_ns == rec.mtime_ns and st.st_ctime_ns == rec.ctime_ns:
        return (f"content changed with size, mtime and ctime unchanged since its last good "
                f"read ({when}): silent corruption (disk, controller or file system)")
    if st.st_mtime_ns == rec.mtime_ns:
        return (f"content changed with size and mtime unchanged since its last good read "
                f"({when}), ctime moved: written with its mtime put back, or silent "
                "corruption")
    return (f"content changed in place since its last good read ({when}): something "
            "wrote into the base")


def _words(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "gone since the scan"
    if exc.errno == errno.ELOOP:
        return "a symbolic link: never followed"
    return exc.strerror or str(exc)


# -- entry points ----------------------------------------------------------------------


def glance_for(settings: Settings, image_ids: Sequence[str] = ()) -> Glance | None:
    """Glance is asked when the Nova API is configured (the `nova-api` usage source: its
    credentials are Glance's too) or when image ids were named on the command line."""
    if "nova-api" in settings.usage_sources or any(i.strip() for i in image_ids):
        return Glance(cloud=settings.nova_api_cloud)
    return None


def verify(settings: Settings, pass_: Pass, files: Sequence[str] | None = None, *,
           algorithm: str | None = None, rate_limit: float | None = None,
           force: bool = False, image_ids: Sequence[str] = (),
           progress: FileProgress | None = None,
           on_targets: Callable[[list[Target]], None] | None = None) -> VerifyReport:
    """`cache verify [FILE...]`: the named files, or every finished base."""
    verifier = Verifier(settings, pass_, algorithm=algorithm, rate_limit=rate_limit,
                        force=force, image_ids=image_ids,
                        glance=glance_for(settings, image_ids))
    targets = verifier.select(files)
    if on_targets is not None:
        on_targets(targets)
    return verifier.run(targets, progress)


def verify_some(settings: Settings, pass_: Pass, limit: int | None = None,
                should_stop: Callable[[], bool] | None = None,
                glance: Glance | None = None) -> VerifyReport:
    """What the service calls once per pass, after its plan (and clean): read `limit`
    files (default [novakeeper] verify_files_per_pass) at verify_rate_limit, least recently
    verified first; quarantine the corrupt unused ones, record the corrupt in-use ones.
    `should_stop` is asked between reads: a SIGTERM stops within one read."""
    count = settings.verify_files_per_pass if limit is None else limit
    verifier = Verifier(settings, pass_, force=True, should_stop=should_stop,
                        glance=glance if glance is not None else glance_for(settings))
    return verifier.run(verifier.select_some(count))
