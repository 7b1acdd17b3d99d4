"""The fleet report as a table (rich) and as one self-contained HTML file."""

from __future__ import annotations

import html
import time
from typing import Any

from rich.console import Console

from novakeeper.units import human_bytes


def _bytes(value: int | None) -> str:
    return "-" if value is None else human_bytes(value)


def _headroom(n: dict[str, Any]) -> str:
    if n["headroom"] is None:
        return "no budget"
    if n["headroom"] < 0:
        return f"OVER {human_bytes(-n['headroom'])}"
    return human_bytes(n["headroom"])


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _last_clean(n: dict[str, Any]) -> str:
    lc = n["last_clean"]
    if lc is None:
        return "never"
    return f"{_when(lc['at'])} {lc['removed']} removed, {lc['outcome']}"


def _clean(c: dict[str, Any] | None) -> str:
    if c is None:
        return ""
    if c["status"] == "cleaned":
        note = EXIT_NOTES.get(c.get("exit") or 0, "")
        return f"removed {c['removed']}, freed {human_bytes(c['freed'])}{note}"
    return str(c["status"])


EXIT_NOTES = {6: " (exit 6: problems held files)", 10: " (exit 10: budget not met)",
              11: " (exit 11: another run held the lock)"}
"""cache clean's exits that are not failures, said in the CLEAN column."""

COLUMNS = ("NODE", "CACHE", "FILES", "RECLAIMABLE", "HEADROOM", "PROBLEMS", "LAST CLEAN",
           "VERSION")
DISK_COLUMNS = ("DISK FREE", "WORST CASE")
"""From `disk report`, when some node has it: free bytes, and what would be left if
every disk grew to its virtual size (negative: short)."""


def _signed(value: int | None) -> str:
    if value is None:
        return "-"
    return ("-" if value < 0 else "") + human_bytes(abs(value))


def columns(report: dict[str, Any]) -> tuple[str, ...]:
    cols: tuple[str, ...] = COLUMNS
    if any(n.get("disk") for n in report["nodes"]):
        cols += DISK_COLUMNS
    if any("clean" in n for n in report["nodes"]):
        cols += ("CLEAN",)
    return cols


def rows(report: dict[str, Any]) -> list[list[str]]:
    disk_columns = DISK_COLUMNS[0] in columns(report)
    out = []
    for n in report["nodes"]:
        row = [n["host"], human_bytes(n["allocated"]), str(n["files"]),
               human_bytes(n["reclaimable"]), _headroom(n), str(n["problems"]),
               _last_clean(n), n["version"] or "?"]
        if disk_columns:
            d = n.get("disk") or {}
            row += [_bytes(d.get("free")), _signed(d.get("worst_case_free"))]
        if "clean" in n:
            row.append(_clean(n["clean"]))
        out.append(row)
    return out


def totals_line(report: dict[str, Any]) -> str:
    t = report["totals"]
    line = (f"fleet: {t['nodes']} nodes, {t['reporting']} reporting, {t['unreachable']} "
            f"unreachable, {t['failed']} failed; cache {human_bytes(t['allocated'])} in "
            f"{t['files']} files, reclaimable {human_bytes(t['reclaimable'])}, "
            f"{t['over_budget']} over budget, {t['problems']} problems "
            f"({report['seconds']:.1f} s)")
    if t["with_disk_report"]:
        line += (f"\ndisk: {t['with_disk_report']} nodes with `disk report`, "
                 f"{t['worst_case_short']} short in the worst case, "
                 f"{t['disk_critical']} critical findings")
    if "clean" in t:
        c = t["clean"]
        line += (f"\nclean: removed {c['removed']} files, freed {human_bytes(c['freed'])} on "
                 f"{c['nodes_cleaned']} nodes; {c['nodes_failed']} failed, "
                 f"{c['nodes_not_run']} not run")
    return line


def table(report: dict[str, Any], out: Console) -> None:
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in columns(report):
        t.add_column(name, justify="right" if name in ("CACHE", "FILES", "RECLAIMABLE",
                                                       "HEADROOM", "PROBLEMS", *DISK_COLUMNS)
                     else "left")
    for row in rows(report):
        t.add_row(*row)
    out.print(t)
    for d in report["down"]:
        clean = f" (clean: {d['clean']['status']})" if "clean" in d else ""
        out.print(f"{d['state'].upper():11} {d['host']}: {d['reason']}{clean}", markup=False,
                  highlight=False)
    for n in report["nodes"]:
        c = n.get("clean")
        if c and c["status"] == "failed":
            out.print(f"CLEAN FAILED {n['host']}: {c.get('reason', '')}", markup=False,
                      highlight=False)
    out.print(totals_line(report), markup=False, highlight=False)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.over td{background:#fde8e8} tr.down td{background:#fff4d6}
.totals{font-weight:600} pre{margin:0;font-size:12px}
"""


def html_page(report: dict[str, Any]) -> str:
    """One file, no scripts, no links: the styles are inline, opens anywhere."""
    e = html.escape
    t = report["totals"]
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>novakeeper fleet report</title>", f"<style>{_CSS}</style>",
             "</head><body>", "<h1>novakeeper fleet report</h1>",
             f"<p>generated {e(_when(report['generated']))}</p>",
             f'<p class="totals" id="totals">{e(totals_line(report))}</p>']
    parts.append('<table id="nodes"><thead><tr>'
                 + "".join(f"<th>{e(c)}</th>" for c in columns(report)) + "</tr></thead><tbody>")
    numeric = {1, 2, 3, 4, 5}
    for n, row in zip(report["nodes"], rows(report), strict=True):
        cls = ' class="over"' if (n["headroom"] or 0) < 0 else ""
        cells = "".join(f'<td class="n">{e(v)}</td>' if i in numeric else f"<td>{e(v)}</td>"
                        for i, v in enumerate(row))
        parts.append(f'<tr{cls} data-host="{e(n["host"])}" data-reclaimable='
                     f'"{n["reclaimable"]}" data-allocated="{n["allocated"]}">{cells}</tr>')
    parts.append("</tbody></table>")
    if report["down"]:
        parts.append('<h2>Not reporting</h2><table id="down"><thead><tr><th>NODE</th>'
                     "<th>STATE</th><th>REASON</th></tr></thead><tbody>")
        for d in report["down"]:
            parts.append(f'<tr class="down" data-host="{e(d["host"])}"><td>{e(d["host"])}</td>'
                         f"<td>{e(d['state'])}</td><td>{e(d['reason'])}</td></tr>")
        parts.append("</tbody></table>")
    problems = [(n["host"], line) for n in report["nodes"] for line in n["problem_lines"]]
    if problems:
        parts.append('<h2>Problems</h2><table id="problems"><tbody>')
        parts += [f"<tr><td>{e(h)}</td><td>{e(line)}</td></tr>" for h, line in problems]
        parts.append("</tbody></table>")
    findings = [(n["host"], f) for n in report["nodes"]
                for f in ((n.get("disk_report") or {}).get("findings") or [])
                if isinstance(f, dict)]
    if findings:
        parts.append('<h2>Disk findings</h2><table id="disk-findings"><thead><tr><th>NODE</th>'
                     "<th>SEVERITY</th><th>FINDING</th><th>WHAT TO DO</th></tr></thead><tbody>")
        parts += [f"<tr><td>{e(h)}</td><td>{e(str(f.get('severity', '')))}</td>"
                  f"<td>{e(str(f.get('message', '')))}</td><td>{e(str(f.get('action', '')))}"
                  "</td></tr>" for h, f in findings]
        parts.append("</tbody></table>")
    parts.append(f"<p>{t['with_disk_report']} of {t['reporting']} nodes answered "
                 "<code>disk report</code>.</p></body></html>")
    return "\n".join(parts) + "\n"


def fetch_table(data: dict[str, Any], out: Console) -> None:
    """`fleet fetch`: one line per node and image, then the failures and the totals."""
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("NODE", "IMAGE", "ACTION", "BYTES", "PATH"):
        t.add_column(name, justify="right" if name == "BYTES" else "left")
    for n in data["done"] + data["failed"]:
        for f in n["fetched"]:
            t.add_row(n["host"], f["image_id"], f["action"], _bytes(f["bytes"]), f["path"])
    out.print(t)
    for n in data["failed"]:
        out.print(f"FAILED      {n['host']}: {n['reason']}", markup=False, highlight=False)
    for d in data["down"]:
        out.print(f"{d['state'].upper():11} {d['host']}: {d['reason']}", markup=False,
                  highlight=False)
    tot = data["totals"]
    out.print(f"{len(data['done'])} of {data['nodes']} nodes done: {tot['fetched']} fetched "
              f"({human_bytes(tot['bytes'])}), {tot['present']} already present; "
              f"{len(data['failed'])} failed, {len(data['down'])} unreachable",
              markup=False, highlight=False)
