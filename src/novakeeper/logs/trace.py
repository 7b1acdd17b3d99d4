"""`novakeeper trace ID`: the field's procedure, done for the operator.

The records that mention ID (an instance, volume, image or port uuid, or a request id)
are hop 0; the request ids they carry (their context, and ids other services returned,
written in their messages) are followed: the records holding them are hop 1, the new ids
on those are followed in turn, up to `depth` hops. That is a breadth-first search over
records and request ids; the hop of a record is its distance from ID, however the search
happened to reach it.

Only ID itself is searched in every byte: the first pass reads all the files, as grep
would. A request is handled within a bounded time, so the records of the request ids are
looked for near the records already found: each later pass (one per hop) reads only the
parts of each file within `hop_window` (6 hours by default) of a record found so far,
whatever its hop; a file none of whose times is that near is not read at all. A request
whose records are all more than `hop_window` away from every record found before it is
searched is missed; `hop_window` None (`--hop-window 0`) searches whole files, exactly. A
record without a timestamp among those found makes that pass read whole files.

Without the window every id within the depth is searched in every file, and what is chosen
is the order. The files are in three tiers: the current plain logs, the rotated
plain ones (`.log.1`), the gzip ones (zlib inflate makes a pass over them several times
dearer). Each pass searches all its ids together, in the cheapest tier that still has ids
to search: the current logs are searched to a fixed point first (one pass per hop), then
the rotated and the gzip files are read once each for every id found so far. Only if they
reveal ids of their own (a request logged only in rotated files) is there another round.
A recent failure costs depth + 1 passes over the current logs and one over the rest.

The records are merged into one timeline (UTC), and the summary and the gap findings are
worked out from it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from novakeeper.logs import findings as findings_mod
from novakeeper.logs import records as records_mod
from novakeeper.logs.findings import Activity, Finding, TraceFacts
from novakeeper.logs.records import Record
from novakeeper.logs.scan import (
    Interval,
    Needles,
    Scanner,
    ScanResult,
    activity_around,
    merge_intervals,
)
from novakeeper.logs.sources import PROJECT_SERVICES, LogFile, is_rotated, service_of
from novakeeper.logs.window import ALL_TIMES, Window

MAX_RECORDS = 200_000  # beyond this the trace stops collecting (and says so)
MAX_IDS = 5_000  # request ids followed at most
HOP_WINDOW = timedelta(hours=6)  # default reach of a hop around the records found so far
MAX_WINDOWS = 64  # stretches of time a windowed pass reads, at most (nearest ones joined)
_EPOCH = datetime.min.replace(tzinfo=None)


@dataclass
class Traced:
    record: Record
    file: LogFile
    hop: int  # distance from ID: 0 mentions it; n holds a request id of a hop n-1 record
    matched: list[str]
    ids: frozenset[str] = frozenset()  # request ids in the record (and ID, if it is in it)
    service: str = ""  # the file's, or the logger's in a file of several services
    label: str = ""


@dataclass
class RequestInfo:
    id: str
    hop: int  # its distance from ID: 1 for the ids on records that mention ID
    first_seen: datetime | None
    seen_in: str  # label of the component whose record revealed it
    records: int = 0
    followed: bool = True  # False: beyond --depth, seen but not searched


@dataclass
class Pass:
    number: int
    files: str  # "all" or "window" (--hop-window), or the tier: "current", "rotated", "gzip"
    searched: int  # ids searched
    found: int  # new records
    read: int  # bytes looked at
    seconds: float


@dataclass
class TraceResult:
    target: str
    depth: int
    window: Window
    files: list[LogFile]
    records: list[Traced] = field(default_factory=list)
    requests: dict[str, RequestInfo] = field(default_factory=dict)
    passes: list[Pass] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)  # file index -> why it stopped
    capped: bool = False
    workers: int = 1
    findings: list[Finding] = field(default_factory=list)
    failure: Traced | None = None  # the first error, or None
    spans: dict[int, tuple[datetime | None, datetime | None]] = field(default_factory=dict)
    hop_window: timedelta | None = None  # None: every id searched in whole files

    @property
    def first_error(self) -> Traced | None:
        return next((t for t in self.records if t.record.is_error), None)


def _sort_key(t: Traced) -> tuple[datetime, int, int]:
    when = t.record.when
    return (when.replace(tzinfo=None) if when else _EPOCH, t.file.index, t.record.offset)


def _hops(target: str, found: Sequence[Traced]) -> dict[str, int]:
    """Breadth-first from ID over the records found: each id's distance (ID is 0, the
    ids on records that mention ID are 1, ...); sets each record's `hop`."""
    by_id: dict[str, list[Traced]] = {}
    for t in found:
        for rid in t.ids:
            by_id.setdefault(rid, []).append(t)
    hops = {target: 0}
    frontier = [target]
    level = 0
    placed: set[int] = set()
    while frontier:
        nxt: list[str] = []
        for rid in frontier:
            for t in by_id.get(rid, ()):
                if id(t) in placed:
                    continue
                placed.add(id(t))
                t.hop = level
                for other in sorted(t.ids):
                    if other not in hops:
                        hops[other] = level + 1
                        nxt.append(other)
        frontier = nxt
        level += 1
    return hops


def _tiers(files: Sequence[LogFile]) -> dict[str, set[int]]:
    """Files by the cost of a pass: the current plain logs (where a recent failure is),
    rotated plain ones, gzip ones (zlib inflate costs several times a plain read)."""
    out: dict[str, set[int]] = {"current": set(), "rotated": set(), "gzip": set()}
    for f in files:
        tier = "gzip" if f.compressed else "rotated" if is_rotated(f.path) else "current"
        out[tier].add(f.index)
    return out


def _next_pass(tiers: Sequence[tuple[str, set[int]]], searched: dict[str, set[str]],
               hops: dict[str, int], depth: int) -> tuple[str, set[int], list[str]] | None:
    """The cheapest tier that still has ids to search, and those ids: a dearer tier is read
    only once the cheaper ones have nothing left to find."""
    for name, members in tiers:
        wanted = sorted((h, rid) for rid, h in hops.items()
                        if h <= depth and rid not in searched[name])
        if wanted:
            return name, members, [rid for _, rid in wanted]
    return None


def trace(target: str, files: Sequence[LogFile], depth: int = 2,
          window: Window = ALL_TIMES, jobs: int | None = None,
          silence: timedelta = timedelta(minutes=10),
          parallel_min: int | None = None,
          hop_window: timedelta | None = HOP_WINDOW) -> TraceResult:
    """Breadth-first from `target` (see the module docstring); `hop_window` None or 0:
    request ids searched in whole files."""
    result = TraceResult(target, depth, window, list(files),
                         hop_window=hop_window if hop_window else None)
    seen: dict[tuple[int, int], Traced] = {}
    with Scanner(files, window, jobs, parallel_min=parallel_min) as scanner:
        result.workers = scanner.jobs
        if result.hop_window is None:
            hops = _by_tiers(result, scanner, seen)
        else:
            hops = _by_windows(result, scanner, seen, result.hop_window)
        result.records = sorted(seen.values(), key=_sort_key)
        _requests(result, hops)
        result.findings = findings_mod.findings(_facts(result, silence))
    return result


def _by_tiers(result: TraceResult, scanner: Scanner, seen: dict[tuple[int, int], Traced]
              ) -> dict[str, int]:
    """Every id in every file, the cheapest tier first; returns each id's hop."""
    target, depth = result.target, result.depth
    tiers = [(name, members) for name, members in _tiers(result.files).items() if members]
    searched: dict[str, set[str]] = {name: set() for name, _ in tiers}
    hops = {target: 0}
    while not result.capped:
        todo = _next_pass(tiers, searched, hops, depth)
        if todo is None:
            break
        name, members, ids = todo
        if len(set().union(*searched.values(), ids)) > MAX_IDS:
            result.capped = True
            break
        found = scanner.run(Needles(tuple(i.encode() for i in ids)), members)
        searched[name].update(ids)
        new = _collect(result, found, seen, target)
        result.passes.append(Pass(len(result.passes), name, len(ids), new, found.read,
                                  found.seconds))
        hops = _hops(target, list(seen.values()))
    return hops


def hop_windows(found: Iterable[Traced], reach: timedelta) -> list[Interval] | None:
    """The stretches of time within `reach` of the records found, merged (at most
    MAX_WINDOWS of them); None when one of the records has no time, so nothing can be
    left out."""
    spans = []
    for t in found:
        when = t.record.when
        if when is None:
            return None
        spans.append((when - reach, when + reach))
    return merge_intervals(spans, MAX_WINDOWS)


def _within(when: datetime | None, windows: Sequence[Interval]) -> bool:
    if when is None:
        return True  # found inside a range that was read for the windows: keep it
    i = bisect.bisect_right(windows, (when, when))
    return any(a <= when <= b for a, b in windows[max(0, i - 1):i + 1])


def _by_windows(result: TraceResult, scanner: Scanner, seen: dict[tuple[int, int], Traced],
                reach: timedelta) -> dict[str, int]:
    """ID in whole files, then each hop's new ids within `reach` of the records found so
    far; returns each id's hop."""
    target, depth = result.target, result.depth
    found = scanner.run(Needles((target.encode(),)))
    new = _collect(result, found, seen, target)
    result.passes.append(Pass(0, "all", 1, new, found.read, found.seconds))
    hops = _hops(target, list(seen.values()))
    searched = {target}
    while not result.capped:
        ids = [rid for _, rid in sorted((h, rid) for rid, h in hops.items()
                                        if h <= depth and rid not in searched)]
        if not ids:
            break
        if len(searched) + len(ids) > MAX_IDS:
            result.capped = True
            break
        windows = hop_windows(seen.values(), reach)
        found = scanner.run(Needles(tuple(i.encode() for i in ids)), windows=windows)
        searched.update(ids)
        new = _collect(result, found, seen, target, windows)
        result.passes.append(Pass(len(result.passes), "all" if windows is None else "window",
                                  len(ids), new, found.read, found.seconds))
        hops = _hops(target, list(seen.values()))
    return hops


def _collect(result: TraceResult, found: ScanResult, seen: dict[tuple[int, int], Traced],
             target: str, windows: Sequence[Interval] | None = None) -> int:
    """Add a pass's records to `seen`; returns how many were new. With `windows`, only
    those within them: the ranges read reach a little further (bisection, slack for lines
    out of order), and what is found must not depend on how the bytes were laid out."""
    for index, problem in found.problems.items():
        result.problems.setdefault(index, problem)
    files = result.files
    for i, (a, b) in found.spans.items():
        if i not in result.spans:
            result.spans[i] = (records_mod.parse_stamp(a, files[i].tz) if a else None,
                               records_mod.parse_stamp(b, files[i].tz) if b else None)
    new = 0
    for index, hit in found.hits:
        key = (index, hit.offset)
        matched = sorted(m.decode("utf-8", "replace") for m in hit.matched)
        if key in seen:
            seen[key].matched = sorted(set(seen[key].matched) | set(matched))
            continue
        rec = records_mod.parse_record(hit.data, index, hit.offset, files[index].tz)
        if not result.window.holds(rec.when):
            continue
        if windows is not None and not _within(rec.when, windows):
            continue
        if len(seen) >= MAX_RECORDS:
            result.capped = True
            break
        ids = rec.request_ids()
        if target in matched or target in rec.text:
            ids.add(target)
        service, label = service_of(files[index], rec.logger)
        seen[key] = Traced(rec, files[index], -1, matched, frozenset(ids), service, label)
        new += 1
    return new


def _requests(result: TraceResult, hops: dict[str, int]) -> None:
    """Each request id met: its hop, where it was first seen, how many records hold it."""
    for t in result.records:  # in time order: the first record revealing an id wins
        for rid in sorted(t.ids):
            hop = hops.get(rid)
            if hop is None:
                continue
            info = result.requests.get(rid)
            if info is None:
                if rid == result.target and not rid.startswith("req-"):
                    continue
                reveals = hop == 0 or t.hop == hop - 1
                if not reveals:
                    continue
                info = result.requests[rid] = RequestInfo(
                    rid, hop, t.record.when, t.label, followed=hop <= result.depth)
    for t in result.records:
        for rid in t.ids:
            info = result.requests.get(rid)
            if info is not None:
                info.records += 1


def _facts(result: TraceResult, silence: timedelta) -> TraceFacts:
    recs = [t.record for t in result.records]
    first_error = result.first_error
    failure = first_error or (result.records[-1] if result.records else None)
    result.failure = first_error
    facts = TraceFacts(
        result.target, [(t.record, t.service, t.label) for t in result.records],
        services_read=_services_read(result),
        files_read=len(result.files),
        failure=failure.record.when if failure else None,
        failure_is_error=first_error is not None, silence=silence,
        window=result.window.describe())
    if facts.failure is not None:
        facts.activity = _activity(result, recs, facts.failure)
    return facts


def _services_read(result: TraceResult) -> set[str]:
    """The services whose logs were read: each file's, what a project-wide file may hold,
    and every service a record came from."""
    read = {t.service for t in result.records}
    for f in result.files:
        read.add(f.service)
        read.update(PROJECT_SERVICES.get(f.service, ()))
    return read


def _activity(result: TraceResult, recs: list[Record], when: datetime) -> list[Activity]:
    """Each relevant component's last line before `when`: those in the trace, nova-api,
    -scheduler and -conductor, and the nova-compute of hosts the trace names."""
    in_trace = {t.file.label for t in result.records} | {t.label for t in result.records}
    named = findings_mod.hosts_named(recs)
    computes = {f.label for f in result.files if findings_mod.role(f.service) == "nova-compute"}
    wanted: dict[str, list[LogFile]] = {}
    for f in result.files:
        r = findings_mod.role(f.service)
        if (f.label in in_trace or r in ("nova-api", "nova-scheduler", "nova-conductor")
                or (r == "nova-compute" and (f.host in named or len(computes) == 1))):
            wanted.setdefault(f.label, []).append(f)
    out = []
    for label, group in sorted(wanted.items()):
        before: datetime | None = None
        after: datetime | None = None
        for f in group:
            first, last = result.spans.get(f.index, (None, None))
            if last is not None and last <= when:
                b, a = last, None  # the whole file is before the failure
            elif first is not None and first > when:
                b, a = None, first  # the whole file is after it
            else:
                b, a = activity_around(f, when)
            if b is not None and (before is None or b > before):
                before = b
            if a is not None and (after is None or a < after):
                after = a
        named_host = any(f.host in named for f in group)
        out.append(Activity(label, before, after, label in in_trace, named_host))
    return out


@dataclass
class Component:
    label: str
    service: str
    records: int = 0
    errors: int = 0
    first: datetime | None = None
    last: datetime | None = None


@dataclass
class Summary:
    components: list[Component]  # in order of first appearance
    first_error: Traced | None
    requests: list[RequestInfo]  # by hop, then first seen
    first: datetime | None
    last: datetime | None


def summarize(result: TraceResult) -> Summary:
    components: dict[str, Component] = {}
    for t in result.records:
        c = components.setdefault(t.label, Component(t.label, t.service))
        c.records += 1
        c.errors += t.record.is_error
        when = t.record.when
        if when is not None:
            c.first = when if c.first is None else min(c.first, when)
            c.last = when if c.last is None else max(c.last, when)
    times = [t.record.when for t in result.records if t.record.when is not None]
    requests = sorted(result.requests.values(),
                      key=lambda r: (r.hop, r.first_seen.replace(tzinfo=None)
                                     if r.first_seen else _EPOCH, r.id))
    return Summary(list(components.values()), result.first_error, requests,
                   min(times) if times else None, max(times) if times else None)
