"""Rendering is separate from deciding: the same Plan prints as a table, as JSON, or as log
lines in nova's own words.

rich is imported by the functions that draw tables, not here: `cache plan --json` comes
here only for the log lines and needs none of it (about 15 ms of imports)."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from novakeeper.cache.inventory import Inventory
from novakeeper.cache.plan import Decision, Plan, Verdict
from novakeeper.state.journal import Entry, JournalEntry
from novakeeper.units import human_age, human_bytes

if TYPE_CHECKING:  # annotations only: locks would bring oslo.concurrency with it
    from rich.console import Console

    from novakeeper.cache.locks import OrphanLock
    from novakeeper.cache.storage import Registry

LOG = logging.getLogger("novakeeper.cache")

# Order rows the way an operator reads them: what will go first, then why things stay.
VERDICT_ORDER = {v: i for i, v in enumerate([
    Verdict.REMOVE, Verdict.EVICT, Verdict.STALE_PARTIAL, Verdict.HELD, Verdict.TOO_YOUNG,
    Verdict.DOWNLOADING, Verdict.PINNED, Verdict.LAST_COPY, Verdict.IN_USE,
    Verdict.KEPT_BY_CONFIG, Verdict.UNKNOWN,
])}
VERDICT_STYLE = {
    Verdict.REMOVE: "bold red", Verdict.EVICT: "bold red", Verdict.STALE_PARTIAL: "red",
    Verdict.HELD: "bold yellow", Verdict.TOO_YOUNG: "cyan", Verdict.DOWNLOADING: "cyan",
    Verdict.PINNED: "blue", Verdict.IN_USE: "green", Verdict.KEPT_BY_CONFIG: "blue",
    Verdict.UNKNOWN: "magenta", Verdict.LAST_COPY: "bold blue",
}


def sorted_decisions(plan: Plan) -> list[Decision]:
    """By verdict; evictions in the order they were chosen (least recently used first)."""
    return sorted(plan.decisions, key=lambda d: (
        VERDICT_ORDER[d.verdict], *(d.eviction_key() if d.verdict is Verdict.EVICT
                                    else (False, 0, d.name))))


def last_used_cell(d: Decision, now: float) -> str:
    if d.verdict is Verdict.IN_USE:
        return "now"
    if d.last_used is None:
        return "never"
    return f"{human_age(now - d.last_used)} ago"


def budget_lines(plan: Plan) -> list[str]:
    """The budget verdict and the plan's notes, as lines under the table."""
    lines = []
    if plan.budget is not None:
        lines.append(f"budget: {plan.budget.words()}")
    if plan.trash:
        due = plan.trash_due()
        held = sum(t.allocated for t in plan.trash)
        lines.append(f"trash: {len(plan.trash)} files, {human_bytes(held)}; {len(due)} past "
                     f"their grace period ({human_bytes(sum(t.frees for t in due))}), "
                     "unlinked by the next clean; `cache restore NAME` puts one back")
    lines += [f"note: {n}" for n in plan.notes]
    return lines


def summary_line(plan: Plan) -> str:
    counts = plan.by_verdict()
    kept = ", ".join(
        f"{counts[v]} {v}" for v in VERDICT_ORDER if counts[v] and not v.removes
    )
    return (
        f"{len(plan.removals)} of {len(plan.decisions)} files to remove, "
        f"frees {human_bytes(plan.frees)}; kept: {kept or 'nothing'}; "
        f"{plan.disks_seen} disks in {plan.folders_seen} folders, "
        f"{len(plan.problems)} problems"
    )


def _users_cell(d: Decision) -> str:
    if not d.users:
        return "-"
    if len(d.users) == 1:
        return d.users[0]
    return f"{d.users[0]} +{len(d.users) - 1}"


def image_cell(d: Decision) -> str:
    """`name (status)` of the base's Glance image; `-` when Glance never listed it."""
    if d.image is None:
        return "-"
    return f"{d.image.name or d.image.image_id} ({d.image.status})"


def plan_table(plan: Plan, console: Console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("VERDICT", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("FILE", overflow="fold")
    table.add_column("AGE", justify="right", no_wrap=True)
    table.add_column("FREES", justify="right", no_wrap=True)
    table.add_column("USERS", no_wrap=True)
    table.add_column("SEEN BY", no_wrap=True)
    with_budget = plan.budget is not None
    if with_budget:
        table.add_column("LAST USED", justify="right", no_wrap=True)
    with_images = any(d.image is not None for d in plan.decisions)
    if with_images:
        table.add_column("IMAGE", overflow="fold")
    table.add_column("REASON", overflow="fold")
    for d in sorted_decisions(plan):
        cells = [
            f"[{VERDICT_STYLE[d.verdict]}]{d.verdict}[/]",
            str(d.kind),
            d.name,
            human_age(d.age),
            human_bytes(d.frees) if d.removes else "-",
            _users_cell(d),
            ",".join(d.sources) or "-",
        ]
        if with_budget:
            cells.append(last_used_cell(d, plan.now))
        if with_images:
            cells.append(image_cell(d))
        table.add_row(*cells, d.reason)
    console.print(table)
    problems_block(plan, console)
    console.print(summary_line(plan), highlight=False)
    for line in budget_lines(plan):
        console.print(line, highlight=False, markup=False)


def problems_block(plan: Plan, console: Console) -> None:
    if not plan.problems:
        return
    console.print(f"[bold yellow]{len(plan.problems)} problems met while scanning:[/]")
    for p in plan.problems[:50]:
        console.print(f"  {p.line()}", highlight=False, markup=False)
    if len(plan.problems) > 50:
        console.print(f"  ... and {len(plan.problems) - 50} more (see --json)")


def status_data(inventory: Inventory, plan: Plan, registry: Registry | None = None,
                orphans: list[OrphanLock] | None = None) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"files": 0, "size": 0,
                                                              "allocated": 0})
    for b in inventory.bases:
        row = by_kind[str(b.kind)]
        row["files"] += 1
        row["size"] += b.size
        row["allocated"] += b.allocated
    by_verdict: dict[str, dict[str, int]] = defaultdict(lambda: {"files": 0, "allocated": 0})
    for d in plan.decisions:
        row = by_verdict[str(d.verdict)]
        row["files"] += 1
        row["allocated"] += d.allocated
    disk_formats = Counter(d.format for d in inventory.disks)
    return {
        "instances_path": inventory.instances_path,
        "cache_path": inventory.cache_path,
        "cache_real_path": inventory.cache_real_path,
        "files": len(inventory.bases),
        "size": sum(b.size for b in inventory.bases),
        "allocated": sum(b.allocated for b in inventory.bases),
        "reclaimable": plan.frees,
        "by_kind": dict(sorted(by_kind.items())),
        "by_verdict": dict(sorted(by_verdict.items())),
        "instance_folders": inventory.folders,
        "disks": len(inventory.disks),
        "disks_by_format": dict(sorted(disk_formats.items())),
        "problems": [p.line() for p in inventory.problems],
        "budget": plan.budget.to_dict() if plan.budget is not None else None,
        "notes": list(plan.notes),
        "trash": [t.to_dict(plan.trash_grace) for t in plan.trash],
        "footer": [x for x in budget_lines(plan) if not x.startswith("budget: ")],
        "storage": registry.to_dict() if registry is not None else None,
        "orphaned_locks": [{"path": o.path, "name": o.name, "age_seconds": round(o.age)}
                           for o in (orphans or [])],
        "images": images_data(plan),
    }


def images_data(plan: Plan) -> list[dict[str, Any]]:
    """One row per Glance image with bases here: Glance's word, the files, their bytes,
    the verdicts and the instances that name a gone image."""
    rows: dict[str, dict[str, Any]] = {}
    for d in plan.decisions:
        if d.image is None:
            continue
        row = rows.setdefault(d.image.image_id, {
            **d.image.to_dict(), "files": [], "allocated": 0, "verdicts": [],
            "named_by": []})
        row["files"].append(d.name)
        row["allocated"] += d.allocated
        if str(d.verdict) not in row["verdicts"]:
            row["verdicts"].append(str(d.verdict))
        row["named_by"] += [x for x in d.named_by if x not in row["named_by"]]
    return sorted(rows.values(), key=lambda r: (r["status"] not in ("deleted", "deactivated"),
                                                 r["name"] or "", r["id"]))


def images_text(rows: list[dict[str, Any]], c: Console) -> None:
    from rich import box
    from rich.table import Table

    if not rows:
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("IMAGE", "ID", "STATUS", "VISIBILITY", "HASH", "FILES", "ALLOCATED",
                "VERDICTS"):
        table.add_column(col, overflow="fold")
    for r in rows:
        digest = (f"{r['os_hash_algo']}:{r['os_hash_value'][:16]}..."
                  if r["os_hash_algo"] and r["os_hash_value"] else "-")
        table.add_row(r["name"] or "-", r["id"], r["status"], r["visibility"] or "-", digest,
                      str(len(r["files"])), human_bytes(r["allocated"]),
                      ",".join(r["verdicts"]))
    c.print(table)


def status_text(data: dict[str, Any], console: Console) -> None:
    from rich import box
    from rich.table import Table

    c = console
    c.print(f"cache        {data['cache_path']}", highlight=False, markup=False)
    if data["cache_real_path"] != data["cache_path"]:
        c.print(f"             (a link to {data['cache_real_path']})", highlight=False,
                markup=False)
    c.print(
        f"files        {data['files']}: {human_bytes(data['allocated'])} allocated, "
        f"{human_bytes(data['size'])} apparent", highlight=False)
    c.print(f"reclaimable  {human_bytes(data['reclaimable'])} (what `cache clean` would free now)",
            highlight=False)
    formats = ", ".join(f"{n} {fmt}" for fmt, n in data["disks_by_format"].items())
    c.print(f"instances    {data['instance_folders']} folders, {data['disks']} disks"
            + (f" ({formats})" if formats else ""), highlight=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=None)
    table.add_column("KIND")
    table.add_column("FILES", justify="right")
    table.add_column("ALLOCATED", justify="right")
    table.add_column("APPARENT", justify="right")
    for kind, row in data["by_kind"].items():
        table.add_row(kind, str(row["files"]), human_bytes(row["allocated"]),
                      human_bytes(row["size"]))
    c.print(table)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("VERDICT")
    table.add_column("FILES", justify="right")
    table.add_column("ALLOCATED", justify="right")
    for verdict, row in data["by_verdict"].items():
        table.add_row(verdict, str(row["files"]), human_bytes(row["allocated"]))
    c.print(table)
    images_text(data.get("images", []), c)
    _budget_text(data["budget"], c)
    for line in data.get("footer", []):
        c.print(line, highlight=False, markup=False)
    _storage_text(data, c)
    problems = data["problems"]
    c.print(f"problems     {len(problems)}", highlight=False)
    for line in problems[:20]:
        c.print(f"  {line}", highlight=False, markup=False)
    if len(problems) > 20:
        c.print(f"  ... and {len(problems) - 20} more (see --json)")


def _budget_text(budget: dict[str, Any] | None, c: Console) -> None:
    if budget is None:
        c.print("budget       none set (see [novakeeper] max_cache_size, high_watermark, "
                "min_free_space)", highlight=False, markup=False)
        return
    fs = budget["file_system"]
    if fs is not None:
        c.print(f"file system  {human_bytes(fs['used'])} of {human_bytes(fs['size'])} used "
                f"({fs['used_percent']:.1f}%), {human_bytes(fs['avail'])} free",
                highlight=False)
    headroom = budget["headroom"]
    if headroom is not None:
        state = "OVER BUDGET by " + human_bytes(-headroom) if headroom < 0 else (
            human_bytes(headroom) + " before eviction starts")
        c.print(f"headroom     {state}", highlight=False, markup=False)
    for lim in budget["limits"]:
        c.print(f"  {lim['name']:<16} {lim['words']}; headroom {human_bytes(lim['headroom'])}",
                highlight=False, markup=False)
    c.print(f"budget       {budget['words']}", highlight=False, markup=False)


def _storage_text(data: dict[str, Any], c: Console) -> None:
    storage = data.get("storage")
    if storage is not None:
        users = storage["users"]
        if storage["error"]:
            c.print(f"storage      {storage['error']}", highlight=False, markup=False)
        elif not users:
            c.print("storage      no compute_nodes registry: nova's cache manager has not "
                    "registered a host here", highlight=False, markup=False)
        else:
            now = time.time()
            active = sum(1 for u in users if not u["stale"])
            shared = "SHARED storage: " if storage["shared"] else ""
            c.print(f"storage      {shared}{len(users)} compute hosts registered in "
                    f"compute_nodes, {active} active:", highlight=False, markup=False)
            for u in users:
                state = ("STALE: silent for over 24 h; nova no longer counts it, its "
                         "instance folders still protect their bases") if u["stale"] else "active"
                c.print(f"  {u['host']:<24} last registered "
                        f"{human_age(now - u['last_seen'])} ago, {state}",
                        highlight=False, markup=False)
    orphans = data.get("orphaned_locks") or []
    if orphans:
        c.print(f"lock files   {len(orphans)} nova lock files for bases long gone (safe to "
                "remove; nova recreates any it needs):", highlight=False, markup=False)
        for o in orphans[:10]:
            c.print(f"  {o['path']} ({human_age(o['age_seconds'])} old)", highlight=False,
                    markup=False)
        if len(orphans) > 10:
            c.print(f"  ... and {len(orphans) - 10} more (see --json)")


def log_plan(plan: Plan) -> None:
    """The pass in nova's words, so greps and alerts written for nova keep working."""
    active = [d.path for d in plan.decisions if d.verdict is Verdict.IN_USE]
    removable = [d.path for d in plan.decisions if d.removes]
    for p in plan.problems:
        LOG.warning("Problem: %s", p.line())
    for d in plan.decisions:
        if d.corrupt and d.verdict is Verdict.IN_USE:
            LOG.error("In-use base file is CORRUPT: %s (%s); instances at risk: %s", d.path,
                      d.corrupt, " ".join(d.users) or "unknown")
        if d.verdict is Verdict.UNKNOWN:
            LOG.warning("Unknown base file: %s", d.path)
        elif d.verdict is Verdict.HELD:
            LOG.warning("Base file held, not removed: %s (%s)", d.path, d.reason)
    if active:
        LOG.info("Active base files: %s", " ".join(active))
    if removable:
        LOG.info("Removable base files: %s", " ".join(removable))
    for d in plan.decisions:
        if d.verdict is Verdict.TOO_YOUNG:
            LOG.info("Base file too young to remove: %s", d.path)
        elif d.verdict is Verdict.EVICT:
            LOG.info("Base file chosen for eviction: %s (%s)", d.path, d.reason)
        elif d.verdict is Verdict.PINNED:
            LOG.info("Base file pinned, kept: %s (%s)", d.path, d.reason)
        elif d.verdict is Verdict.LAST_COPY:
            LOG.warning("Base file is the last copy of an image gone from Glance, kept: "
                        "%s (%s)", d.path, d.reason)
    if plan.budget is not None and plan.budget.need:
        level = logging.WARNING if plan.budget.shortfall else logging.INFO
        LOG.log(level, "Cache budget: %s", plan.budget.words())
    for note in plan.notes:
        LOG.debug("Plan note: %s", note)


def pins_table(rows: list[dict[str, Any]], console: Console) -> None:
    from rich import box
    from rich.table import Table

    if not rows:
        console.print("no pins")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("KIND", "PIN", "SOURCE", "FILES KEPT", "NOTE"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = row["value"] + (f" (cache name {row['hash']})" if row["hash"] else "")
        table.add_row(row["kind"], value, row["source"], "\n".join(row["files"]) or "-",
                      row["note"] or "")
    console.print(table)


def history_table(entries: list[JournalEntry], console: Console) -> None:
    """The journal, oldest first; an interrupted removal stands out."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    if not entries:
        console.print("no removals recorded")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("TIME", no_wrap=True)
    table.add_column("OUTCOME", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("FILE", overflow="fold")
    table.add_column("FREED", justify="right", no_wrap=True)
    table.add_column("VERDICT", no_wrap=True)
    table.add_column("REASON", overflow="fold")
    freed = 0
    for e in entries:
        style = {"removed": "", "started": "bold yellow"}.get(str(e.outcome), "yellow")
        outcome = f"[{style}]{e.outcome}[/]" if style else str(e.outcome)
        reason = e.reason + (f" [{e.detail}]" if e.detail else "")
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.started)), outcome,
                      e.kind, e.name, human_bytes(e.bytes), e.verdict, escape(reason))
        if e.outcome in (Entry.REMOVED, Entry.RECOVERED_REMOVED):
            freed += e.bytes
    console.print(table)
    console.print(f"{len(entries)} entries; {human_bytes(freed)} freed", highlight=False)
