"""deploy/monitoring/fleet-rules.yml (recording rules per cell/aggregate/az, the fleet
alerts) with promtool, and the dashboard's fleet row against them. promtool missing:
skipped, except under CI=true, where it fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import _lab
from fleet.conftest import Lab

MONITORING = _lab.REPO / "deploy" / "monitoring"
RULES = MONITORING / "fleet-rules.yml"
RULES_TEST = MONITORING / "fleet-rules_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
NODE_METRICS = {  # what `cache serve` exports (tests/deploy/test_monitoring.py CONTRACT)
    "novakeeper_cache_reclaimable_bytes", "novakeeper_cache_bytes",
    "novakeeper_cache_budget_headroom_bytes", "novakeeper_cache_budget_need_bytes",
    "novakeeper_cache_pass_last_timestamp_seconds", "novakeeper_service_interval_seconds",
}
TOPOLOGY = {"cell", "aggregate", "az"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (as far as these rules write it)."""
    e = re.sub(r'"[^"]*"', '""', expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    found = set()
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", e):
        word = m.group()
        if e[m.end():].lstrip().startswith("(") or word in ("and", "or", "unless", "on"):
            continue
        found.add(word)
    return found


def test_rules_structure_and_names() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == {"NovakeeperNoPassReported", "NovakeeperFleetReclaimableHigh"}
    for rule in rules():
        used = names(rule["expr"])
        assert used <= NODE_METRICS | {"novakeeper_node_info"} | recorded, (rule, used)
        if "record" in rule:
            level = rule["record"].split(":")[0]
            assert level in ("instance", "cell_aggregate_az", "fleet"), rule["record"]
            if level == "cell_aggregate_az":
                assert "by (cell, aggregate, az)" in rule["expr"], rule["record"]
    for alert in alerts.values():
        assert alert["labels"]["scope"] == "fleet"
        assert {"summary", "description", "runbook"} <= set(alert["annotations"])
    assert "2 * novakeeper_service_interval_seconds" in alerts["NovakeeperNoPassReported"]["expr"]


def test_promtool_check_and_test_rules() -> None:
    tool = promtool()
    proc = run(tool, "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout
    proc = run(tool, "test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr


MUTATIONS = {
    "stale after three intervals": ("> 2 * novakeeper_service_interval",
                                    "> 3 * novakeeper_service_interval"),
    "a node that never reported is missed": (
        "unless on(instance, job) novakeeper_cache_pass_last_timestamp_seconds",
        "and on(instance, job) novakeeper_cache_pass_last_timestamp_seconds"),
    "timer nodes alerted": ('novakeeper_node_info{mode="service"}', "novakeeper_node_info"),
    "reclaimable alert without waiting": ("for: 2h", "for: 5m"),
    "az dropped from the sums": (
        "sum by (cell, aggregate, az) (instance:novakeeper_cache_reclaimable_bytes:placed)",
        "sum by (cell, aggregate) (instance:novakeeper_cache_reclaimable_bytes:placed)"),
    "apparent bytes counted as allocated": (
        'sum by (instance, job) (novakeeper_cache_bytes{measure="allocated"})',
        "sum by (instance, job) (novakeeper_cache_bytes)"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_rule_tests_catch_a_broken_rule(tmp_path: Path, mutation: str) -> None:
    tool = promtool()
    old, new = MUTATIONS[mutation]
    text = RULES.read_text()
    assert old in text, old
    (tmp_path / "fleet-rules.yml").write_text(text.replace(old, new, 1))
    shutil.copy(RULES_TEST, tmp_path / "fleet-rules_test.yml")
    assert run(tool, "check", "rules", str(tmp_path / "fleet-rules.yml")).returncode == 0
    proc = run(tool, "test", "rules", str(tmp_path / "fleet-rules_test.yml"))
    assert proc.returncode != 0, f"fleet-rules_test.yml did not notice: {mutation}"


def fleet_panels() -> list[dict[str, Any]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    fleet_row = next(p for p in rows if p["title"].startswith("Fleet"))
    return [p for p in panels if p["type"] != "row"
            and p["gridPos"]["y"] > fleet_row["gridPos"]["y"]]


def test_dashboard_fleet_row_queries_the_recorded_series(tmp_path: Path) -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    panels = fleet_panels()
    assert len(panels) >= 6
    grouped: set[str] = set()
    queries = []
    for p in panels:
        for t in p["targets"]:
            used = names(t["expr"])
            assert used and used <= recorded, (p["title"], used - recorded)
            grouped |= set(re.findall(r"by \((\w+)\)", t["expr"]))
            queries.append({"record": f"panel_{p['id']}{t['refId']}", "expr": t["expr"]})
    assert grouped == TOPOLOGY  # a panel per cell, per aggregate, per az
    assert any("fleet:novakeeper_reclaimable_threshold_bytes" in q["expr"] for q in queries)
    path = tmp_path / "fleet-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "fleet", "rules": queries}]}))
    proc = run(promtool(), "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_role_writes_the_info_series_the_rules_join_on(lab: Lab, installed: object) -> None:
    node = lab.nodes["node2"]
    text = (node.root / "metrics" / "novakeeper-node.prom").read_text()
    tool = promtool()
    proc = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [x for x in text.splitlines() if x.startswith("novakeeper_node_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    joined = set()
    for rule in rules():
        for group in re.findall(r"group_left\(([^)]*)\)", rule["expr"]):
            joined |= {g.strip() for g in group.split(",")}
    assert joined == TOPOLOGY and TOPOLOGY | {"mode"} <= set(labels)
    assert labels["cell"] == node.vars["novakeeper_cell"] and labels["mode"] == "service"
