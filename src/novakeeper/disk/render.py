"""The disk report drawn: a rich table for the terminal and a self-contained HTML page
(inline CSS and SVG, no script, no font or asset from elsewhere: it opens offline)."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from novakeeper.disk.accounting import GIB, DiskReport, InstanceRow
from novakeeper.disk.survey import Other
from novakeeper.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
OTHER_WORDS = {Other.CONSOLE_LOGS: "console logs", Other.LOGS: "logs",
               Other.DELETED: "_del folders", Other.RESIZE: "_resize folders",
               Other.OTHER: "other files"}


def signed_bytes(n: int) -> str:
    return f"-{human_bytes(-n)}" if n < 0 else human_bytes(n)


def _oc(row: InstanceRow) -> str:
    if not row.counted:
        return "- (no domain)"
    if row.unknown:
        return "?"
    if row.missing:
        return "0 (missing disk)"
    return signed_bytes(row.over_commit)


def _disk_words(row: InstanceRow) -> str:
    parts = []
    for d in row.disks:
        if d.over_commit is None:
            parts.append(f"{d.name} ? ({d.note})")
            continue
        base = ""
        if d.base is not None:
            name = d.base[:12] if len(d.base) == 40 else d.base  # a sha1 cache name
            base = f" on {name}{' (shared)' if d.base_shared else ''}"
        parts.append(f"{d.name} {d.format} {human_bytes(d.virtual_size)}{base}")
    return "; ".join(parts)


def node_lines(r: DiskReport) -> list[tuple[str, str]]:
    """(label, value) pairs of the node's totals: the table's top half and the page's."""
    fs = r.fs
    cache_where = "same file system" if r.cache_shares else f"own file system {r.cache_fs.path}"
    lines = [
        ("file system", f"{human_bytes(fs.total)} size, {human_bytes(fs.used)} used, "
                        f"{human_bytes(fs.free)} free, {human_bytes(fs.reserved)} reserved "
                        f"for root ({fs.path})"),
        ("cache", f"{human_bytes(r.cache.total)} in {r.cache.files} files ({cache_where}): "
                  f"{human_bytes(r.cache.reclaimable)} reclaimable now, "
                  f"{human_bytes(r.cache.in_use)} in use, {human_bytes(r.cache.kept)} kept"),
        ("instance disks", f"{human_bytes(r.instance_bytes)} allocated in "
                           f"{len(r.instances)} instances"),
        ("other files", f"{human_bytes(r.other_bytes)}: " + ", ".join(
            f"{OTHER_WORDS[k]} {human_bytes(v)}" for k, v in r.other.items() if v)),
        ("outside instances_path", human_bytes(r.outside_bytes)),
        ("over-commit", f"{signed_bytes(r.over_commit)} (nova's arithmetic"
                        + (f"; {r.unknown_disks} disks unknown" if r.unknown_disks else "")
                        + ")"),
        ("disk_available_least", f"{r.disk_available_least_reported} GiB as nova reports it "
                                 f"({r.disk_available_least:.2f})"),
        ("worst case", f"{signed_bytes(r.worst_case_free)} free if every disk grows to its "
                       "virtual size"),
    ]
    s = r.scheduler
    lines.append(("scheduler", (
        f"placement DISK_GB {s.local_gb} - {s.reserved_gb} reserved × {s.allocation_ratio:g}"
        f" = {s.capacity_gb:g}, ~{s.used_gb:g} used; host state free {s.host_free_gb} GiB")))
    if s.flavor_gb is not None:
        lines.append((f"fits {s.flavor_gb} GiB", (
            f"{s.fits_placement} by placement, {s.fits_host_state} by the host state, "
            f"{s.fits_disk_now} by the real disk now, {s.fits_disk_worst} once every disk "
            "has grown")))
    return lines


def print_report(r: DiskReport, out: Console, sort: str, top: int | None) -> None:
    from rich.table import Table

    node = Table(show_header=False, box=None, pad_edge=False)
    node.add_column(style="bold")
    node.add_column()
    for label, value in node_lines(r):
        node.add_row(label, value)
    out.print(node)
    rows = r.sorted_rows(sort, top)
    table = Table(title=f"instances by {sort}" + (f" (top {top})" if top else ""),
                  title_justify="left")
    for col, just in (("instance", "left"), ("disks", "right"), ("virtual", "right"),
                      ("allocated", "right"), ("over-commit", "right"), ("detail", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row.instance, str(len(row.disks) + len(row.missing)),
                      human_bytes(row.virtual_size), human_bytes(row.allocated), _oc(row),
                      _disk_words(row))
    out.print(table)
    if len(rows) < len(r.instances):
        out.print(f"{len(r.instances) - len(rows)} more instances not shown (--top)")
    for f in r.findings:
        out.print(f"[{SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/]: {f.message}",
                  highlight=False)
        out.print(f"  fix: {f.action}", highlight=False, markup=False)
    if not r.findings:
        out.print("no findings")


# -- HTML -------------------------------------------------------------------------------

COLOURS = {"reclaimable": "#e8a33d", "cache": "#8c6bb1", "instances": "#3b7dd8",
           "other": "#9e9e9e", "reserved": "#616161", "free": "#cfe8cf", "over-commit": "#d9534f"}

CSS = """
body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;font-size:.9em}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even){background:#f4f4f4}
.legend span{display:inline-block;margin-right:1.2em;font-size:.85em}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}
.critical{color:#b00}.warning{color:#a60}.info{color:#06c}
.finding{margin:.5em 0}.fix{margin-left:1.5em;font-size:.9em;color:#444}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def disk_segments(r: DiskReport) -> list[tuple[str, str, int]]:
    """(key, words, bytes) of the stacked bar of the file system under instances_path,
    left to right; the over-commit is drawn past the end of the disk."""
    cache_kept = r.cache.total - r.cache.reclaimable if r.cache_shares else 0
    reclaimable = r.cache.reclaimable if r.cache_shares else 0
    return [
        ("reclaimable", "cache reclaimable", reclaimable),
        ("cache", "cache in use or kept", cache_kept),
        ("instances", "instance disks allocated", r.instance_bytes),
        ("other", "other files", r.other_bytes + r.outside_bytes),
        ("reserved", "reserved for root", r.fs.reserved),
        ("free", "free", r.fs.free),
    ]


def _stacked_bar(r: DiskReport) -> str:
    segments = disk_segments(r)
    disk = max(r.fs.total, 1)
    over = max(r.over_commit, 0)
    width = 1000.0
    scale = width / max(disk, disk + over) if over else width / disk
    x = 0.0
    parts = []
    for key, words, size in segments:
        w = size * scale
        parts.append(
            f'<rect data-segment="{key}" data-bytes="{size}" x="{x:.2f}" y="10" '
            f'width="{w:.2f}" height="40" fill="{COLOURS[key]}">'
            f"<title>{_e(words)}: {_e(human_bytes(size))}</title></rect>")
        x += w
    end = disk * scale
    if over:
        parts.append(
            f'<rect data-segment="over-commit" data-bytes="{over}" x="{end:.2f}" y="10" '
            f'width="{over * scale:.2f}" height="40" fill="{COLOURS["over-commit"]}" '
            f'fill-opacity="0.6"><title>over-commit: {_e(human_bytes(over))}</title></rect>')
    parts.append(f'<line x1="{end:.2f}" y1="0" x2="{end:.2f}" y2="60" stroke="#000" '
                 'stroke-width="2"/>')
    legend = "".join(
        f'<span><i style="background:{COLOURS[key]}"></i>{_e(words)} '
        f'<b data-legend="{key}">{_e(human_bytes(size))}</b></span>'
        for key, words, size in segments)
    legend += (f'<span><i style="background:{COLOURS["over-commit"]}"></i>over-commit past '
               f'the end of the disk <b data-legend="over-commit">'
               f"{_e(signed_bytes(r.over_commit))}</b></span>")
    return (f'<svg id="disk-bar" viewBox="0 0 {width:.0f} 60" width="100%" height="60" '
            f'preserveAspectRatio="none" role="img" '
            f'aria-label="disk under {_e(r.instances_path)}">{"".join(parts)}</svg>'
            f'<div class="legend">{legend}</div>')


def _instance_bar(row: InstanceRow, largest: int) -> str:
    w_virtual = 300.0 * row.virtual_size / largest if largest else 0.0
    w_alloc = 300.0 * min(row.allocated, max(row.virtual_size, row.allocated)) / largest \
        if largest else 0.0
    return (f'<svg width="310" height="14" data-virtual="{row.virtual_size}" '
            f'data-allocated="{row.allocated}">'
            f'<rect x="0" y="2" width="{w_virtual:.1f}" height="10" fill="#dde6f5"/>'
            f'<rect x="0" y="2" width="{min(w_alloc, 300.0):.1f}" height="10" '
            f'fill="{COLOURS["instances"]}"/></svg>')


def to_html(r: DiskReport, sort: str = "over-commit", top: int | None = None) -> str:
    rows = r.sorted_rows(sort, top)
    largest = max((max(row.virtual_size, row.allocated) for row in rows), default=0)
    node = "".join(f'<tr><th>{_e(label)}</th><td data-field="{_e(label)}">{_e(value)}</td></tr>'
                   for label, value in node_lines(r))
    figures = (
        f'<tr><th>size</th><td class="n" id="fs-size">{r.fs.total}</td></tr>'
        f'<tr><th>free</th><td class="n" id="fs-free">{r.fs.free}</td></tr>'
        f'<tr><th>over-commit</th><td class="n" id="over-commit">{r.over_commit}</td></tr>'
        f'<tr><th>disk_available_least</th><td class="n" id="disk-available-least">'
        f"{r.disk_available_least_reported}</td></tr>"
        f'<tr><th>worst-case free</th><td class="n" id="worst-case-free">'
        f"{r.worst_case_free}</td></tr>")
    inst = "".join(
        f'<tr data-instance="{_e(row.instance)}"><td>{_e(row.instance)}</td>'
        f'<td class="n" data-col="virtual">{_e(human_bytes(row.virtual_size))}</td>'
        f'<td class="n" data-col="allocated">{_e(human_bytes(row.allocated))}</td>'
        f'<td class="n" data-col="over-commit" data-bytes="{row.over_commit}">{_e(_oc(row))}</td>'
        f"<td>{_instance_bar(row, largest)}</td><td>{_e(_disk_words(row))}</td></tr>"
        for row in rows)
    found = "".join(
        f'<div class="finding {_e(f.severity)}" data-code="{_e(f.code)}"><b>{_e(f.severity)}'
        f'</b>: {_e(f.message)}<div class="fix">fix: {_e(f.action)}</div></div>'
        for f in r.findings) or "<p>no findings</p>"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.generated_at))
    more = (f"<p>{len(r.instances) - len(rows)} more instances not shown</p>"
            if len(rows) < len(r.instances) else "")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>novakeeper disk report: {_e(r.instances_path)}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Disk report: {_e(r.instances_path)}</h1><p>{_e(stamp)}; "
        f"{GIB // GIB} GiB = 1024³ bytes</p>"
        f"<h2>The disk</h2>{_stacked_bar(r)}"
        f"<h2>Findings</h2><div id=\"findings\">{found}</div>"
        f"<h2>Node</h2><table id=\"node\">{node}</table>"
        f"<h2>Figures (bytes)</h2><table id=\"figures\">{figures}</table>"
        f"<h2>Instances by {_e(sort)}</h2><table id=\"instances\"><tr><th>instance</th>"
        "<th class=\"n\">virtual</th><th class=\"n\">allocated</th>"
        "<th class=\"n\">over-commit</th><th>allocated / virtual</th><th>disks</th></tr>"
        f"{inst}</table>{more}</body></html>")
