"""The HTML page of `disk report`, opened in headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): it loads nothing from anywhere else, its numbers
are the JSON's, its bars are drawn to scale. A screenshot is kept as a test artifact
($NOVAKEEPER_TEST_ARTIFACTS, default ./test-artifacts)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _disk_sandbox import Node, build_node, loopfs  # noqa: F401  (fixture)

from _cli_tree import run_cli

ARTIFACTS = Path(os.environ.get("NOVAKEEPER_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium")
    if driver_path is None or chromium is None:
        message = "headless Chromium needs Debian's chromium and chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page(node: Node, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    html = tmp_path / "report.html"
    proc = run_cli("--config-file", str(node.config), "disk", "report", "--json",
                   "--html", str(html), "--flavor-disk", "1")
    assert proc.returncode == 0, proc.stderr
    return html, dict(json.loads(proc.stdout))


def test_page_renders_the_json_figures(loopfs: Path, tmp_path: Path,  # noqa: F811
                                       browser: Any) -> None:
    from selenium.webdriver.common.by import By

    node = build_node(loopfs)
    html, data = page(node, tmp_path)
    browser.get(html.as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "disk-report.png"))

    # self-contained: the page asked for nothing beyond itself
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []
    text = {id_: browser.find_element(By.ID, id_).text for id_ in (
        "fs-size", "fs-free", "over-commit", "disk-available-least", "worst-case-free")}
    assert int(text["fs-size"]) == data["file_system"]["size"]
    assert int(text["fs-free"]) == data["file_system"]["free"]
    assert int(text["over-commit"]) == data["over_commit"]["total"]
    assert int(text["disk-available-least"]) == data["nova"]["disk_available_least_reported"]
    assert int(text["worst-case-free"]) == data["worst_case"]["free"]

    rows = browser.find_elements(By.CSS_SELECTOR, "#instances tr[data-instance]")
    assert [r.get_attribute("data-instance") for r in rows] == [
        i["instance"] for i in data["instances"]]
    for row, inst in zip(rows, data["instances"], strict=True):
        cell = row.find_element(By.CSS_SELECTOR, "td[data-col=over-commit]")
        assert int(cell.get_attribute("data-bytes") or "x") == inst["over_commit"]
        assert cell.is_displayed()
    codes = [f.get_attribute("data-code")
             for f in browser.find_elements(By.CSS_SELECTOR, "#findings .finding")]
    assert codes == [f["code"] for f in data["findings"]]
    assert all(f.is_displayed() for f in browser.find_elements(By.CSS_SELECTOR, ".finding"))


def test_the_stacked_bar_is_drawn_to_scale(loopfs: Path, tmp_path: Path,  # noqa: F811
                                           browser: Any) -> None:
    node = build_node(loopfs)
    html, data = page(node, tmp_path)
    browser.get(html.as_uri())
    widths = browser.execute_script("""
        const out = {};
        for (const r of document.querySelectorAll('#disk-bar rect[data-segment]'))
            out[r.dataset.segment] = r.getBoundingClientRect().width;
        return out;""")
    b = data["bytes"]
    size = data["file_system"]["size"]
    over = data["over_commit"]["total"]
    # segments left to right fill the disk; the over-commit is drawn past its end
    disk_px = sum(widths[k] for k in ("reclaimable", "cache", "instances", "other", "reserved",
                                      "free"))
    total_px = disk_px + widths["over-commit"]
    assert total_px == pytest.approx(browser.execute_script(
        "return document.getElementById('disk-bar').getBoundingClientRect().width"), rel=0.01)
    assert disk_px / total_px == pytest.approx(size / (size + over), rel=0.01)
    assert widths["free"] / disk_px == pytest.approx(
        data["file_system"]["free"] / size, rel=0.01, abs=0.002)
    assert widths["reclaimable"] / disk_px == pytest.approx(
        b["cache"]["reclaimable"] / size, abs=0.002)
    legend = browser.execute_script(
        "return document.querySelector('[data-legend=over-commit]').textContent")
    assert legend.strip()
