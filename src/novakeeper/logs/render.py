"""Trace timelines and diagnoses as text (rich styles on a terminal, plain when piped)
and as JSON-ready dicts. One log line stays one output line, so the output greps."""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text

from novakeeper.logs.findings import GAP
from novakeeper.logs.records import Record, body
from novakeeper.logs.trace import Summary, Traced, TraceResult, summarize
from novakeeper.units import human_age, human_bytes

if TYPE_CHECKING:  # the trace command does not load the diagnose module
    from rich.console import Console

    from novakeeper.logs.diagnose import DiagnoseResult, DiskFacts, Hit, Signature

LEVEL_STYLE = {"CRITICAL": "bold white on red", "ERROR": "bold red", "TRACE": "bold red",
               "WARNING": "yellow", "DEBUG": "dim"}
MAX_LINE = 2000  # characters of one log line shown in the text timeline
MAX_IDS_SHOWN = 20  # request ids listed in the text summary


def _n(count: int, word: str, words: str | None = None) -> str:
    return f"{count} {word if count == 1 else words or word + 's'}"


def clock(when: datetime | None) -> str:
    if when is None:
        return "????-??-?? ??:??:??.???"
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="microseconds") if when else None


def _short(req: str | None) -> str:
    return req[:12] if req else "-"


def _cut(text: str) -> str:
    if len(text) <= MAX_LINE:
        return text
    return text[:MAX_LINE] + f" [... {len(text) - MAX_LINE} more]"


def record_dict(rec: Record) -> dict[str, Any]:
    return {"time": iso(rec.when), "stamp": rec.stamp, "level": rec.level, "logger": rec.logger,
            "pid": rec.pid, "request_id": rec.request_id,
            "global_request_id": rec.global_request_id, "user": rec.user,
            "project": rec.project, "instance": rec.instance, "message": rec.message,
            "lines": rec.lines, "offset": rec.offset, "line": rec.line,
            "truncated": rec.truncated}


def _exception_line(rec: Record) -> str | None:
    """The last line of a record's traceback: the exception, without its prefix."""
    for ln in reversed(rec.lines[1:]):
        text = body(ln).strip()
        if text:
            return text
    return None


# -- trace ---------------------------------------------------------------------------------

def trace_data(result: TraceResult) -> dict[str, Any]:
    s = summarize(result)
    return {
        "target": result.target,
        "depth": result.depth,
        "window": {"since": iso(result.window.since), "until": iso(result.window.until)},
        "records": [{**record_dict(t.record), "file": t.file.path, "service": t.service,
                     "label": t.label, "host": t.file.host, "hop": t.hop,
                     "matched": t.matched} for t in result.records],
        "summary": {
            "components": [{"label": c.label, "service": c.service, "records": c.records,
                            "errors": c.errors, "first": iso(c.first), "last": iso(c.last)}
                           for c in s.components],
            "first_error": None if s.first_error is None else {
                **record_dict(s.first_error.record), "file": s.first_error.file.path,
                "label": s.first_error.label,
                "exception": _exception_line(s.first_error.record)},
            "request_ids": [{"id": r.id, "hop": r.hop, "records": r.records,
                             "first_seen": iso(r.first_seen), "seen_in": r.seen_in,
                             "followed": r.followed} for r in s.requests],
            "span": {"first": iso(s.first), "last": iso(s.last),
                     "seconds": (s.last - s.first).total_seconds() if s.first and s.last
                     else None},
        },
        "findings": [f.to_dict() for f in result.findings],
        "files": {"read": len(result.files),
                  "problems": [{"path": result.files[i].path, "problem": p}
                               for i, p in sorted(result.problems.items())]},
        "passes": [{"pass": r.number, "files": r.files, "ids": r.searched, "records": r.found,
                    "bytes": r.read, "seconds": round(r.seconds, 3)} for r in result.passes],
        "capped": result.capped,
        "workers": result.workers,
    }


def _row(t: Traced, width: int, target: str) -> list[Text]:
    rec = t.record
    style = LEVEL_STYLE.get(rec.level, "")
    error = rec.is_error
    message = rec.message
    if rec.instance and rec.instance != target.lower():
        message = f"[instance: {rec.instance}] {message}"
    head = Text.assemble(
        (clock(rec.when), "dim"), "  ", (t.label.ljust(width), "cyan"), "  ",
        (f"{t.hop:>3}", "dim"), "  ", ((rec.level or "-").ljust(8), style), "  ",
        (_short(rec.request_id).ljust(12), "magenta"), "  ",
        (_cut(message), "bold red" if error else ""))
    rows = [head]
    indent = " " * (23 + 2 + width + 2 + 3 + 2 + 8 + 2 + 12 + 2)
    more = rec.lines[1:]
    while more and not body(more[-1]).strip():
        more = more[:-1]  # oslo.log ends a traceback with an empty prefixed line
    for ln in more:
        rows.append(Text(indent + _cut(body(ln)), style="red" if error else "dim"))
    return rows


def _summary_text(result: TraceResult, s: Summary, out: Console) -> None:
    def field(name: str, value: str | Text) -> None:
        out.print(Text.assemble((f"  {name:<13}", "bold"), value), soft_wrap=True)

    parts = [f"{c.label} ({c.records}" + (f", {_n(c.errors, 'error')})" if c.errors else ")")
             for c in s.components]
    field("components", ", ".join(parts) if parts else "none")
    if s.first_error is not None:
        rec = s.first_error.record
        field("first error", Text.assemble(
            f"{clock(rec.when)} {s.first_error.label} {rec.level}: ",
            (_cut(rec.message), "bold red")))
        exc = _exception_line(rec)
        if exc and exc not in rec.message:
            field("", Text(_cut(exc), style="red"))
    else:
        field("first error", "none (no ERROR, CRITICAL or TRACE record)")
    if s.requests:
        for i, r in enumerate(s.requests[:MAX_IDS_SHOWN]):
            how = ("the target" if r.hop == 0 else
                   f"hop {r.hop}, {_n(r.records, 'record')}, seen first in {r.seen_in}")
            if not r.followed:
                how += " (not followed: --depth)"
            field("request ids" if i == 0 else "", f"{r.id}  {how}")
        if len(s.requests) > MAX_IDS_SHOWN:
            field("", f"... {len(s.requests) - MAX_IDS_SHOWN} more (--json lists them all)")
    else:
        field("request ids", "none")
    if s.first and s.last:
        field("time span", f"{clock(s.first)} to {clock(s.last)} UTC "
                           f"({human_age((s.last - s.first).total_seconds())})")
    read = sum(r.read for r in result.passes)
    secs = sum(r.seconds for r in result.passes)
    reach = human_age(result.hop_window.total_seconds()) if result.hop_window else ""
    tiers = [(sum(p.files == tier for p in result.passes), words) for tier, words in (
        ("all", "over all logs"), ("window", f"within {reach} of the records found"),
        ("current", "over current logs"), ("rotated", "over rotated plain logs"),
        ("gzip", "over gzip logs"))]
    passes = _n(len(result.passes), "pass", "passes") + " (" + ", ".join(
        f"{count} {words}" for count, words in tiers if count) + ")"
    field("searched", f"{_n(len(result.files), 'file')}, {passes}, {human_bytes(read)} read "
                      f"in {secs:.2f} s ({_n(result.workers, 'worker')})")


def trace_text(result: TraceResult, out: Console, max_records: int = 2000) -> None:
    s = summarize(result)
    out.print(Text.assemble(
        ("trace ", "bold"), (result.target, "bold"),
        f": {_n(len(result.records), 'record')} from {_n(len(s.components), 'component')}"
        + (f", {result.window.describe()}" if result.window else "") + "; times in UTC"),
        soft_wrap=True)
    if result.records:
        width = max(len("COMPONENT"), *(len(t.label) for t in result.records))
        out.print(Text(f"{'TIME':<23}  {'COMPONENT':<{width}}  HOP  {'LEVEL':<8}  "
                       f"{'REQUEST':<12}  MESSAGE", style="bold"), soft_wrap=True)
        shown = result.records if max_records <= 0 else result.records[:max_records]
        for t in shown:
            for row in _row(t, width, result.target):
                out.print(row, soft_wrap=True)
        if len(shown) < len(result.records):
            out.print(f"... {len(result.records) - len(shown)} more records "
                      "(--max-records 0 shows all; --json gives everything)", style="dim")
    out.print()
    out.print(Text("Summary", style="bold"))
    _summary_text(result, s, out)
    if result.capped:
        out.print(Text("  the trace hit its size limits; narrow it with --since/--until or "
                       "--depth", style="yellow"))
    out.print()
    out.print(Text("Findings", style="bold"))
    for f in result.findings:
        kind = Text(f"  {f.kind.upper():<5} ", style="bold yellow" if f.kind == GAP else "bold")
        out.print(Text.assemble(kind, (f.title, "bold" if f.kind == GAP else "")),
                  soft_wrap=True)
        _para(out, f.advice, 8)
        for e in f.evidence:
            out.print(Text("        " + e, style="dim"), soft_wrap=True)


# -- diagnose ------------------------------------------------------------------------------

def disk_text(d: DiskFacts) -> str:
    if d.note:
        return f"{d.path + ': ' if d.path else ''}{d.note}"
    parts = [f"{d.path}: {human_bytes(d.free or 0)} free of {human_bytes(d.total or 0)}"]
    if d.used_pct is not None:
        parts[0] += f" ({d.used_pct:.1f}% used)"
    if d.cache_files is not None:
        parts.append(f"the cache folder holds {d.cache_files} files, "
                     f"{human_bytes(d.cache_bytes or 0)} on disk")
    return "; ".join(parts)


def disk_dict(d: DiskFacts) -> dict[str, Any]:
    return {"path": d.path, "free": d.free, "total": d.total, "used_pct": d.used_pct,
            "cache_files": d.cache_files, "cache_bytes": d.cache_bytes, "note": d.note}


def _hit_dict(h: Hit, result: DiagnoseResult) -> dict[str, Any]:
    out = {**h.signature.to_dict(), "count": h.count, "first": iso(h.first),
           "last": iso(h.last), "files": dict(h.per_file),
           "examples": [{"file": e.file.path, "label": e.file.label, "line": e.record.line,
                         "time": iso(e.record.when), "lines": e.lines,
                         "record": record_dict(e.record)} for e in h.examples]}
    if h.signature.show == "cache-disk" and result.disk is not None:
        out["disk"] = disk_dict(result.disk)
    return out


def diagnose_data(result: DiagnoseResult) -> dict[str, Any]:
    return {
        "hits": [_hit_dict(h, result) for h in result.hits],
        "below_threshold": result.below_threshold,
        "signatures": [s.id for s in result.signatures],
        "files": {"read": len(result.files), "bytes": result.read,
                  "problems": [{"path": result.files[i].path, "problem": p}
                               for i, p in sorted(result.problems.items())]},
        "seconds": round(result.seconds, 3),
    }


def diagnose_text(result: DiagnoseResult, out: Console) -> None:
    n = len(result.hits)
    out.print(Text.assemble(
        ("diagnose: ", "bold"),
        (f"{n} known problem{'s' if n != 1 else ''}", "bold red" if n else "bold green"),
        f" in {_n(len(result.files), 'file')} ({human_bytes(result.read)}), "
        f"{_n(len(result.signatures), 'signature')} checked"), soft_wrap=True)
    for h in result.hits:
        sig = h.signature
        out.print()
        out.print(Text.assemble((sig.id, "bold cyan"), "  ", (sig.title, "bold")),
                  soft_wrap=True)
        span = clock(h.first)[:19] if h.first else "time unknown"
        if h.last and h.first and h.last != h.first:
            span += f" to {clock(h.last)[:19]}"
        floor = f" (reported from {sig.min_count})" if sig.min_count > 1 else ""
        _field(out, "records", f"{h.count}{floor}, {span}{' UTC' if h.first else ''}")
        _field(out, "files", ", ".join(f"{path} ({count})" for path, count
                                       in h.per_file.most_common()))
        _field(out, "cause", sig.cause)
        _field(out, "fix", sig.fix)
        if sig.show == "cache-disk" and result.disk is not None:
            _field(out, "disk", disk_text(result.disk))
        out.print(Text("  lines", style="bold"))
        for e in h.examples:
            where = f"{e.file.path}" + (f":{e.record.line}" if e.record.line else "")
            out.print(Text("    " + where, style="cyan"), soft_wrap=True)
            for ln in e.lines:
                out.print(Text("      " + _cut(ln), style="red" if e.record.is_error else ""),
                          soft_wrap=True)
    for sid, count in sorted(result.below_threshold.items()):
        out.print(Text(f"\n{sid}: {count} records, under its threshold: not reported",
                       style="dim"))


def _para(out: Console, text: str, indent: int) -> None:
    """Re-flowed and wrapped at `indent`; no padding at line ends, so it greps."""
    for ln in textwrap.wrap(" ".join(text.split()), width=max(40, out.width - indent - 1)):
        out.print(Text(" " * indent + ln), soft_wrap=True)


def _field(out: Console, name: str, value: str, indent: int = 2) -> None:
    """`name  value`, the value re-flowed and wrapped under itself."""
    pad = indent + 9
    lines = textwrap.wrap(" ".join(value.split()), width=max(40, out.width - pad - 1)) or [""]
    out.print(Text.assemble((f"{' ' * indent}{name:<8} ", "bold"), lines[0]), soft_wrap=True)
    for ln in lines[1:]:
        out.print(Text(" " * pad + ln), soft_wrap=True)


def signatures_text(sigs: list[Signature], out: Console) -> None:
    for s in sigs:
        extra = f" (min {s.min_count})" if s.min_count > 1 else ""
        out.print(Text.assemble((s.id, "bold cyan"), f"  {s.title}{extra}",
                                (f"  [{s.source}]", "dim")), soft_wrap=True)
