"""One fleet report from each node's answers: pure data, no Ansible, no output.

A node's figures are its own `cache status --json` (and `disk report --json` where the
node has that command), its version and the last clean in its journal. Nodes Ansible
could not reach, or where a command failed, are listed with Ansible's reason. The worst
off come first: over budget (the most over first), then the most problems, then the
most reclaimable.
"""

from __future__ import annotations

import json
import time
from typing import Any

from novakeeper.fleet.runner import HostRun, PlaybookRun

REMOVED_OUTCOMES = {"removed", "purged", "removed-after-crash"}
CLEAN_OK_EXITS = {0, 6, 10, 11}
"""cache clean's exits that are not failures (as in novakeeper-cache-clean.service)."""


def _json(res: dict[str, Any] | None) -> Any:
    if not res:
        return None
    try:
        return json.loads(str(res.get("stdout", "")))
    except ValueError:
        return None


def _version(res: dict[str, Any] | None) -> str | None:
    text = str((res or {}).get("stdout", "")).strip()
    return text.split()[-1] if text else None


def last_clean(history: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last run in the node's removal journal: when, what it removed and freed, and
    its outcome (ok, or how many removals failed)."""
    entries = (history or {}).get("entries") or []
    if not entries:
        return None
    run = entries[-1]["run"]
    mine = [e for e in entries if e["run"] == run]
    failed = sum(1 for e in mine if e["outcome"] == "failed")
    return {
        "run": run,
        "at": max(e.get("finished") or e["started"] for e in mine),
        "removed": sum(1 for e in mine if e["outcome"] in REMOVED_OUTCOMES),
        "freed": sum(e["bytes"] for e in mine if e["outcome"] in REMOVED_OUTCOMES),
        "failed": failed,
        "outcome": "ok" if not failed else f"{failed} failed",
    }


def clean_outcome(run: HostRun | None) -> dict[str, Any]:
    """What `fleet clean` did on one node."""
    if run is None:
        return {"status": "not run", "reason": "the run stopped before this node "
                "(an earlier node failed; --keep-going goes on)"}
    if run.unreachable is not None:
        return {"status": "unreachable", "reason": run.unreachable}
    res = run.results.get("cache clean", {})
    data = _json(res) or {}
    result = data.get("result") or {}
    outcomes = result.get("outcomes") or []
    out = {
        "status": "failed" if run.failure else "cleaned",
        "exit": res.get("rc"),
        "removed": result.get("removed", 0),
        "trashed": result.get("trashed", 0),
        "freed": result.get("freed", 0),
        "failed": result.get("failed", 0),
        "skipped": result.get("skipped", 0),
        "removed_names": sorted(o["name"] for o in outcomes
                                if o["action"] in ("removed", "trashed")),
    }
    if run.failure:
        out["reason"] = run.failure
    return out


def node(run: HostRun) -> dict[str, Any]:
    """One reachable node's figures, from its commands' JSON."""
    status = _json(run.results.get("cache status")) or {}
    budget = status.get("budget") or {}
    problems = status.get("problems") or []
    disk = _json(run.results.get("disk report"))
    return {
        "host": run.host,
        "version": _version(run.results.get("version")),
        "cache_path": status.get("cache_path"),
        "files": status.get("files", 0),
        "allocated": status.get("allocated", 0),
        "size": status.get("size", 0),
        "reclaimable": status.get("reclaimable", 0),
        "headroom": budget.get("headroom"),
        "need": budget.get("need", 0),
        "binding": budget.get("binding"),
        "instance_folders": status.get("instance_folders", 0),
        "disks": status.get("disks", 0),
        "problems": len(problems),
        "problem_lines": problems[:20],
        "orphaned_locks": len(status.get("orphaned_locks") or []),
        "last_clean": last_clean(_json(run.results.get("cache history"))),
        "disk": disk_figures(disk),
        "disk_report": ({k: v for k, v in disk.items() if k != "instances"}
                        if isinstance(disk, dict) else None),
    }


def disk_figures(disk: Any) -> dict[str, Any] | None:
    """The few `disk report` figures the fleet table shows (None: the node's novakeeper
    has no `disk report`, or it failed). The whole report, less its per-instance rows, is
    in `disk_report`."""
    if not isinstance(disk, dict):
        return None
    fs = disk.get("file_system") or {}
    findings = disk.get("findings") or []
    return {
        "free": fs.get("free"),
        "over_commit": (disk.get("over_commit") or {}).get("total"),
        "worst_case_free": (disk.get("worst_case") or {}).get("free"),
        "disk_available_least": (disk.get("nova") or {}).get("disk_available_least_reported"),
        "findings": [f.get("code") for f in findings if isinstance(f, dict)],
        "critical": sum(1 for f in findings
                        if isinstance(f, dict) and f.get("severity") == "critical"),
    }


def worst_first(n: dict[str, Any]) -> tuple[int, float, int, int, str]:
    headroom = n["headroom"]
    over = headroom is not None and headroom < 0
    return (0 if over else 1, headroom if over else 0, -n["problems"], -n["reclaimable"],
            n["host"])


def merge(report_run: PlaybookRun, clean_run: PlaybookRun | None = None,
          now: float | None = None) -> dict[str, Any]:
    """The fleet report: per node figures (worst first), fleet totals, and the nodes
    that could not be read with Ansible's reason."""
    nodes: list[dict[str, Any]] = []
    down: list[dict[str, Any]] = []
    for host, run in sorted(report_run.hosts.items()):
        if run.unreachable is not None:
            down.append({"host": host, "state": "unreachable", "reason": run.unreachable})
        elif run.failure is not None or "cache status" not in run.results:
            down.append({"host": host, "state": "failed",
                         "task": run.failed_task or "cache status",
                         "reason": run.failure or "no answer from cache status"})
        else:
            nodes.append(node(run))
    if clean_run is not None:
        for n in nodes:
            n["clean"] = clean_outcome(clean_run.hosts.get(n["host"]))
        for d in down:
            d["clean"] = clean_outcome(clean_run.hosts.get(d["host"]))
    nodes.sort(key=worst_first)
    totals = {
        "nodes": len(nodes) + len(down),
        "reporting": len(nodes),
        "unreachable": sum(1 for d in down if d["state"] == "unreachable"),
        "failed": sum(1 for d in down if d["state"] == "failed"),
        "files": sum(n["files"] for n in nodes),
        "allocated": sum(n["allocated"] for n in nodes),
        "size": sum(n["size"] for n in nodes),
        "reclaimable": sum(n["reclaimable"] for n in nodes),
        "need": sum(n["need"] for n in nodes),
        "over_budget": sum(1 for n in nodes if (n["headroom"] or 0) < 0),
        "problems": sum(n["problems"] for n in nodes),
        "disks": sum(n["disks"] for n in nodes),
        "with_disk_report": sum(1 for n in nodes if n["disk"] is not None),
        "disk_critical": sum(n["disk"]["critical"] for n in nodes if n["disk"] is not None),
        "worst_case_short": sum(1 for n in nodes if n["disk"] is not None
                                and (n["disk"]["worst_case_free"] or 0) < 0),
        "versions": dict(sorted(_count(n["version"] or "?" for n in nodes).items())),
    }
    if clean_run is not None:
        cleaned = [n["clean"] for n in nodes] + [d["clean"] for d in down]
        totals["clean"] = {
            "removed": sum(c.get("removed", 0) for c in cleaned),
            "freed": sum(c.get("freed", 0) for c in cleaned),
            "nodes_cleaned": sum(1 for c in cleaned if c["status"] == "cleaned"),
            "nodes_failed": sum(1 for c in cleaned if c["status"] in ("failed", "unreachable")),
            "nodes_not_run": sum(1 for c in cleaned if c["status"] == "not run"),
        }
    return {
        "generated": time.time() if now is None else now,
        "seconds": round(report_run.seconds + (clean_run.seconds if clean_run else 0), 2),
        "totals": totals,
        "nodes": nodes,
        "down": down,
    }


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def fetches(run: PlaybookRun) -> dict[str, Any]:
    """What `fleet fetch` did on each node: the images fetched or found present, with
    bytes; a node whose fetch failed with its `cache fetch` error lines; the unreachable
    ones with Ansible's reason."""
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    down: list[dict[str, Any]] = []
    for host, hr in sorted(run.hosts.items()):
        if hr.unreachable is not None:
            down.append({"host": host, "state": "unreachable", "reason": hr.unreachable})
            continue
        data = _json(hr.results.get("cache fetch")) or {}
        fetched: list[dict[str, Any]] = data.get("fetched") or []
        errors: list[dict[str, Any]] = data.get("failed") or []
        entry = {"host": host, "fetched": fetched, "errors": errors}
        if hr.failure is not None:
            why = "; ".join(f"{e['image_id']}: {e['error']}" for e in errors)
            failed.append({**entry, "reason": why or hr.failure,
                           "exit": (hr.results.get("cache fetch") or {}).get("rc")})
        else:
            done.append(entry)
    images = [f for n in done + failed for f in n["fetched"]]
    return {
        "generated_at": time.time(), "playbook_seconds": round(run.seconds, 3),
        "nodes": len(run.hosts), "done": done, "failed": failed, "down": down,
        "totals": {"fetched": sum(1 for f in images if f["action"] == "fetched"),
                   "present": sum(1 for f in images if f["action"] == "present"),
                   "bytes": sum(int(f["bytes"]) for f in images)},
    }
