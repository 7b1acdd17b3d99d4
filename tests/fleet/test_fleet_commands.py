"""`novakeeper fleet report` and `fleet clean` through ansible-runner against the local
fleet: every reachable node's figures equal its own `cache status --json`, the
unreachable one is named with Ansible's reason, and a clean removes on each node exactly
what that node's plan says."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fleet import _lab
from fleet.conftest import HOSTS, REACHABLE, Lab
from novakeeper.cache.plan import Verdict
from novakeeper.errors import ExitCode

FIGURES = ("files", "allocated", "size", "reclaimable")


def report_json(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = _lab.fleet_cli(*args, "--json")
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def status(node: _lab.Node) -> dict[str, Any]:
    proc = node.run("cache", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def cache_names(node: _lab.Node) -> set[str]:
    """The cache's files, without novakeeper's own (the run lock clean leaves)."""
    return {e.name for e in os.scandir(node.sandbox.cache_path)
            if not e.name.startswith(".novakeeper-")}


def test_report_matches_cache_status_on_every_node(lab: Lab, installed: object) -> None:
    rc, report, stderr = report_json("report", "-i", str(lab.inventory))
    direct = {name: status(node) for name, node in lab.nodes.items()}
    assert rc == ExitCode.PROBLEMS, stderr  # one node did not report
    assert f"1 of 4 nodes did not report: {_lab.DOWN_HOST}" in stderr
    nodes = {n["host"]: n for n in report["nodes"]}
    assert set(nodes) == set(HOSTS)
    for name, data in direct.items():
        got = nodes[name]
        for key in FIGURES:
            assert got[key] == data[key], (name, key)
        assert got["headroom"] == data["budget"]["headroom"]
        assert got["need"] == data["budget"]["need"]
        assert got["problems"] == len(data["problems"])
        assert got["problem_lines"] == data["problems"][:20]
        assert got["cache_path"] == lab.nodes[name].sandbox.cache_path
        assert got["version"] == lab.nodes[name].run("--version").stdout.split()[-1]
        # the node's novakeeper has `disk report`: its figures are merged too
        disk = json.loads(lab.nodes[name].run("disk", "report", "--json").stdout)
        for key in ("bytes", "over_commit", "scheduler", "cache_path"):
            if key == "bytes":  # "outside_instances_path" moves with the shared /tmp
                assert got["disk_report"][key]["cache"] == disk[key]["cache"], name
            else:
                assert got["disk_report"][key] == disk[key], (name, key)
        assert "instances" not in got["disk_report"]  # rows stay on the node
        assert got["disk"]["over_commit"] == disk["over_commit"]["total"]
        assert got["disk"]["findings"] == [f["code"] for f in disk["findings"]]
    totals = report["totals"]
    for key in FIGURES:
        assert totals[key] == sum(d[key] for d in direct.values()), key
    assert (totals["nodes"], totals["reporting"], totals["unreachable"]) == (4, 3, 1)
    assert totals["with_disk_report"] == 3
    # worst off first: every demo node is over its budget, the most over first
    needs = [n["headroom"] for n in report["nodes"]]
    assert needs == sorted(needs) and needs[0] < 0
    [down] = report["down"]
    assert down["host"] == _lab.DOWN_HOST and down["state"] == "unreachable"
    assert "Connection refused" in down["reason"] or "port 1" in down["reason"], down


def test_report_table_names_every_node(lab: Lab, installed: object) -> None:
    proc = _lab.fleet_cli("report", "-i", str(lab.inventory), "--forks", "2")
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "CACHE", "FILES"], proc.stdout
    for host in HOSTS:
        assert any(line.startswith(host + " ") for line in lines), proc.stdout
    assert any(line.startswith("UNREACHABLE") and _lab.DOWN_HOST in line for line in lines)
    assert lines[-2].startswith("fleet: 4 nodes, 3 reporting, 1 unreachable")
    # the nodes' novakeeper has `disk report`: its columns and its line are there
    assert "DISK FREE" in lines[0] and "WORST CASE" in lines[0]
    assert lines[-1].startswith("disk: 3 nodes with `disk report`, ")
    assert proc.stderr.startswith("novakeeper: error: ") and len(proc.stderr.splitlines()) == 1


class Tables(HTMLParser):
    """The rows of every table, by table id, and anything that would load from outside."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_attrs: dict[str, list[dict[str, str | None]]] = {}
        self.outside: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "link", "img", "iframe") or "src" in a or "href" in a:
            self.outside.append(tag)
        if tag == "table":
            self._table = a.get("id") or "?"
            self.tables[self._table] = []
            self.row_attrs[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.row_attrs[self._table].append(a)
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def test_html_report_is_self_contained_and_says_what_json_says(lab: Lab, installed: object,
                                                                tmp_path: Path) -> None:
    page = tmp_path / "fleet.html"
    _, report, _ = report_json("report", "-i", str(lab.inventory), "--html", str(page))
    parsed = Tables()
    parsed.feed(page.read_text())
    assert parsed.outside == []
    header, *rows = parsed.tables["nodes"]
    assert header[:4] == ["NODE", "CACHE", "FILES", "RECLAIMABLE"]
    # same nodes in the same (worst first) order, same figures
    assert [r[0] for r in rows] == [n["host"] for n in report["nodes"]]
    for attrs, node in zip(parsed.row_attrs["nodes"][1:], report["nodes"], strict=True):
        assert int(attrs["data-reclaimable"] or -1) == node["reclaimable"]
        assert int(attrs["data-allocated"] or -1) == node["allocated"]
        assert attrs["class"] == ("over" if (node["headroom"] or 0) < 0 else None)
    assert [r[:2] for r in parsed.tables["down"][1:]] == [[_lab.DOWN_HOST, "unreachable"]]


def test_limit_and_no_match(lab: Lab, installed: object) -> None:
    rc, report, _ = report_json("report", "-i", str(lab.inventory), "--limit", "node2")
    assert rc == 0
    assert [n["host"] for n in report["nodes"]] == ["node2"] and report["down"] == []
    proc = _lab.fleet_cli("report", "-i", str(lab.inventory), "--limit", "nosuchnode")
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.strip().startswith("novakeeper: error: ") and "no hosts" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    proc = _lab.fleet_cli("report", "-i", str(lab.root / "missing.yml"))
    assert proc.returncode == ExitCode.PATH and "inventory not found" in proc.stderr
    broken = lab.root / "broken.yml"
    broken.write_text("all: [\n")
    proc = _lab.fleet_cli("report", "-i", str(broken))
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert proc.stderr == (f"novakeeper: error: {broken}: Ansible cannot parse this inventory "
                           "(ansible-inventory -i FILE --list says why)\n")


def test_a_node_without_novakeeper_is_listed_as_failed(lab: Lab, installed: object,
                                                       tmp_path: Path) -> None:
    text = lab.inventory.read_text().replace(
        str(lab.nodes["node2"].vars["novakeeper_venv"]), str(tmp_path / "no-venv"))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(text)
    rc, report, _ = report_json("report", "-i", str(inventory), "--limit", REACHABLE)
    assert rc == ExitCode.PROBLEMS
    [down] = report["down"]
    assert (down["host"], down["state"], down["task"]) == ("node2", "failed", "version")
    assert "no-venv/bin/novakeeper" in down["reason"], down
    assert {n["host"] for n in report["nodes"]} == {"node1", "node3"}


def test_clean_stops_at_the_first_failing_node(lab: Lab, installed: object) -> None:
    """The unreachable node comes first in the inventory: with serial 1 nothing after it
    is cleaned."""
    before = {name: cache_names(node) for name, node in lab.nodes.items()}
    rc, report, stderr = report_json("clean", "-i", str(lab.inventory), "--limit", "all")
    assert rc == ExitCode.FAILED_REMOVALS, stderr
    assert f"clean failed on {_lab.DOWN_HOST}; stopped: 3 nodes not cleaned" in stderr
    assert {name: cache_names(node) for name, node in lab.nodes.items()} == before
    assert all(n["clean"]["status"] == "not run" for n in report["nodes"])
    assert report["down"][0]["clean"]["status"] == "unreachable"
    assert report["totals"]["clean"]["removed"] == 0


def test_clean_removes_exactly_each_nodes_plan(lab: Lab, installed: object) -> None:
    plans = {}
    for name, node in lab.nodes.items():
        proc = node.run("cache", "plan", "--json")
        assert proc.returncode == 0, proc.stderr
        plans[name] = json.loads(proc.stdout)
    removing = {str(v) for v in Verdict if v.removes}
    removals = {name: {d["name"] for d in plan["decisions"] if d["verdict"] in removing}
                for name, plan in plans.items()}
    assert all(len(removals[n]) == plans[n]["summary"]["removals"] for n in plans)
    assert all(removals.values()), "the demo nodes must have something to remove"
    before = {name: cache_names(node) for name, node in lab.nodes.items()}
    rc, report, stderr = report_json("clean", "-i", str(lab.inventory), "--limit", "all",
                                     "--keep-going", "--serial", "2")
    # every reachable node cleaned; the down one failed (hence the exit code)
    assert rc == ExitCode.FAILED_REMOVALS and _lab.DOWN_HOST in stderr
    for name, node in lab.nodes.items():
        assert cache_names(node) == before[name] - removals[name], name
        result = next(n for n in report["nodes"] if n["host"] == name)
        assert result["clean"]["status"] == "cleaned"
        assert set(result["clean"]["removed_names"]) == removals[name]
        # the report after the clean: the node's own status now, and the clean in it
        assert result["reclaimable"] == status(node)["reclaimable"]
        assert result["last_clean"]["removed"] == len(removals[name])
        assert result["last_clean"]["outcome"] == "ok"
    totals = report["totals"]["clean"]
    assert totals["removed"] == sum(len(r) for r in removals.values())
    assert (totals["nodes_cleaned"], totals["nodes_failed"], totals["nodes_not_run"]) == (3, 1, 0)


def test_html_report_in_headless_chromium(lab: Lab, installed: object, tmp_path: Path) -> None:
    """The page as a browser shows it: nothing loaded from elsewhere, the nodes in the
    JSON's order with its figures. A screenshot is kept ($NOVAKEEPER_TEST_ARTIFACTS)."""
    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if driver_path is None or chromium is None:
        message = "headless Chromium needs Debian's chromium and chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    page = tmp_path / "fleet.html"
    _, report, _ = report_json("report", "-i", str(lab.inventory), "--html", str(page))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(page.as_uri())
        artifacts = Path(os.environ.get("NOVAKEEPER_TEST_ARTIFACTS", "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(artifacts / "fleet-report.png"))
        assert browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)") == []
        rows = browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")
        assert [r.get_attribute("data-host") for r in rows] == [
            n["host"] for n in report["nodes"]]
        for row, node in zip(rows, report["nodes"], strict=True):
            cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            assert cells[0] == node["host"] and cells[2] == str(node["files"])
            assert int(row.get_attribute("data-reclaimable") or -1) == node["reclaimable"]
        down = browser.find_elements(By.CSS_SELECTOR, "#down tbody tr")
        assert [r.get_attribute("data-host") for r in down] == [_lab.DOWN_HOST]
        assert browser.find_element(By.ID, "totals").text.startswith(
            "fleet: 4 nodes, 3 reporting, 1 unreachable")
    finally:
        browser.quit()
