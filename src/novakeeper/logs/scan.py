"""Finding needles in big log files fast: the engine under `trace` and `diagnose`.

Lines are never parsed one by one. A file is read in chunks of `CHUNK` bytes into one
reused buffer; `bytes.find` (or, for many request ids, one compiled regex) locates hits in
the whole chunk at C speed, and only then is the record around a hit cut out
(`records.record_bounds`) and handed back. The last, possibly unfinished, record of a
chunk is carried over to the next one, so a record is never split (unless it is longer
than a chunk) and never searched twice. Memory is the buffer plus the hits, whatever the
size of the logs.

Big plain files are cut into segments at record starts and, like gzip files (which can
only be read from their beginning), handed to worker processes, one per CPU by default.
A `--since/--until` window is found in plain files by bisection on their timestamps, so
the bytes outside it are not read; a gzip file is read up to the window's end. The same
bisection lets a later pass read only stretches of time (`Scanner.run(windows=...)`, the
hops of `trace --hop-window`): for those, the first full pass's first and last timestamp
of each file rule out whole files without a read, and the bisection probes of a file are
remembered, as consecutive hops ask about nearly the same times.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import multiprocessing
import os
import re
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO

from novakeeper.logs import records
from novakeeper.logs.reader import open_source
from novakeeper.logs.sources import LogFile
from novakeeper.logs.window import ALL_TIMES, Window

CHUNK = 8 << 20  # bytes read at a time; the buffer holds up to two of them
MAX_HIT_BYTES = 256 << 10  # a record longer than this is cut (its matches are kept)
FIND_LIMIT = 2  # up to this many literals: one bytes.find pass each; more: one regex
MEMMEM_LIMIT = 5  # the same with libc's memmem, twice as fast as bytes.find
MEMMEM_MIN = 256 << 10  # memmem for searches over this many bytes; bytes.find below
GZIP_COST = 8  # reading a gzip byte costs about this many plain bytes (zlib inflate)
MIN_SEGMENT = 16 << 20  # plain files are cut into segments no smaller than this
PARALLEL_MIN = 48 << 20  # below this much work, worker processes cost more than they save
WINDOW_SLACK = timedelta(minutes=2)  # lines in a file may be this much out of order
_REGEX_OVERLAP = 4096  # longest match a pattern may have, for giant lines cut mid-way
PROBE = 16 << 10  # bytes read at a bisection probe; also the precision of the bisection

Interval = tuple[datetime, datetime]  # aware UTC, start <= end


@dataclass(frozen=True)
class Needles:
    """What to look for: literal byte strings, and regexes (each match within one line)."""

    literals: tuple[bytes, ...] = ()
    patterns: tuple[bytes, ...] = ()

    @property
    def overlap(self) -> int:
        longest = max((len(x) for x in self.literals), default=0)
        return max(longest, _REGEX_OVERLAP if self.patterns else 0)


@dataclass(frozen=True)
class Task:
    file: int
    path: str
    compressed: bool
    tz: timezone
    start: int = 0  # plain files: byte range; gzip files are read whole
    end: int | None = None
    window: Window = ALL_TIMES
    count_lines: bool = False


@dataclass
class RawHit:
    offset: int  # of the record's first byte in the (uncompressed) file
    data: bytes
    matched: set[bytes] = field(default_factory=set)
    line: int | None = None  # 1-based, when lines were counted


@dataclass
class TaskResult:
    file: int
    start: int
    hits: list[RawHit] = field(default_factory=list)
    problem: str | None = None
    read: int = 0  # bytes of log data looked at
    first: bytes | None = None  # first and last timestamps seen
    last: bytes | None = None


@dataclass
class ScanResult:
    hits: list[tuple[int, RawHit]] = field(default_factory=list)  # (file index, hit)
    problems: dict[int, str] = field(default_factory=dict)
    spans: dict[int, tuple[bytes | None, bytes | None]] = field(default_factory=dict)
    read: int = 0
    seconds: float = 0.0
    tasks: int = 0
    workers: int = 1


_Trie = dict[int, "_Trie"]


def _alternation(words: Sequence[bytes]) -> bytes:
    """A regex matching any of `words`, as a trie, so each position is tried once."""
    trie: _Trie = {}
    for w in words:
        node = trie
        for byte in w:
            node = node.setdefault(byte, {})
        node[-1] = {}

    def emit(node: _Trie) -> bytes:
        alts = [b"" if k == -1 else re.escape(bytes([k])) + emit(v)
                for k, v in sorted(node.items())]
        if len(alts) == 1:
            return alts[0]
        return b"(?:" + b"|".join(alts) + b")"

    return emit(trie)


_MEMMEM: Any = None  # libc's memmem through ctypes once loaded; False: not available


def load_memmem() -> bool:
    """Load libc's memmem (ctypes costs about 10 ms to import, so only for big searches).
    glibc's memmem skips through text with a table of byte pairs, about 0.07 s a GiB for
    a uuid against 0.15 s for bytes.find, whose table (64 entries, by the byte's low 6
    bits) lets the letters and digits of log text stop it at almost every byte."""
    global _MEMMEM
    if _MEMMEM is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None).memmem
            fn.restype = ctypes.c_void_p
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
            _MEMMEM = fn
        except (ImportError, OSError, AttributeError):
            _MEMMEM = False
    return bool(_MEMMEM)


def _memmem_all(buf: bytearray, literal: bytes, hi: int, limit: int,
                found: list[tuple[int, bytes]]) -> None:
    """Like the bytes.find loop in _positions, with memmem. The ctypes array pins the
    buffer (a bytearray cannot be resized while exported) while its address is used."""
    import ctypes

    view = (ctypes.c_char * hi).from_buffer(buf)
    base = ctypes.addressof(view)
    n = len(literal)
    i = 0
    while i < limit:
        hit = _MEMMEM(base + i, hi - i, literal, n)
        if hit is None:
            break
        i = hit - base
        if i >= limit:
            break
        found.append((i, literal))
        i += 1
    del view


@functools.lru_cache(maxsize=8)
def _compiled(needles: Needles, fast: bool = False
              ) -> tuple[re.Pattern[bytes] | None, list[re.Pattern[bytes]]]:
    """One trie regex for many literals with a common prefix (request ids: `req-`), where
    the regex engine skips to the prefix and settles each candidate in a few steps (about
    0.5 s a GiB however many); else one bytes.find pass per literal (0.15 s a GiB each, or
    0.07 with memmem: `fast`), which beats a regex whose every position could start a
    match."""
    lits = sorted(set(needles.literals))
    shared = 0
    if lits:  # sorted: the first and the last share what they all share
        pairs = zip(lits[0], lits[-1], strict=False)
        shared = next((i for i, (a, b) in enumerate(pairs) if a != b),
                      min(len(lits[0]), len(lits[-1])))
    limit = MEMMEM_LIMIT if fast else FIND_LIMIT
    many = re.compile(_alternation(lits)) if len(lits) > limit and shared >= 4 else None
    return many, [re.compile(p) for p in needles.patterns]


def _positions(buf: bytearray, needles: Needles, hi: int, limit: int) -> list[tuple[int, bytes]]:
    """Every (position, matched bytes) in buf[:hi] with position < limit."""
    found: list[tuple[int, bytes]] = []
    fast = bool(_MEMMEM) and hi >= MEMMEM_MIN
    many, patterns = _compiled(needles, fast)
    if many is None:
        for literal in needles.literals:
            if fast and literal:
                _memmem_all(buf, literal, hi, limit, found)
                continue
            i = buf.find(literal, 0, hi)
            while 0 <= i < limit:
                found.append((i, literal))
                i = buf.find(literal, i + 1, hi)
    else:
        for m in many.finditer(buf, 0, hi):
            if m.start() >= limit:
                break
            found.append((m.start(), m.group(0)))
    for rx in patterns:
        for m in rx.finditer(buf, 0, hi):
            if m.start() >= limit:
                break
            found.append((m.start(), rx.pattern))
    found.sort()
    return found


_BUFFER = bytearray()


def _buffer(size: int) -> bytearray:
    """The process's one read buffer, made once: zero-filling 16 MiB for every small file
    would cost more than searching it."""
    global _BUFFER
    if len(_BUFFER) < size:
        _BUFFER = bytearray(size)
    return _BUFFER


def _when(stamp: bytes | None, tz: timezone) -> datetime | None:
    return records.parse_stamp(stamp, tz) if stamp else None


def scan_task(task: Task, needles: Needles) -> TaskResult:
    """Search one file (or one segment of a plain file). Runs in a worker process."""
    result = TaskResult(task.file, task.start)
    try:
        src = open_source(task.path, task.compressed, task.start, task.end)
    except OSError as exc:
        result.problem = "permission denied" if isinstance(exc, PermissionError) else (
            exc.strerror or str(exc))
        return result
    since = task.window.since - WINDOW_SLACK if task.window.since else None
    until = task.window.until + WINDOW_SLACK if task.window.until else None
    cap = 2 * CHUNK
    if task.end is not None:
        # A short range of a plain file (a windowed pass) needs a short buffer: a process
        # that makes a new one pays a page fault for each of its pages (8 ms for 16 MiB).
        cap = min(cap, task.end - task.start + 1)
    buf = _buffer(cap)
    view = memoryview(buf)[:cap]
    fill = 0
    base = task.start  # file offset of buf[0]
    line_no = 1 if task.start == 0 else None  # counted only from a file's start
    eof = False
    try:
        while not eof:
            target = min(cap, fill + CHUNK)
            while fill < target:
                n = src.readinto(view[fill:target])
                if n == 0:
                    eof = True
                    break
                fill += n
            cut = _cut(buf, fill, eof, needles.overlap)
            if cut == 0:
                continue  # one unfinished record so far: read on
            region_first = records.first_stamp(buf, 0, cut)
            region_last = records.last_stamp(buf, 0, cut)
            if result.first is None:
                result.first = region_first
            result.last = region_last or result.last
            skip = False
            if until is not None and (t := _when(region_first, task.tz)) and t > until:
                eof = True  # past the window: the rest of the file is later still
                skip = True
            if since is not None and (t := _when(region_last, task.tz)) and t < since:
                skip = True
            if not skip:
                _collect(buf, cut, fill, needles, base, line_no if task.count_lines else None,
                         result.hits)
            if line_no is not None and task.count_lines:
                line_no += buf.count(b"\n", 0, cut)
            result.read += cut
            carry = fill - cut
            buf[:carry] = buf[cut:fill]
            fill = carry
            base += cut
    finally:
        src.close()
    result.problem = src.problem
    return result


def _cut(buf: bytearray, fill: int, eof: bool, overlap: int) -> int:
    """Records in buf[:cut] are done with now; buf[cut:fill] is carried over to the next
    chunk. The cut falls at the start of the last record, which may not be finished,
    unless that would carry more than a chunk (a giant record or line): then at the last
    line end, or inside a line longer than a chunk. 0: read on before searching."""
    if eof:
        return fill
    complete = buf.rfind(b"\n", 0, fill) + 1
    start = records.last_record_start(buf, 0, complete) if complete else None
    if start is not None and start > 0 and fill - start <= CHUNK:
        return start
    if start == 0 and fill <= CHUNK:
        return 0
    if complete > 0 and fill - complete <= CHUNK:
        return complete
    return max(1, fill - overlap)


def _collect(buf: bytearray, cut: int, fill: int, needles: Needles, base: int,
             line_no: int | None, out: list[RawHit]) -> None:
    """The records around every match that starts in buf[:cut], merged per record."""
    positions = _positions(buf, needles, min(fill, cut + needles.overlap), cut)
    current: RawHit | None = None
    cur_end = -1
    counted_to, lines = 0, line_no
    for pos, matched in positions:
        if current is not None and pos < cur_end:
            current.matched.add(matched)
            continue
        start, end = records.record_bounds(buf, pos, 0, cut)
        if current is not None and start < cur_end:  # inside the last one after all
            current.matched.add(matched)
            continue
        number = None
        if lines is not None:
            lines += buf.count(b"\n", counted_to, start)
            counted_to = start
            number = lines
        data = bytes(buf[start:min(end, start + MAX_HIT_BYTES)])
        current = RawHit(base + start, data, {matched}, number)
        cur_end = end
        out.append(current)


Probes = dict[int, datetime | None]  # a file's bisection probes: offset -> time of the line


def _probe(f: BinaryIO, mid: int, tz: timezone, probes: Probes | None) -> datetime | None:
    """The time of the first line that starts after byte `mid`, None if none is dated
    within PROBE bytes (a giant line, garbage): remembered in `probes` when given."""
    if probes is not None and mid in probes:
        return probes[mid]
    f.seek(mid)
    data = f.read(PROBE)
    nl = data.find(b"\n")
    stamp = records.first_stamp(data, nl + 1, len(data)) if nl >= 0 else None
    t = _when(stamp, tz)
    if probes is not None:
        probes[mid] = t
    return t


def _bisect_time(path: str, size: int, when: datetime, tz: timezone, lower: bool,
                 probes: Probes | None = None) -> int:
    """A byte offset in a plain, time-ordered file: for `lower`, one at or before the first
    line at `when`; otherwise one at or after the last line at `when`. Unreadable or
    undated probes move the bound outwards, never inwards. `probes` remembers the probes
    of earlier bisections of the file: the midpoints depend only on the bounds, so
    bisections for nearby times share their first probes."""
    lo, hi = 0, size
    try:
        with open(path, "rb") as f:
            while hi - lo > PROBE:
                mid = (lo + hi) // 2
                t = _probe(f, mid, tz, probes)
                if t is None:
                    if lower:
                        hi = mid
                    else:
                        lo = mid
                elif t < when:
                    lo = mid
                else:
                    hi = mid
    except OSError:
        return 0 if lower else size
    return lo if lower else min(size, hi + PROBE)


def _align(path: str, pos: int, size: int) -> int:
    """The first record start at or after `pos`: where a segment may begin. Two workers
    asking about the same `pos` get the same answer, so segments meet exactly."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    back = min(pos, 64 << 10)
    try:
        with open(path, "rb") as f:
            f.seek(pos - back)
            data = f.read(back + (1 << 20))
    except OSError:
        return pos
    i = data.rfind(b"\n", 0, back) + 1 if back else 0
    hi = len(data)
    first_line = None
    while i < hi:
        if i >= back:
            if first_line is None:
                first_line = i
            if records.is_record_start(data, i, 0, hi):
                return pos - back + i
        nl = data.find(b"\n", i, hi)
        if nl < 0:
            break
        i = nl + 1
    return pos - back + first_line if first_line is not None else min(size, pos + len(data))


def _base_range(f: LogFile, window: Window, probes: Probes | None = None) -> tuple[int, int]:
    """The bytes of a plain file that can hold records of `window` (empty: none)."""
    lo, hi = 0, f.size
    if window.since is not None:
        lo = _bisect_time(f.path, f.size, window.since - WINDOW_SLACK, f.tz, True, probes)
    if window.until is not None:
        hi = _bisect_time(f.path, f.size, window.until + WINDOW_SLACK, f.tz, False, probes)
    lo = _align(f.path, lo, f.size)
    hi = _align(f.path, hi, f.size) if hi < f.size else f.size
    return lo, hi


def _segments(f: LogFile, lo: int, hi: int, segment: int, window: Window) -> list[Task]:
    """Bytes [lo, hi) of a plain file as tasks of about `segment` bytes (0: one task),
    cut at record starts."""
    if not segment or hi - lo <= segment * 3 // 2:
        return [Task(f.index, f.path, False, f.tz, lo, hi, window)]
    cuts = [lo] + [_align(f.path, p, f.size) for p in range(lo + segment, hi, segment)]
    cuts = [*sorted({c for c in cuts if lo <= c < hi}), hi]
    return [Task(f.index, f.path, False, f.tz, a, b, window)
            for a, b in itertools.pairwise(cuts) if b > a]


def _by_cost(tasks: list[Task], files: Sequence[LogFile]) -> list[Task]:
    """Costliest first, so that the workers finish together."""
    work = {f.index: f.work * GZIP_COST for f in files}
    return sorted(tasks, key=lambda t: -(work[t.file] if t.end is None else t.end - t.start))


def plan_tasks(files: Sequence[LogFile], window: Window, jobs: int,
               count_lines: bool = False) -> list[Task]:
    """Tasks, costliest first: gzip files whole, plain files in segments when parallel,
    small enough that workers finish together."""
    total = sum(f.work * (GZIP_COST if f.compressed else 1) for f in files)
    segment = max(MIN_SEGMENT, total // max(1, jobs * 8)) if jobs > 1 else 0
    tasks: list[Task] = []
    for f in files:
        if f.compressed:
            tasks.append(Task(f.index, f.path, True, f.tz, window=window,
                              count_lines=count_lines))
            continue
        lo, hi = _base_range(f, window)
        if hi <= lo:
            continue
        if count_lines:
            tasks.append(Task(f.index, f.path, False, f.tz, lo, hi, window, count_lines))
        else:
            tasks.extend(_segments(f, lo, hi, segment, window))
    return _by_cost(tasks, files)


def merge_intervals(intervals: Iterable[Interval], limit: int | None = None) -> list[Interval]:
    """Sorted, with overlapping ones joined; then, past `limit`, those across the shortest
    gaps joined too (more time covered, never less), so a pass bisects each file a bounded
    number of times."""
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    if limit is None or len(out) <= max(1, limit):
        return out
    gaps = sorted(range(len(out) - 1), key=lambda i: (out[i + 1][0] - out[i][1], i))
    close = set(gaps[:len(out) - max(1, limit)])  # the gap after out[i] is closed
    joined: list[Interval] = []
    start = out[0][0]
    for i, (_, b) in enumerate(out):
        if i not in close:
            joined.append((start, b))
            if i + 1 < len(out):
                start = out[i + 1][0]
    return joined


Span = tuple[datetime | None, datetime | None]  # a file's first and last time, UTC


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def plan_window_tasks(files: Sequence[LogFile], window: Window, intervals: Sequence[Interval],
                      spans: dict[int, Span], jobs: int,
                      probes: dict[int, Probes] | None = None) -> list[Task]:
    """Tasks that read only the parts of the files within `intervals` (merged, sorted) and
    `window`, widened by WINDOW_SLACK for lines a little out of order. A file whose span
    (its first and last time, from an earlier full pass) misses every interval is not read;
    a plain file's ranges are found by bisection; a gzip file is read from its start up to
    the end of the last interval it meets, searched from the start of the first."""
    tasks: list[Task] = []
    plain: list[tuple[LogFile, list[tuple[int, int]]]] = []
    total = 0
    for f in files:
        first, last = spans.get(f.index, (None, None))
        near = [(a, b) for a, b in intervals
                if (first is None or b + WINDOW_SLACK >= first)
                and (last is None or a - WINDOW_SLACK <= last)]
        if not near:
            continue
        if f.compressed:
            part = Window(max(near[0][0], window.since) if window.since else near[0][0],
                          min(near[-1][1], window.until) if window.until else near[-1][1])
            if part.since is not None and part.until is not None and part.since <= part.until:
                tasks.append(Task(f.index, f.path, True, f.tz, window=part))
                total += f.work * GZIP_COST
            continue
        cache = None if probes is None else probes.setdefault(f.index, {})
        lo, hi = _base_range(f, window, cache)
        ranges = []
        for a, b in near:
            a, b = a - WINDOW_SLACK, b + WINDOW_SLACK
            start = lo if first is None or a <= first else max(lo, _align(
                f.path, _bisect_time(f.path, f.size, a, f.tz, True, cache), f.size))
            end = hi if last is None or b >= last else min(hi, _align(
                f.path, _bisect_time(f.path, f.size, b, f.tz, False, cache), f.size))
            ranges.append((start, end))
        merged = _merge_ranges(ranges)
        total += sum(b - a for a, b in merged)
        plain.append((f, merged))
    segment = max(MIN_SEGMENT, total // max(1, jobs * 8)) if jobs > 1 else 0
    for f, merged in plain:
        for lo, hi in merged:
            tasks.extend(_segments(f, lo, hi, segment, window))
    return _by_cost(tasks, files)


class Scanner:
    """Runs searches over one set of files; the worker processes live as long as it."""

    def __init__(self, files: Sequence[LogFile], window: Window = ALL_TIMES,
                 jobs: int | None = None, count_lines: bool = False,
                 parallel_min: int | None = None) -> None:
        self.files = list(files)
        self._by_index = {f.index: f for f in self.files}
        self.window = window
        work = sum(f.work for f in self.files)
        wanted = jobs if jobs is not None else (os.cpu_count() or 1)
        self._floor = PARALLEL_MIN if parallel_min is None else parallel_min
        self.jobs = max(1, min(wanted, 32)) if work >= self._floor else 1
        self.tasks = plan_tasks(self.files, window, self.jobs, count_lines)
        self.jobs = min(self.jobs, max(1, len(self.tasks)))
        if work >= MEMMEM_MIN * 16:
            load_memmem()  # before the workers fork, which then have it
        self.spans: dict[int, Span] = {}  # from full passes: each file's first and last time
        self._probes: dict[int, Probes] = {}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _results(self, needles: Needles, tasks: list[Task]) -> Iterable[TaskResult]:
        work = sum(self._by_index[t.file].work * GZIP_COST if t.end is None else t.end - t.start
                   for t in tasks)
        if self.jobs == 1 or len(tasks) == 1 or (self._pool is None and work < self._floor):
            # small work is done here, unless workers are running already: they have their
            # read buffers, which a first search here would have to make
            return (scan_task(t, needles) for t in tasks)
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.jobs, mp_context=multiprocessing.get_context("fork"))
        return self._pool.map(scan_task, tasks, [needles] * len(tasks))

    def run(self, needles: Needles, only: Collection[int] | None = None,
            windows: Sequence[Interval] | None = None) -> ScanResult:
        """One pass over the files (or the files whose index is in `only`). With `windows`
        (merged, sorted), only the parts of the files within those stretches of time:
        the files' spans from an earlier full pass rule out whole files."""
        started = time.perf_counter()
        files = self.files if only is None else [f for f in self.files if f.index in only]
        if windows is not None:
            tasks = plan_window_tasks(files, self.window, windows, self.spans, self.jobs,
                                      self._probes)
        else:
            tasks = self.tasks if only is None else [t for t in self.tasks if t.file in only]
        out = ScanResult(tasks=len(tasks), workers=self.jobs)
        if not needles.literals and not needles.patterns:
            return out
        spans: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {}
        for r in self._results(needles, tasks):
            out.read += r.read
            out.hits.extend((r.file, h) for h in r.hits)
            if r.problem and r.file not in out.problems:
                out.problems[r.file] = r.problem
            spans.setdefault(r.file, []).append((r.start, r.first, r.last))
        for index, parts in spans.items():
            parts.sort(key=lambda p: p[0])
            firsts = [p[1] for p in parts if p[1]]
            lasts = [p[2] for p in parts if p[2]]
            out.spans[index] = (firsts[0] if firsts else None, lasts[-1] if lasts else None)
            if windows is None and index not in self.spans:
                tz = self._by_index[index].tz
                self.spans[index] = (_when(out.spans[index][0], tz),
                                     _when(out.spans[index][1], tz))
        out.hits.sort(key=lambda fh: (fh[0], fh[1].offset))
        out.seconds = time.perf_counter() - started
        return out


def activity_around(f: LogFile, when: datetime) -> tuple[datetime | None, datetime | None]:
    """(time of the last line at or before `when`, time of the first line after it) in one
    file: how long a service had been quiet before a failure, and whether it spoke again.
    Plain files start reading just before `when` (bisection); gzip files are read from
    their start, parsing one timestamp per chunk until the chunk that holds `when`."""
    start = 0
    if not f.compressed:
        start = _align(f.path, _bisect_time(f.path, f.size, when, f.tz, lower=True), f.size)
    try:
        src = open_source(f.path, f.compressed, start)
    except OSError:
        return None, None
    before: datetime | None = None
    buf = _buffer(CHUNK)
    view = memoryview(buf)[:CHUNK]
    fill = 0
    try:
        while True:
            n = src.readinto(view[fill:])
            if n == 0 and fill == 0:
                return before, None
            fill += n
            complete = fill if n == 0 else buf.rfind(b"\n", 0, fill) + 1
            if complete == 0:  # a line longer than the buffer: drop it
                fill = 0
                continue
            last = _when(records.last_stamp(buf, 0, complete), f.tz)
            if last is not None and last <= when:
                before = last
            else:
                pos = 0
                while pos < complete:
                    end = buf.find(b"\n", pos, complete)
                    end = complete if end < 0 else end
                    t = _when(records.line_stamp(buf, pos, end), f.tz)
                    if t is not None:
                        if t > when:
                            return before, t
                        before = t
                    pos = end + 1
            carry = fill - complete
            buf[:carry] = buf[complete:fill]
            fill = carry
            if n == 0:
                return before, None
    finally:
        src.close()
