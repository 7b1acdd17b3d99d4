"""`novakeeper disk report` on a node of known sizes on its own loop-mounted file system:
every figure against a value computed here independently (qemu-img's JSON, os.stat,
os.statvfs, nova's formulas written out again)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from _disk_sandbox import (
    GIB,
    UUID,
    Node,
    allocated_under,
    build_node,
    cache_name,
    expected,
    loopfs,  # noqa: F401  (fixture)
)
from _nova import NovaRaised, run_nova_resources

from _cli_tree import permission_prefix, run_cli
from conftest import side_venv_python
from novakeeper.disk.accounting import disk_available_least, nova_over_commit


def report(node: Node, *args: str) -> dict[str, Any]:
    proc = run_cli("--config-file", str(node.config), "disk", "report", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.fixture
def node(loopfs: Path) -> Node:  # noqa: F811
    return build_node(loopfs)


def by_instance(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["instance"]: row for row in data["instances"]}


def test_figures_match_an_independent_computation(node: Node) -> None:
    data = report(node)
    want = expected(node)
    fs = data["file_system"]
    assert (fs["size"], fs["free"], fs["used"]) == (want.total, want.free, want.used)
    assert fs["cache_shares"] is True
    assert data["over_commit"]["total"] == want.over_commit
    rows = by_instance(data)
    for uuid, oc in want.per_instance.items():
        assert rows[uuid]["over_commit"] == oc, uuid
    assert data["nova"]["disk_available_least"] == want.available_least
    assert data["nova"]["disk_available_least_reported"] == int(want.available_least)
    assert data["worst_case"]["growth"] == want.growth
    assert data["worst_case"]["free"] == want.free - want.growth


def test_each_kind_of_disk(node: Node) -> None:
    rows = by_instance(report(node))
    a = {d["name"]: d for d in rows[UUID.format(0xA, 0xA)]["disks"]}
    assert set(a) == {"disk", "disk.local", "disk.swap", "disk.config"}
    assert a["disk"]["virtual_size"] == 2 * GIB and a["disk"]["format"] == "qcow2"
    assert a["disk"]["allocated"] > 3 * 1024**2  # 3 MiB really written, plus metadata
    assert a["disk"]["base"] == cache_name("image-a") and "chain" not in a["disk"]
    assert a["disk"]["base_shared"] is True  # A, B, D and the resize stand on it
    assert a["disk.swap"]["base"] == "swap_512" and a["disk.swap"]["base_shared"] is False
    assert a["disk.config"]["format"] == "raw"
    assert a["disk.config"]["over_commit"] == 0  # fully written
    b = rows[UUID.format(0xB, 0xB)]["disks"][0]
    assert b["allocated"] > b["virtual_size"] and b["over_commit"] == 0  # clamped
    c = {d["name"]: d for d in rows[UUID.format(0xC, 0xC)]["disks"]}
    assert c["disk"]["over_commit"] == 63 * 1024**2  # sparse: the holes count
    assert c["disk.local"]["over_commit"] < 0  # not clamped: nova's raw arithmetic
    d = rows[UUID.format(0xD, 0xD)]  # its domain's disk.local is gone: only libvirt knows
    assert d["missing_disks"] == [] and d["over_commit"] == d["growth"] > 0


def test_a_corrupt_disk_is_unknown_and_flagged(node: Node) -> None:
    data = report(node)
    e = by_instance(data)[UUID.format(0xE, 0xE)]
    assert e["unknown_disks"] == 1 and e["disks"][0]["over_commit"] is None
    assert e["over_commit"] == 0
    assert data["over_commit"]["unknown_disks"] == 1
    codes = {f["code"]: f for f in data["findings"]}
    assert "unknown-disks" in codes and "1 disk" in codes["unknown-disks"]["message"]
    assert data["bytes"]["unknown_disks"] == os.stat(node.corrupt[0]).st_blocks * 512


def test_node_totals(node: Node) -> None:
    data = report(node)
    b = data["bytes"]
    assert b["cache"]["total"] == allocated_under(node.cache)
    unused = os.stat(next(p for p in node.cache.iterdir() if p.stat().st_mtime < 10))
    assert b["cache"]["reclaimable"] == unused.st_blocks * 512
    assert b["cache"]["in_use"] + b["cache"]["kept"] + b["cache"]["reclaimable"] == \
        b["cache"]["total"]
    gone = next(node.instances.glob("*_del"))
    resize = next(node.instances.glob("*_resize"))
    assert b["other"]["deleted-folders"] == allocated_under(gone)
    assert b["other"]["resize-folders"] == allocated_under(resize)
    disks = [p for paths in node.domains.values() for p in paths if os.path.exists(p)]
    assert b["instance_disks"] == sum(os.stat(p).st_blocks * 512 for p in disks) + \
        b["unknown_disks"]
    live = [p for p in node.instances.iterdir() if "_" not in p.name]  # not _base/_del
    assert b["other"]["console-logs"] == sum(
        os.lstat(p / "console.log").st_blocks * 512 for p in live)
    total = b["cache"]["total"] + b["instance_disks"] + b["other"]["total"]
    assert total + b["outside_instances_path"] == data["file_system"]["used"]


def test_scheduler_view(node: Node) -> None:
    data = report(node, "--flavor-disk", "1", "--disk-allocation-ratio", "1.5",
                  "--reserved-host-disk-mb", "100")
    want = expected(node)
    s = data["scheduler"]
    local_gb = int(want.total / GIB)
    assert s["local_gb"] == local_gb and s["reserved_gb"] == 1  # ceil(100 / 1024)
    assert s["capacity_gb"] == (local_gb - 1) * 1.5
    # root, ephemeral and swap of A (2+1+1), B (ceil 4 MiB = 1), C (1+1), D (1); E's
    # only disk is unreadable
    assert s["used_gb"] == 8
    fits = s["fits"]
    assert fits["placement"] == max(0, math.floor(((local_gb - 1) * 1.5 - 8) / 1))
    reserved = 100 * 1024**2
    assert fits["disk_now"] == (want.free - reserved) // GIB
    assert fits["disk_worst_case"] == max(0, (want.free - want.growth - reserved) // GIB)
    assert data["worst_case"]["shortfall"] == max(0, want.growth - want.free)
    # a generous ratio: placement promises what the disk cannot hold
    generous = report(node, "--flavor-disk", "1", "--disk-allocation-ratio", "10",
                      "--reserved-host-disk-mb", "0")
    assert generous["scheduler"]["fits"]["placement"] == local_gb * 10 - 8 > 0
    codes = {f["code"] for f in generous["findings"]}
    assert "scheduler-overpromises" in codes


def test_findings_name_numbers_and_fixes(node: Node) -> None:
    data = report(node)
    codes = {f["code"]: f for f in data["findings"]}
    # 4.5 GiB of disks that can grow on a 3 GiB file system: the worst case is past it
    worst = codes["worst-case-shortfall"]
    assert worst["severity"] == "critical"
    assert worst["numbers"]["shortfall"] == data["worst_case"]["shortfall"]
    assert "GiB more than it has" in worst["message"] and worst["action"]
    least = codes["disk-available-least-negative"]
    assert f"nova stores {data['nova']['disk_available_least_reported']}" in least["message"]
    assert "cache-reclaimable" in codes and "novakeeper cache clean" in codes[
        "cache-reclaimable"]["action"]
    for f in data["findings"]:
        assert f["message"] and f["action"] and f["severity"] in ("critical", "warning", "info")


def test_sort_and_top(node: Node) -> None:
    data = report(node, "--sort", "allocated", "--top", "2")
    rows = data["instances"]
    assert len(rows) == 2 and rows[0]["allocated"] >= rows[1]["allocated"]
    full = report(node)
    assert full["over_commit"]["total"] == data["over_commit"]["total"]  # totals count all
    assert [r["over_commit"] for r in full["instances"]] == sorted(
        (r["over_commit"] for r in full["instances"]), reverse=True)


def test_table_output(node: Node) -> None:
    proc = run_cli("--config-file", str(node.config), "disk", "report", "--top", "3",
                   env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "disk_available_least" in out and "over-commit" in out
    assert "more instances not shown" in out
    assert "critical: if every disk grows" in out


def test_missing_instances_path_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("--instances-path", str(tmp_path / "nope"), "disk", "report")
    assert proc.returncode == 4
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nova_arithmetic_units() -> None:
    assert nova_over_commit("qcow2", 10, 3, 4) == 6
    assert nova_over_commit("qcow2", 10, 3, 14) == 0
    assert nova_over_commit("raw", 10, 10, 12) == -2
    # nova turns free into GiB first; the ComputeNode stores int() (toward zero)
    least = disk_available_least(GIB // 2, 30 * GIB)
    assert least == ((GIB // 2) / GIB * GIB - 30 * GIB) / GIB
    assert int(least) == -29


def _is_qcow2(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"QFI\xfb"
    except FileNotFoundError:
        return False


def _domain(uuid: str, paths: list[str]) -> dict[str, Any]:
    disks = []
    for n, path in enumerate(paths):
        name = os.path.basename(path)
        missing = not os.path.exists(path)  # D's ephemeral disk was a qcow2 overlay
        fmt = "qcow2" if _is_qcow2(path) or (missing and name == "disk.local") else "raw"
        device = "cdrom" if name == "disk.config" else "disk"
        disks.append({"type": "file", "device": device, "path": path, "format": fmt,
                      "target": f"vd{chr(ord('a') + n)}"})
    return {"uuid": uuid, "name": f"instance-{int(uuid[:8], 16):08x}", "running": True,
            "disks": disks}


def test_matches_nova_34s_own_get_available_resource(node: Node) -> None:
    """nova's real code (side venv) on the same tree, domains described by XML."""
    python = side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")
    ours = report(node)
    # the folder view: each domain attaches the disks its folder holds
    domains = [_domain(uuid, [p for p in paths if os.path.exists(p)])
               for uuid, paths in node.domains.items()]
    theirs = run_nova_resources(python, node.instances, domains)
    assert ours["over_commit"]["total"] == theirs["over_committed_size_total"]
    assert ours["nova"]["disk_available_least"] == theirs["disk_available_least"]
    assert ours["nova"]["disk_available_least_reported"] == theirs[
        "disk_available_least_int"]
    assert ours["scheduler"]["local_gb"] == theirs["local_gb_int"]
    assert ours["file_system"]["free"] / GIB == theirs["local_gb_info"]["free"]
    per_domain = {d["uuid"]: d for d in theirs["domains"]}
    rows = by_instance(ours)
    for uuid in node.domains:
        nova_disks = per_domain[uuid]["disks"]
        mine = {f"{node.instances}/{uuid}/{d['name']}": d for d in rows[uuid]["disks"]}
        for info in nova_disks:
            assert mine[info["path"]]["over_commit"] == info["over_committed_disk_size"]
            assert mine[info["path"]]["allocated"] == info["disk_size"]
            assert mine[info["path"]]["virtual_size"] == info["virt_disk_size"]


def test_a_corrupt_disk_stops_nova_but_not_the_report(node: Node) -> None:
    """nova's periodic task raises on a corrupt qcow2 header (no figures for the node at
    all); the report counts that disk as unknown and says so."""
    python = side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")
    uuid = UUID.format(0xE, 0xE)
    with pytest.raises(NovaRaised):
        run_nova_resources(python, node.instances, [_domain(uuid, node.corrupt)])
    assert by_instance(report(node))[uuid]["unknown_disks"] == 1


def test_an_unreadable_disk_is_unknown_not_skipped(node: Node) -> None:
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    disk = node.instances / UUID.format(0xC, 0xC) / "disk.local"
    disk.chmod(0)
    proc = run_cli("--config-file", str(node.config), "disk", "report", "--json",
                   prefix=prefix)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    row = by_instance(data)[UUID.format(0xC, 0xC)]
    local = next(d for d in row["disks"] if d["name"] == "disk.local")
    assert local["over_commit"] is None and "permission denied" in local["note"]
    assert local["allocated"] == os.stat(disk).st_blocks * 512  # lstat still works
    assert row["over_commit"] == 0 and row["unknown_disks"] == 1
    assert any(f["code"] == "unknown-disks" for f in data["findings"])
