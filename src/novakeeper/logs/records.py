"""The oslo.log line format, and where one record ends and the next begins.

A record starts with `<time> <pid> <LEVEL> <logger> ` and, in oslo.log's formats:

* `[<global_request_id> <request_id> <user identity>] ` when there is a request context
  (`[None req-UUID user project - default default]`, `[req-G req-L ...]` when a caller
  passed its global id, the older `[req-UUID user project - - -]`),
* `[-] ` when there is none.

Both timestamp styles are read: `2026-11-20 10:00:00.123` (naive: the file's time zone
applies) and ISO 8601 with an offset (`2026-11-20T10:00:00.123456+00:00`).

A record's traceback follows it as lines carrying `logging_exception_prefix` (same time,
pid and logger, level ERROR or, before Ocata, TRACE, but no context) or as bare lines; a
multi-line message continues on bare lines. Both belong to the record before them, so
the walkers here work on raw bytes around a hit, never on whole files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone

HEADER_RE = re.compile(
    rb"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)"
    rb" +(\d+) +(TRACE|DEBUG|INFO|AUDIT|WARNING|WARN|ERROR|CRITICAL) +(\S+)(?: |$)")
# Lines of other formats that open a record of their own: Apache's error log
# (`[Fri Nov 20 10:22:34.127583 2026] ...`), syslog (`Nov 20 10:22:34 host prog[1]: ...`),
# and other tools' ISO-dated lines.
FOREIGN_START_RE = re.compile(
    rb"\[\w{3} \w{3} [ \d]\d \d{2}:\d{2}:\d{2}|\w{3} [ \d]\d \d{2}:\d{2}:\d{2} "
    rb"|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")
CONTEXT_RE = re.compile(rb"\[(?:-|None(?: [^\]\n]*)?|req-[^\]\n]*)\] ?")
REQUEST_ID_RE = re.compile(
    r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTANCE_RE = re.compile(r"\[instance: ([0-9a-fA-F-]{36})\] ?")
_PREFIX_TEXT_RE = re.compile(HEADER_RE.pattern.decode())

# How far the walkers go before giving up on finding a record's start or end: a record
# longer than this is cut (a 10,000-frame traceback, or binary garbage without headers).
MAX_WALK_LINES = 4000
MAX_RECORD_BYTES = 1 << 20
ERROR_LEVELS = frozenset({"ERROR", "CRITICAL", "TRACE"})


def _line_end(buf: bytes | bytearray, start: int, hi: int) -> int:
    end = buf.find(b"\n", start, hi)
    return hi if end < 0 else end


def _line_start(buf: bytes | bytearray, pos: int, lo: int) -> int:
    """Start of the line holding byte `pos`."""
    i = buf.rfind(b"\n", lo, pos)
    return lo if i < 0 else i + 1


def _prev_line_start(buf: bytes | bytearray, start: int, lo: int) -> int:
    """Start of the line before the one starting at `start` (> lo)."""
    return _line_start(buf, start - 1, lo)


def _previous_header(buf: bytes | bytearray, start: int, lo: int) -> re.Match[bytes] | None:
    pos = start
    for _ in range(MAX_WALK_LINES):
        if pos <= lo:
            return None
        prev = _prev_line_start(buf, pos, lo)
        m = HEADER_RE.match(buf, prev, pos - 1)
        if m:
            return m
        pos = prev
    return None


def is_record_start(buf: bytes | bytearray, start: int, lo: int, hi: int) -> bool:
    """Does the line at `start` open a record (rather than continue the one before)?"""
    end = _line_end(buf, start, hi)
    m = HEADER_RE.match(buf, start, end)
    if m is None:
        return FOREIGN_START_RE.match(buf, start, end) is not None
    if CONTEXT_RE.match(buf, m.end(), end):
        return True
    prev = _previous_header(buf, start, lo)
    return prev is None or (prev.group(1), prev.group(2), prev.group(4)) != (
        m.group(1), m.group(2), m.group(4))


def record_bounds(buf: bytes | bytearray, pos: int, lo: int, hi: int) -> tuple[int, int]:
    """[start, end) of the record holding byte `pos`, within [lo, hi); `end` is just past
    the newline of its last line. A record that starts before `lo` starts at `lo` here."""
    line = _line_start(buf, pos, lo)
    start = line
    for _ in range(MAX_WALK_LINES):
        if is_record_start(buf, start, lo, hi) or start <= lo:
            break
        if line - start > MAX_RECORD_BYTES:
            start = line  # no start within reach: the hit's line stands alone
            break
        start = _prev_line_start(buf, start, lo)
    else:
        start = line
    end = _line_end(buf, pos, hi) + 1
    for _ in range(MAX_WALK_LINES):
        if end >= hi or end - start > MAX_RECORD_BYTES or is_record_start(buf, end, lo, hi):
            break
        end = _line_end(buf, end, hi) + 1
    return start, min(end, hi)


def last_record_start(buf: bytes | bytearray, lo: int, hi: int) -> int | None:
    """Start of the last record that begins in [lo, hi) (hi: just past a newline), or None
    when no record starts within reach of the end."""
    start = hi
    for _ in range(MAX_WALK_LINES):
        if start <= lo or hi - start > MAX_RECORD_BYTES:
            return None
        start = _prev_line_start(buf, start, lo)
        if is_record_start(buf, start, lo, hi):
            return start
    return None


def line_stamp(buf: bytes | bytearray, start: int, hi: int) -> bytes | None:
    m = HEADER_RE.match(buf, start, _line_end(buf, start, hi))
    return m.group(1) if m else None


def first_stamp(buf: bytes | bytearray, lo: int, hi: int, lines: int = 200) -> bytes | None:
    """The timestamp of the first header line in [lo, hi)."""
    start = lo
    for _ in range(lines):
        if start >= hi:
            return None
        stamp = line_stamp(buf, start, hi)
        if stamp:
            return stamp
        start = _line_end(buf, start, hi) + 1
    return None


def last_stamp(buf: bytes | bytearray, lo: int, hi: int, lines: int = 200) -> bytes | None:
    """The timestamp of the last header line in [lo, hi)."""
    end = hi - 1 if hi > lo and buf[hi - 1] == 0x0A else hi  # the last line's newline
    for _ in range(lines):
        if end < lo:
            return None
        start = _line_start(buf, end, lo) if end > lo else lo
        m = HEADER_RE.match(buf, start, end)
        if m:
            return m.group(1)
        end = start - 1
    return None


def parse_stamp(stamp: bytes | str, tz: timezone) -> datetime | None:
    """A log timestamp as an aware UTC datetime; naive ones are in `tz`."""
    text = stamp.decode("ascii", "replace") if isinstance(stamp, bytes) else stamp
    try:
        when = datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.astimezone(UTC)


@dataclass
class Record:
    """One log record: its header line parsed, plus its continuation lines."""

    file: int  # LogFile.index
    offset: int  # byte offset of its first line (uncompressed, for gzip)
    when: datetime | None  # UTC
    stamp: str  # as written
    pid: int | None
    level: str  # '' for a line that has no header (garbage, or a lone continuation)
    logger: str
    request_id: str | None = None
    global_request_id: str | None = None
    user: str | None = None
    project: str | None = None
    instance: str | None = None
    message: str = ""
    lines: list[str] = field(default_factory=list)  # all lines, the first one included
    truncated: bool = False
    line: int | None = None  # 1-based line number in its file, when it was counted

    @property
    def is_error(self) -> bool:
        return self.level in ERROR_LEVELS

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def request_ids(self) -> set[str]:
        """Every request id written anywhere in the record: its context, and ids other
        services returned (`Neutron server returns request_ids: ['req-...']`,
        `(Request-ID: req-...)` in client errors)."""
        found = set(REQUEST_ID_RE.findall(self.text))
        if self.request_id:
            found.add(self.request_id)
        if self.global_request_id:
            found.add(self.global_request_id)
        return found


def _context(text: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(request_id, global_request_id, user, project) from `[...]`'s inside."""
    tokens = text.split()
    if not tokens or tokens == ["-"]:
        return None, None, None, None
    if tokens[0] == "None" or (len(tokens) > 1 and tokens[1].startswith("req-")):
        glob = None if tokens[0] == "None" else tokens[0]
        req = tokens[1] if len(tokens) > 1 and tokens[1] != "None" else None
        rest = tokens[2:]
    else:
        glob, req, rest = None, tokens[0] if tokens[0].startswith("req-") else None, tokens[1:]
    user = rest[0] if rest and rest[0] not in ("-", "None") else None
    project = rest[1] if len(rest) > 1 and rest[1] not in ("-", "None") else None
    return req, glob, user, project


def body(line: str) -> str:
    """A continuation line without its `logging_exception_prefix` (time, pid, level,
    logger, instance): what an operator reads in a traceback."""
    m = _PREFIX_TEXT_RE.match(line)
    if m is None:
        return line
    rest = line[m.end():]
    i = INSTANCE_RE.match(rest)
    return rest[i.end():] if i else rest


def decode_lines(data: bytes, max_line: int = 16384) -> tuple[list[str], bool]:
    """Text lines of a record; over-long lines are cut (and say so)."""
    truncated = False
    lines = []
    for raw in data.rstrip(b"\n").split(b"\n"):
        if len(raw) > max_line:
            cut = len(raw) - max_line
            raw = raw[:max_line] + f" [... {cut} more bytes]".encode()
            truncated = True
        lines.append(raw.rstrip(b"\r").decode("utf-8", "replace"))
    return lines, truncated


def parse_record(data: bytes, file: int, offset: int, tz: timezone) -> Record:
    lines, truncated = decode_lines(data)
    first = data.split(b"\n", 1)[0]
    m = HEADER_RE.match(first)
    if m is None:
        return Record(file, offset, None, "", None, "", "", message=lines[0] if lines else "",
                      lines=lines, truncated=truncated)
    stamp, pid, level, logger = (g.decode("utf-8", "replace") for g in m.groups())
    rest = first[m.end():]
    req = glob = user = project = None
    c = CONTEXT_RE.match(rest)
    if c:
        req, glob, user, project = _context(
            c.group(0).strip().strip(b"[]").strip().decode("utf-8", "replace"))
        rest = rest[c.end():]
    message = rest.decode("utf-8", "replace")
    instance = None
    i = INSTANCE_RE.match(message)
    if i:
        instance = i.group(1).lower()
        message = message[i.end():]
    return Record(file, offset, parse_stamp(stamp, tz), stamp, int(pid),
                  "WARNING" if level == "WARN" else level, logger, req, glob, user, project,
                  instance, message, lines, truncated)
