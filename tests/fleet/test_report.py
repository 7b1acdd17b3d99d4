"""The merge of node answers into one fleet report (pure data: HostRun in, dict out)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from novakeeper.fleet import render
from novakeeper.fleet.report import merge, worst_first
from novakeeper.fleet.runner import HostRun, PlaybookRun


def ok(stdout: Any) -> dict[str, Any]:
    return {"rc": 0, "stdout": stdout if isinstance(stdout, str) else json.dumps(stdout)}


def status(files: int, allocated: int, reclaimable: int, headroom: int | None,
           problems: int) -> dict[str, Any]:
    budget = None if headroom is None else {"headroom": headroom, "need": max(0, -headroom),
                                            "binding": "max_cache_size"}
    return {"cache_path": "/var/lib/nova/instances/_base", "files": files,
            "allocated": allocated, "size": allocated * 2, "reclaimable": reclaimable,
            "budget": budget, "problems": [f"p{i}" for i in range(problems)],
            "instance_folders": 3, "disks": 4, "orphaned_locks": []}


def host(name: str, st_: dict[str, Any], history: list[dict[str, Any]] | None = None,
         disk: dict[str, Any] | None = None) -> HostRun:
    results = {"version": ok("novakeeper, version 0.1.0"), "cache status": ok(st_),
               "cache history": ok({"entries": history or []})}
    if disk is not None:
        results["disk report"] = ok(disk)
    return HostRun(name, results)


def playbook(*hosts: HostRun) -> PlaybookRun:
    return PlaybookRun("fleet-report.yml", "successful", 0, 1.5, {h.host: h for h in hosts})


DISK = {"file_system": {"free": 5 << 30}, "over_commit": {"total": 9 << 30},
        "worst_case": {"free": -(1 << 30)}, "nova": {"disk_available_least_reported": -1},
        "findings": [{"code": "worst-case-shortfall", "severity": "critical",
                      "message": "short <b>", "action": "move"}],
        "instances": [{"instance": "x"}]}


def test_disk_report_is_used_where_a_node_has_it() -> None:
    report = merge(playbook(host("a", status(1, 10, 0, None, 0), disk=DISK),
                            host("b", status(1, 10, 0, None, 0))))
    by = {n["host"]: n for n in report["nodes"]}
    assert by["a"]["disk"] == {"free": 5 << 30, "over_commit": 9 << 30,
                               "worst_case_free": -(1 << 30), "disk_available_least": -1,
                               "findings": ["worst-case-shortfall"], "critical": 1}
    assert "instances" not in by["a"]["disk_report"]
    assert by["b"]["disk"] is None and by["b"]["disk_report"] is None
    t = report["totals"]
    assert (t["with_disk_report"], t["worst_case_short"], t["disk_critical"]) == (1, 1, 1)
    assert render.columns(report)[-2:] == ("DISK FREE", "WORST CASE")
    assert [r[-2:] for r in render.rows(report)] == [["5.0 GiB", "-1.0 GiB"], ["-", "-"]]
    page = render.html_page(report)
    assert "short &lt;b&gt;" in page and 'id="disk-findings"' in page


def test_last_clean_is_the_last_journal_run() -> None:
    entry = {"started": 10.0, "finished": 11.0, "bytes": 100, "outcome": "removed"}
    history = [{**entry, "run": "r1"}, {**entry, "run": "r2", "outcome": "failed"},
               {**entry, "run": "r2", "finished": 20.0}]
    [n] = merge(playbook(host("a", status(1, 1, 0, None, 0), history)))["nodes"]
    assert n["last_clean"] == {"run": "r2", "at": 20.0, "removed": 1, "freed": 100,
                               "failed": 1, "outcome": "1 failed"}
    assert n["version"] == "0.1.0"


def test_down_nodes_are_listed_never_raised() -> None:
    runs = [HostRun("gone", unreachable="ssh: connect to host gone port 22: No route"),
            HostRun("broken", failed_task="cache status", failure="exit 3"),
            HostRun("garbled", {"version": ok("x"), "cache status": ok("not json")})]
    report = merge(playbook(*runs))
    down = {d["host"]: d for d in report["down"]}
    assert down["gone"]["state"] == "unreachable" and "No route" in down["gone"]["reason"]
    assert down["broken"] == {"host": "broken", "state": "failed", "task": "cache status",
                              "reason": "exit 3"}
    # an answer that is not JSON is a node with zero figures, not a crash
    assert report["nodes"][0]["files"] == 0
    assert report["totals"]["unreachable"] == 1 and report["totals"]["failed"] == 1


node_figures = st.tuples(st.integers(0, 10**6), st.integers(0, 10**15),
                         st.integers(0, 10**15), st.none() | st.integers(-10**12, 10**12),
                         st.integers(0, 30))


@given(st.lists(node_figures, max_size=12), st.integers(0, 4))
def test_totals_order_and_renderings(figures: list[tuple[int, int, int, int | None, int]],
                                     down: int) -> None:
    runs = [host(f"n{i}", status(*f)) for i, f in enumerate(figures)]
    runs += [HostRun(f"d{i}", unreachable="refused") for i in range(down)]
    report = merge(playbook(*runs))
    nodes = report["nodes"]
    t = report["totals"]
    assert (t["nodes"], t["reporting"], t["unreachable"]) == (len(runs), len(figures), down)
    for key in ("files", "allocated", "reclaimable"):
        assert t[key] == sum(n[key] for n in nodes)
    assert t["over_budget"] == sum(1 for f in figures if f[3] is not None and f[3] < 0)
    # worst first: over budget (most over first) before the rest, then problems, then bytes
    assert [worst_first(n) for n in nodes] == sorted(worst_first(n) for n in nodes)
    over = [n["headroom"] for n in nodes if (n["headroom"] or 0) < 0]
    assert nodes[:len(over)] == [n for n in nodes if (n["headroom"] or 0) < 0]
    assert over == sorted(over)
    json.dumps(report)
    page = render.html_page(report)
    assert page.count("<tr") == len(nodes) + 1 + (down + 1 if down else 0) + (
        sum(min(f[4], 20) for f in figures))
    assert "<script" not in page
