"""deploy/monitoring/: the Prometheus alert rules, their promtool unit tests, and the Grafana
dashboard, checked against the metric contract below and against what `novakeeper cache
serve` really writes.

- Always: the rules and the dashboard parse, have the structure Prometheus and Grafana
  import, and use only the contract's metric names, label names and label values.
- With promtool (Debian: apt-get install prometheus): `promtool check rules`, `promtool
  test rules alerts_test.yml`, mutations of the rules that those tests must catch, the
  dashboard's queries parsed by promtool, `promtool check metrics` on a real metrics file.
- With node_exporter (Debian: apt-get install prometheus-node-exporter): the file the
  service writes is read by the textfile collector.

A missing tool skips its tests, except under CI=true, where it fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# The metric contract: name -> (type, label names). README's metric list says the same.
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "novakeeper_cache_files": ("gauge", frozenset({"kind", "verdict"})),
    "novakeeper_cache_bytes": ("gauge", frozenset({"kind", "verdict", "measure"})),
    "novakeeper_cache_reclaimable_bytes": ("gauge", frozenset()),
    "novakeeper_cache_freed_bytes_total": ("counter", frozenset()),
    "novakeeper_cache_removals_total": ("counter", frozenset({"reason"})),
    "novakeeper_cache_pass_last_timestamp_seconds": ("gauge", frozenset()),
    "novakeeper_cache_pass_duration_seconds": ("gauge", frozenset()),
    "novakeeper_cache_pass_success": ("gauge", frozenset()),
    "novakeeper_cache_passes_total": ("counter", frozenset({"outcome"})),
    "novakeeper_cache_budget_headroom_bytes": ("gauge", frozenset()),
    "novakeeper_cache_budget_need_bytes": ("gauge", frozenset()),
    "novakeeper_cache_budget_shortfall_bytes": ("gauge", frozenset()),
    "novakeeper_cache_disks": ("gauge", frozenset()),
    "novakeeper_cache_disks_unreadable": ("gauge", frozenset()),
    "novakeeper_cache_problems": ("gauge", frozenset({"code"})),
    "novakeeper_cache_in_use_corrupt_bases": ("gauge", frozenset()),
    "novakeeper_cache_quarantined_total": ("counter", frozenset()),
    "novakeeper_service_interval_seconds": ("gauge", frozenset()),
    "novakeeper_service_deleting": ("gauge", frozenset()),
    "novakeeper_disk_over_commit_bytes": ("gauge", frozenset()),
    "novakeeper_disk_available_least_gib": ("gauge", frozenset()),
    "novakeeper_disk_worst_case_free_bytes": ("gauge", frozenset()),
    "novakeeper_disk_worst_case_shortfall_bytes": ("gauge", frozenset()),
    "novakeeper_disk_bytes": ("gauge", frozenset({"holder"})),
    "novakeeper_disk_unknown_disks": ("gauge", frozenset()),
    "novakeeper_cache_deleted_image_bases": ("gauge", frozenset({"status"})),
    "novakeeper_cache_deleted_image_bytes": ("gauge", frozenset({"status"})),
    "novakeeper_cache_fetches_total": ("counter", frozenset()),
    "novakeeper_cache_fetched_bytes_total": ("counter", frozenset()),
    "novakeeper_cache_fetch_failures_total": ("counter", frozenset()),
}
LABEL_VALUES = {
    "measure": {"allocated", "apparent"},
    "reason": {"remove", "evict", "stale-partial", "trash-expired"},
    "outcome": {"ok", "failed"},
    "holder": {"cache", "instance-disks", "other", "free", "outside-instances-path"},
    "status": {"deleted", "deactivated"},
}
TARGET_LABELS = {"instance", "job"}  # added by the scrape, never by novakeeper

REQUIRED_ALERTS = {
    "NovakeeperCacheOverBudget", "NovakeeperCacheBudgetShortfall", "NovakeeperPassFailing",
    "NovakeeperInUseBaseCorrupt", "NovakeeperDisksUnreadable",
    "NovakeeperDiskAvailableLeastNegative", "NovakeeperDiskWorstCasePastDisk",
}
CRITICAL_ALERTS = {"NovakeeperInUseBaseCorrupt"}

DS_UID = "${DS_PROMETHEUS}"
# What the dashboard must show: the list.
DASHBOARD_METRICS = {
    "novakeeper_cache_bytes", "novakeeper_cache_files", "novakeeper_cache_reclaimable_bytes",
    "novakeeper_cache_freed_bytes_total", "novakeeper_cache_removals_total",
    "novakeeper_cache_budget_headroom_bytes", "novakeeper_cache_budget_shortfall_bytes",
    "novakeeper_cache_pass_duration_seconds", "novakeeper_cache_pass_success",
    "novakeeper_cache_pass_last_timestamp_seconds", "novakeeper_cache_problems",
    "novakeeper_cache_disks_unreadable", "novakeeper_cache_in_use_corrupt_bases",
    "novakeeper_disk_over_commit_bytes", "novakeeper_disk_worst_case_shortfall_bytes",
    "novakeeper_disk_available_least_gib",
}
# Grafana's variables, replaced by something PromQL parses
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
                     "$instance": ".+"}


DEBIAN_PACKAGE = {"promtool": "prometheus", "prometheus-node-exporter": "prometheus-node-exporter"}


def need(*tools: str) -> str:
    for tool in tools:
        path = shutil.which(tool)
        if path is not None:
            return path
    message = (f"{tools[0]} is not installed (Debian: apt-get install --no-install-recommends "
               f"{DEBIAN_PACKAGE.get(tools[0], tools[0])})")
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run this test")
    pytest.skip(message)


def run(argv: list[str], input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          input=input)


# -- PromQL, as far as these files need it ---------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "offset", "bool", "inf", "nan"}
_SELECTOR = re.compile(r"\b([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords,
    label names (in {...} or by/on(...)), numbers or durations."""
    e = _SELECTOR.sub(lambda m: m.group(1), _STRING.sub('""', expr))
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = _GROUPING.sub(" ", e)
    e = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def check_labels(expr: str) -> list[str]:
    """Label names and values an expression uses that the contract does not have."""
    wrong = []
    metrics = metric_names(expr) & CONTRACT.keys()
    for m in _SELECTOR.finditer(_STRING.sub(lambda s: s.group(), expr)):
        name, matchers = m.group(1), m.group(2)
        if name not in CONTRACT:
            continue
        for label, op, value in _MATCHER.findall(matchers):
            if label not in CONTRACT[name][1] | TARGET_LABELS:
                wrong.append(f"{name} has no label {label}")
            elif op == "=" and label in LABEL_VALUES and value not in LABEL_VALUES[label]:
                wrong.append(f"{name}{{{label}}} is never {value!r}")
    for group in _GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in group.split(","))):
            lacking = [n for n in metrics if label not in CONTRACT[n][1] | TARGET_LABELS]
            if lacking:
                wrong.append(f"grouping by {label}, which {lacking} lack")
    return wrong


def test_the_promql_helpers() -> None:
    expr = ('sum by (verdict) (novakeeper_cache_bytes{instance=~"$instance", '
            'measure="allocated"}) / on(instance) group_left rate(up[5m]) > 3e9 and bool x')
    assert metric_names(expr) == {"novakeeper_cache_bytes", "up", "x"}
    assert check_labels(expr) == []
    assert check_labels('novakeeper_cache_bytes{measure="used"}') == [
        "novakeeper_cache_bytes{measure} is never 'used'"]
    assert check_labels("sum by (code) (novakeeper_cache_files)") == [
        "grouping by code, which ['novakeeper_cache_files'] lack"]


# -- alert rules ------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"]
    rules = []
    for group in doc["groups"]:
        assert isinstance(group.get("name"), str) and group["rules"], group
        rules.extend(group["rules"])
    return rules


def test_alert_rules_structure() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations",
                             "keep_firing_for"}, name
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        if "for" in rule:
            assert re.fullmatch(r"(\d+[smhd])+", rule["for"]), (name, rule["for"])
        severity = rule["labels"]["severity"]
        assert severity == ("critical" if name in CRITICAL_ALERTS else "warning"), name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        words = annotations["runbook"] + annotations["description"]
        assert ("novakeeper cache plan" in words or "novakeeper disk report" in words
                or "journalctl" in annotations["runbook"]), name
    # "pass failing": failed passes, or no pass for three intervals of the service
    failing = " ".join(r["expr"] for r in rules if r["alert"] == "NovakeeperPassFailing")
    assert "novakeeper_cache_pass_success" in failing
    assert "3 * novakeeper_service_interval_seconds" in failing


def test_alert_rules_use_only_contract_metrics() -> None:
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= CONTRACT.keys(), (rule["alert"], names - CONTRACT.keys())
        assert check_labels(rule["expr"]) == [], rule["alert"]


def test_alert_tests_cover_every_alert() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for series in test.get("input_series", []):
            assert metric_names(series["series"]) <= CONTRACT.keys(), series["series"]
        for check in test.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == REQUIRED_ALERTS
    assert quiet == REQUIRED_ALERTS


def test_promtool_check_rules() -> None:
    promtool = need("promtool")
    proc = run([promtool, "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    promtool = need("promtool")
    proc = run([promtool, "test", "rules", str(ALERTS_TEST)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# Each mutation breaks one rule in a way alerts_test.yml must notice.
MUTATIONS = {
    "over budget without waiting an hour": (
        "expr: novakeeper_cache_budget_headroom_bytes < 0", "for: 1h", "for: 10m"),
    "shortfall on any value": (
        "expr: novakeeper_cache_budget_shortfall_bytes > 0", "> 0", ">= 0"),
    "failing without the first-pass guard": (
        "novakeeper_cache_pass_success == 0", "\n          and "
        "novakeeper_cache_pass_last_timestamp_seconds > 0\n", "\n"),
    "stale after two intervals": (
        "(time() - novakeeper_cache_pass_last_timestamp_seconds)", "> 3 *", "> 2 *"),
    "stale while idle": (
        "(time() - novakeeper_cache_pass_last_timestamp_seconds)",
        "\n          and novakeeper_service_interval_seconds > 0", ""),
    "corrupt base only a warning": (
        "expr: novakeeper_cache_in_use_corrupt_bases > 0", "severity: critical",
        "severity: warning"),
    "unreadable disks at once": (
        "expr: novakeeper_cache_disks_unreadable > 0", "for: 1h", "for: 0m"),
    "disk_available_least alert on zero": (
        "expr: novakeeper_disk_available_least_gib < 0", "< 0", "<= 0"),
    "worst case alert at once": (
        "expr: novakeeper_disk_worst_case_shortfall_bytes > 0", "for: 1h", "for: 0m"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_alert_tests_catch_a_broken_rule(tmp_path: Path, mutation: str) -> None:
    promtool = need("promtool")
    anchor, old, new = MUTATIONS[mutation]
    text = ALERTS.read_text()
    start = text.index(anchor)
    at = text.index(old, start)
    (tmp_path / "alerts.yml").write_text(text[:at] + new + text[at + len(old):])
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    assert run([promtool, "check", "rules", str(tmp_path / "alerts.yml")]).returncode == 0
    proc = run([promtool, "test", "rules", str(tmp_path / "alerts_test.yml")])
    assert proc.returncode != 0, f"alerts_test.yml did not notice: {mutation}"


# -- the Grafana dashboard --------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """The per-node panels' queries. The fleet row's query fleet-rules.yml's recorded
    series (names with ':') instead: tests/fleet/test_fleet_rules.py checks those."""
    return [(f"{p['id']}{t['refId']}", t["expr"]) for p in all_panels(dashboard()["panels"])
            for t in p.get("targets", []) if not any(":" in n for n in metric_names(t["expr"]))]


def test_dashboard_is_an_importable_export() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    assert d["uid"] and d["title"] and d["id"] is None
    inputs = {i["name"]: i for i in d["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    requires = {(r["type"], r["id"]) for r in d["__requires"]}
    assert ("datasource", "prometheus") in requires and ("grafana", "grafana") in requires
    panel_types = {p["type"] for p in all_panels(d["panels"])} - {"row"}
    assert panel_types <= {r["id"] for r in d["__requires"] if r["type"] == "panel"}
    variables = {v["name"]: v for v in d["templating"]["list"]}
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["datasource"]["uid"] == DS_UID
    assert instance["multi"] and instance["includeAll"]
    assert metric_names(instance["definition"].replace("label_values", "f")) <= (
        CONTRACT.keys() | {"instance"})


def test_dashboard_panels_and_layout() -> None:
    panels = list(all_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
            assert t["expr"].strip() and t["refId"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def test_dashboard_queries_use_the_contract_and_the_instance_variable() -> None:
    used: set[str] = set()
    for ref, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names and names <= CONTRACT.keys(), (ref, names - CONTRACT.keys())
        assert check_labels(expr) == [], (ref, check_labels(expr))
        # every selector is narrowed to the chosen nodes
        selectors = [m for m in _SELECTOR.finditer(expr) if m.group(1) in CONTRACT]
        assert len(selectors) == len(re.findall(r"\bnovakeeper_\w+", expr)), (ref, expr)
        for m in selectors:
            assert 'instance=~"$instance"' in m.group(2), (ref, expr)
        used |= names
    assert used >= DASHBOARD_METRICS, DASHBOARD_METRICS - used


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    promtool = need("promtool")
    rules = []
    for ref, expr in dashboard_exprs():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"panel {ref}: unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:panel_{ref}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- against the real exporter ----------------------------------------------------------------


@dataclass
class Exposition:
    text: str
    types: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        out = cls(text)
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                out.types[name] = kind
            elif line and not line.startswith("#"):
                m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?", line)
                assert m, f"not a sample line: {line!r}"
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                out.samples.append((m.group(1), labels, float(m.group(3))))
        return out

    def values(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(labels, v) for n, labels, v in self.samples if n == name]


def entry_point() -> str | None:
    beside = Path(sys.executable).parent / "novakeeper"
    return str(beside) if beside.exists() else shutil.which("novakeeper")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exposition:
    """The metrics file of one real pass of `novakeeper cache serve` over a small cache."""
    script = entry_point()
    if script is None:
        pytest.skip("the novakeeper console script is not installed (pip install -e .)")
    if run([script, "cache", "serve", "--help"]).returncode != 0:
        pytest.skip("`novakeeper cache serve` does not exist yet")
    root = tmp_path_factory.mktemp("serve")
    base = root / "instances" / "_base"
    base.mkdir(parents=True)
    (root / "instances" / "locks").mkdir()
    with open(base / ("ab" * 20), "wb") as f:  # an original base nobody uses
        f.write(b"\0" * 4096)
        f.truncate(1 << 20)
    conf = root / "novakeeper.conf"
    conf.write_text(f"[image_cache]\nmanager_interval = 3600\n"
                    f"[novakeeper]\nstate_path = {root / 'state.db'}\n")
    prom = root / "textfile" / "novakeeper.prom"
    prom.parent.mkdir()
    with open(root / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [script, "cache", "serve", "--config-file", str(conf), "--instances-path",
             str(root / "instances"), "--metrics-file", str(prom)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not prom.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    assert prom.exists(), (root / "serve.log").read_text()
    return Exposition.parse(prom.read_text())


def test_exporter_follows_the_contract(exported: Exposition) -> None:
    for name, (kind, labels) in CONTRACT.items():
        assert exported.types.get(name) == kind, (name, exported.types.get(name))
        for sample_labels, _ in exported.values(name):
            assert set(sample_labels) == labels, (name, sample_labels)
            for label, value in sample_labels.items():
                assert value in LABEL_VALUES.get(label, {value}), (name, label, value)
    ours = {n for n in exported.types if n.startswith("novakeeper_")}
    created = {n.removesuffix("_total") + "_created" for n, (k, _) in CONTRACT.items()
               if k == "counter"}
    assert ours - created == CONTRACT.keys(), "metrics not in the contract (and README)"
    assert not any(TARGET_LABELS & set(labels) for n, labels, _ in exported.samples
                   if n.startswith("novakeeper_")), "instance/job clash with target labels"
    # numbers from a real pass over the one-file cache
    ok = [v for labels, v in exported.values("novakeeper_cache_passes_total")
          if labels["outcome"] == "ok"]
    assert ok == [1.0], exported.text
    assert sum(v for _, v in exported.values("novakeeper_cache_files")) == 1
    apparent = [v for labels, v in exported.values("novakeeper_cache_bytes")
                if labels["measure"] == "apparent"]
    assert sum(apparent) == 1 << 20
    assert exported.values("novakeeper_service_interval_seconds")[0][1] == 3600


def test_everything_the_rules_and_dashboard_query_is_exported(exported: Exposition) -> None:
    used = set().union(*(metric_names(r["expr"]) for r in alert_rules()),
                       *(metric_names(e) for _, e in dashboard_exprs()))
    assert used <= exported.types.keys(), used - exported.types.keys()


def test_promtool_check_metrics(exported: Exposition) -> None:
    promtool = need("promtool")
    proc = run([promtool, "check", "metrics"], input=exported.text)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def node_exporter_scrape(exported: Exposition,
                         tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """node_exporter, textfile collector only, over the service's file: (body, its log)."""
    binary = need("prometheus-node-exporter", "node_exporter")
    folder = tmp_path_factory.mktemp("textfile")
    (folder / "novakeeper.prom").write_text(exported.text)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = folder / "node_exporter.log"
    body = ""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [binary, "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={folder}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                timeout=5) as response:
                        body = response.read().decode()
                    break
                except OSError:
                    time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    log_text = log_path.read_text()
    assert body, f"node_exporter did not answer:\n{log_text}"
    return body, log_text


def test_node_exporter_reads_the_metrics_file(exported: Exposition,
                                              node_exporter_scrape: tuple[str, str]) -> None:
    body, log = node_exporter_scrape
    scraped = Exposition.parse(body)
    assert scraped.values("node_textfile_scrape_error") == [({}, 0.0)], log
    mtimes = scraped.values("node_textfile_mtime_seconds")
    assert [labels["file"] for labels, _ in mtimes] == [
        mtimes[0][0]["file"]] and mtimes[0][0]["file"].endswith("novakeeper.prom")
    ours = {n for n, _, _ in exported.samples if n.startswith("novakeeper_")}
    assert ours <= {n for n, _, _ in scraped.samples}, ours - {n for n, _, _ in scraped.samples}


def test_node_exporter_logs_no_gathering_error(node_exporter_scrape: tuple[str, str]) -> None:
    _, log = node_exporter_scrape
    assert "error gathering metrics" not in log, log
