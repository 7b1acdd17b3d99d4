"""`novakeeper diagnose`: known failures recognised in the logs, with their cause and fix.

The knowledge base is data: `signatures.toml`, shipped in the package, extended or
overridden by the operator's own files (same format; an entry with a shipped id replaces
it, `enabled = false` turns one off). An entry:

    [[signature]]
    id = "disk-full-base"              # stable: JSON and tests key on it
    title = "..."                      # the problem, one line
    cause = "..."                      # the likely cause
    fix = "..."                        # what to do
    match = ['No space left on device']  # regexes; any one, anywhere in a record
    context = ['qemu-img convert']     # optional; all must be in the same record too
    near = ['ComputeCapabilitiesFilter returned 0 hosts']  # optional; one must be in a
                                       # record of the same request, or near_seconds apart
    near_seconds = 300
    min_count = 1                      # a flood signature reports only from this count
    show = "cache-disk"                # optional extra: disk and cache figures
    sample = '''...'''                 # a real log record that must trigger it (tested)

A record is a log line with its continuation lines (traceback, multi-line message), so
`context` can ask for the command line and the error of one failure together.

The scan looks for each regex's longest required literal with bytes.find (see
`literal_anchor`); only records holding an anchor are parsed and matched. A regex with no
literal to anchor on is run over every chunk, which is slower.
"""

from __future__ import annotations

import bisect
import os
import re
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.logs import records as records_mod
from novakeeper.logs.records import Record
from novakeeper.logs.scan import Needles, Scanner
from novakeeper.logs.sources import LogFile
from novakeeper.logs.window import ALL_TIMES, Window

SHIPPED = "signatures.toml"
MAX_NEAR_RECORDS = 20_000  # per signature: records kept for the `near` check
_KEYS = {"id", "title", "cause", "fix", "match", "context", "near", "near_seconds",
         "min_count", "show", "sample", "enabled"}
_SHOWS = {"cache-disk"}
_META = set(".^$*+?{}[]\\|()")


@dataclass(frozen=True)
class Signature:
    id: str
    title: str
    cause: str
    fix: str
    match: tuple[str, ...]
    context: tuple[str, ...] = ()
    near: tuple[str, ...] = ()
    near_seconds: int = 300
    min_count: int = 1
    show: str | None = None
    sample: str = ""
    source: str = SHIPPED

    def compiled(self) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]],
                                list[re.Pattern[str]]]:
        return ([re.compile(p) for p in self.match], [re.compile(p) for p in self.context],
                [re.compile(p) for p in self.near])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "cause": self.cause, "fix": self.fix,
                "match": list(self.match), "context": list(self.context),
                "near": list(self.near), "near_seconds": self.near_seconds,
                "min_count": self.min_count, "show": self.show, "source": self.source}


def literal_anchor(pattern: str) -> str | None:
    """The longest run of plain characters every match of `pattern` must contain, or
    None (alternation at the top, flags, or nothing of 3 characters or more)."""
    if pattern.startswith("(?"):
        return None
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if depth == 0 and not nxt.isalnum():
                run.append(nxt)
            else:
                runs.append("".join(run))
                run = []
            i += 2
            continue
        if c in "?*{" or (c == "+" and depth == 0):
            if run:
                run.pop()  # the quantified character may be absent or repeated
            runs.append("".join(run))
            run = []
        elif c == "[":
            runs.append("".join(run))
            run = []
            j = pattern.find("]", i + 2)
            i = len(pattern) if j < 0 else j
        elif c == "(":
            depth += 1
            runs.append("".join(run))
            run = []
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == "|":
            if depth == 0:
                return None
        elif c in _META:
            runs.append("".join(run))
            run = []
        elif depth == 0:
            run.append(c)
        i += 1
    runs.append("".join(run))
    best = max(runs, key=len)
    return best if len(best) >= 3 else None


def _problem(source: str, sid: str, text: str) -> NovakeeperError:
    where = f"signature {sid!r}" if sid else "a signature"
    return NovakeeperError(ExitCode.CONFIG, f"{source}: {where}: {text}")


def _strings(entry: dict[str, Any], key: str, source: str, sid: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _problem(source, sid, f"{key!r} must be a list of regexes")
    for v in value:
        try:
            re.compile(v)
        except re.error as exc:
            raise _problem(source, sid, f"bad regex {v!r} in {key!r}: {exc}") from None
    return tuple(value)


def _parse(data: dict[str, Any], source: str, need_sample: bool) -> list[tuple[Signature,
                                                                              bool]]:
    entries = data.get("signature", [])
    extra = set(data) - {"signature"}
    if extra:
        raise _problem(source, "", f"unknown top-level key(s): {', '.join(sorted(extra))} "
                                   "(entries go in [[signature]] tables)")
    if not isinstance(entries, list):
        raise _problem(source, "", "'signature' must be an array of tables ([[signature]])")
    out = []
    for entry in entries:
        sid = entry.get("id")
        if not isinstance(sid, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", sid):
            raise _problem(source, str(sid or ""), "'id' must be a lower-case name like "
                                                   "'disk-full-base'")
        unknown = set(entry) - _KEYS
        if unknown:
            raise _problem(source, sid, f"unknown key(s): {', '.join(sorted(unknown))}")
        enabled = entry.get("enabled", True)
        if enabled is False:
            out.append((Signature(sid, "", "", "", (), source=source), False))
            continue
        required = ["title", "cause", "fix"] + (["sample"] if need_sample else [])
        for key in required:
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise _problem(source, sid, f"{key!r} is missing")
        match = _strings(entry, "match", source, sid)
        if not match:
            raise _problem(source, sid, "'match' needs at least one regex")
        show = entry.get("show")
        if show is not None and show not in _SHOWS:
            raise _problem(source, sid, f"unknown 'show' {show!r} (known: "
                                        f"{', '.join(sorted(_SHOWS))})")
        numbers = {}
        for key, default in (("near_seconds", 300), ("min_count", 1)):
            value = entry.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _problem(source, sid, f"{key!r} must be a positive integer")
            numbers[key] = value
        out.append((Signature(
            sid, entry["title"].strip(), entry["cause"].strip(), entry["fix"].strip(), match,
            _strings(entry, "context", source, sid), _strings(entry, "near", source, sid),
            numbers["near_seconds"], numbers["min_count"], show,
            str(entry.get("sample", "")).strip("\n"), source), True))
    return out


def load(user_files: Sequence[str] = ()) -> list[Signature]:
    """The shipped knowledge base, then each user file over it, in order."""
    text = resources.files("novakeeper.logs").joinpath(SHIPPED).read_text(encoding="utf-8")
    by_id: dict[str, Signature] = {}
    for sig, _ in _parse(tomllib.loads(text), SHIPPED, need_sample=True):
        by_id[sig.id] = sig
    for path in user_files:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: no such file") from None
        except PermissionError:
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: permission denied") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: not valid TOML: {exc}") from None
        for sig, enabled in _parse(data, path, need_sample=False):
            if enabled:
                by_id[sig.id] = sig
            else:
                by_id.pop(sig.id, None)
    return list(by_id.values())


@dataclass(frozen=True)
class DiskFacts:
    """Figures for the disk-full signature: the cache folder's file system, and the cache."""

    path: str
    free: int | None = None
    total: int | None = None
    cache_files: int | None = None
    cache_bytes: int | None = None  # allocated
    note: str | None = None  # why figures are missing

    @property
    def used_pct(self) -> float | None:
        if not self.total or self.free is None:
            return None
        return 100.0 * (self.total - self.free) / self.total


def disk_facts(cache_path: str | None, why_not: str | None = None) -> DiskFacts:
    if cache_path is None:
        return DiskFacts("", note=why_not or "the cache folder is not known")
    try:
        st = os.statvfs(cache_path)
    except OSError as exc:
        return DiskFacts(cache_path, note=f"cannot stat it: {exc.strerror or exc}")
    files = size = 0
    try:
        with os.scandir(cache_path) as it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
    except OSError:
        return DiskFacts(cache_path, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    return DiskFacts(cache_path, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, files,
                     size)


@dataclass
class Example:
    record: Record
    file: LogFile
    lines: list[str]  # the record's first line and the lines that matched


@dataclass
class Hit:
    signature: Signature
    count: int = 0
    per_file: Counter[str] = field(default_factory=Counter)  # path -> records
    examples: list[Example] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None


@dataclass
class DiagnoseResult:
    signatures: list[Signature]
    files: list[LogFile]
    hits: list[Hit] = field(default_factory=list)
    below_threshold: dict[str, int] = field(default_factory=dict)  # flood ids under min_count
    problems: dict[int, str] = field(default_factory=dict)
    read: int = 0
    seconds: float = 0.0
    workers: int = 1
    disk: DiskFacts | None = None


@dataclass
class _Candidate:
    record: Record
    file: LogFile
    requests: set[str]


@dataclass
class _Tally:
    """One signature's matches, added up as they come: only the examples keep records."""

    hit: Hit
    shown: int  # examples to keep
    lines: list[re.Pattern[str]]  # what makes a line worth showing
    pending: list[_Candidate] = field(default_factory=list)  # `near` still to check

    def add(self, rec: Record, f: LogFile) -> None:
        hit = self.hit
        hit.count += 1
        hit.per_file[f.path] += 1
        when = rec.when
        if when is not None:
            hit.first = when if hit.first is None else min(hit.first, when)
            hit.last = when if hit.last is None else max(hit.last, when)
        if self.shown:
            hit.examples.append(Example(rec, f, _matching_lines(rec, self.lines)))
            hit.examples.sort(key=lambda e: _order(e.record, e.file))
            del hit.examples[self.shown:]


def _needles(sigs: Sequence[Signature]) -> tuple[Needles, dict[str, str | None]]:
    anchors: dict[str, str | None] = {}
    literals: set[bytes] = set()
    patterns: set[bytes] = set()
    for sig in sigs:
        for p in (*sig.match, *sig.near):
            anchor = literal_anchor(p)
            anchors[p] = anchor
            if anchor is None:
                patterns.add(p.encode())
            else:
                literals.add(anchor.encode())
    return Needles(tuple(sorted(literals)), tuple(sorted(patterns))), anchors


def _matching_lines(rec: Record, patterns: Sequence[re.Pattern[str]]) -> list[str]:
    lines = [rec.lines[0]] if rec.lines else []
    for ln in rec.lines[1:]:
        if any(p.search(ln) for p in patterns):
            lines.append(ln)
    return lines


def diagnose(files: Sequence[LogFile], sigs: Sequence[Signature], window: Window = ALL_TIMES,
             jobs: int | None = None, examples: int = 3,
             parallel_min: int | None = None) -> DiagnoseResult:
    result = DiagnoseResult(list(sigs), list(files))
    needles, _ = _needles(sigs)
    with Scanner(files, window, jobs, count_lines=True, parallel_min=parallel_min) as scanner:
        found = scanner.run(needles)
        result.workers = scanner.jobs
    result.problems = dict(found.problems)
    result.read, result.seconds = found.read, found.seconds
    compiled = {s.id: s.compiled() for s in sigs}
    tallies = {s.id: _Tally(Hit(s), examples, [*compiled[s.id][0], *compiled[s.id][1]])
               for s in sigs}
    nears: dict[str, list[_Candidate]] = {s.id: [] for s in sigs}
    for index, raw in found.hits:
        f = files[index]
        rec = records_mod.parse_record(raw.data, index, raw.offset, f.tz)
        if not window.holds(rec.when):
            continue
        rec.line = raw.line
        text = rec.text
        for sig in sigs:
            match, context, near = compiled[sig.id]
            tally = tallies[sig.id]
            if any(p.search(text) for p in match) and all(p.search(text) for p in context):
                if not sig.near:
                    tally.add(rec, f)
                elif len(tally.pending) < MAX_NEAR_RECORDS:
                    tally.pending.append(_Candidate(rec, f, rec.request_ids()))
            if near and len(nears[sig.id]) < MAX_NEAR_RECORDS and any(
                    p.search(text) for p in near):
                nears[sig.id].append(_Candidate(rec, f, rec.request_ids()))
    for sig in sigs:
        tally = tallies[sig.id]
        for c in _near(tally.pending, nears[sig.id], sig.near_seconds):
            tally.add(c.record, c.file)
        count = tally.hit.count
        if count and count < sig.min_count:
            result.below_threshold[sig.id] = count
        elif count:
            result.hits.append(tally.hit)
    result.hits.sort(key=lambda h: (h.first or _NEVER, h.signature.id))
    return result


_NEVER = datetime.max.replace(tzinfo=UTC)


def _order(rec: Record, f: LogFile) -> tuple[datetime, int, int]:
    return (rec.when or _NEVER, f.index, rec.offset)


def _near(hits: Sequence[_Candidate], nears: Sequence[_Candidate],
          seconds: int) -> list[_Candidate]:
    """The hits with a `near` record in the same request, or `seconds` apart."""
    requests = set().union(*(n.requests for n in nears)) if nears else set()
    times = sorted(n.record.when for n in nears if n.record.when is not None)
    out = []
    for c in hits:
        when = c.record.when
        if c.requests & requests:
            out.append(c)
        elif when is not None and times:
            i = bisect.bisect_left(times, when)
            close = [times[j] for j in (i - 1, i) if 0 <= j < len(times)]
            if any(abs((when - t).total_seconds()) <= seconds for t in close):
                out.append(c)
    return out
