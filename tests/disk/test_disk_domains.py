"""`disk report` with the libvirt usage source on: nova counts over-commit over the
domains libvirt has defined, so the report does too. libvirt's own test driver
(`test:///abs/node.xml`) defines the domains; nova 34's own code, given the same domains,
must agree on every figure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pytest
from _disk_sandbox import (  # noqa: F401  (loopfs: fixture)
    UUID,
    Node,
    build_node,
    expected,
    loopfs,
    qemu_io_write,
)
from _nova import run_nova_resources

from _cli_tree import run_cli
from conftest import make_qcow2, side_venv_python

MIB = 1024**2


def disk(path: Path | str, fmt: str, target: str, device: str = "disk") -> dict[str, Any]:
    return {"type": "file", "device": device, "path": str(path), "format": fmt,
            "target": target}


def domain_xml(dom: dict[str, Any]) -> str:
    disks = "".join(
        f"<disk type='{d['type']}' device='{d['device']}'><driver name='qemu' "
        f"type='{d['format']}'/><source file={quoteattr(d['path'])}/>"
        f"<target dev='{d['target']}'/></disk>" for d in dom["disks"])
    return (f"<domain type='test'><name>{dom['name']}</name><uuid>{dom['uuid']}</uuid>"
            f"<memory>65536</memory><os><type>hvm</type></os><devices>{disks}</devices>"
            "</domain>")


def domains_of(node: Node, elsewhere: Path) -> list[dict[str, Any]]:
    """A, B, C and D as nova defines them (the config drive a cdrom, C's disks raw, D's
    ephemeral disk gone); E's folder has no domain; `hand` runs a disk outside any
    instance folder, declared raw although it is a qcow2 (nova counts it as raw)."""
    out = []
    for n, fmts in ((0xA, {"disk": "qcow2", "disk.local": "qcow2", "disk.swap": "qcow2",
                           "disk.config": "raw"}),
                    (0xB, {"disk": "qcow2"}), (0xC, {"disk": "raw", "disk.local": "raw"}),
                    (0xD, {"disk": "qcow2", "disk.local": "qcow2"})):
        uuid = UUID.format(n, n)
        folder = node.instances / uuid
        disks = [disk(folder / name, fmt, f"vd{chr(ord('a') + i)}",
                      "cdrom" if name == "disk.config" else "disk")
                 for i, (name, fmt) in enumerate(fmts.items())]
        out.append({"uuid": uuid, "name": f"instance-{n:08x}", "running": True,
                    "disks": disks})
    out.append({"uuid": UUID.format(0x99, 0x99), "name": "hand", "running": False,
                "disks": [disk(elsewhere, "raw", "vda")]})
    return out


def test_report_counts_over_the_domains_as_nova_does(loopfs: Path,  # noqa: F811
                                                     tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    node = build_node(loopfs)
    elsewhere = make_qcow2(loopfs / "elsewhere" / "hand.qcow2", size="1G")
    qemu_io_write(elsewhere, 0, 2 * MIB)
    domains = domains_of(node, elsewhere)
    node_file = tmp_path / "node.xml"  # off the measured file system
    node_file.write_text("<?xml version='1.0'?><node>"
                         + "".join(domain_xml(d) for d in domains) + "</node>")
    with open(node.config, "a") as f:
        f.write(f"[libvirt]\nconnection_uri = test://{node_file}\n"
                "[novakeeper]\nusage_sources = libvirt\n")
    proc = run_cli("--config-file", str(node.config), "disk", "report", "--json")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    rows = {r["instance"]: r for r in ours["instances"]}
    assert ours["domains"] == {"defined": 5, "folders_without_domain": 1,
                               "without_folder": 1}
    e = rows[UUID.format(0xE, 0xE)]
    assert e["counted_by_nova"] is False and e["domain"] is None and e["over_commit"] == 0
    hand = rows[UUID.format(0x99, 0x99)]
    assert hand["domain"] == "hand" and hand["counted_by_nova"] is True
    (hand_disk,) = hand["disks"]
    st = os.stat(elsewhere)
    # declared raw: nova counts st_size - st_blocks * 512, not the qcow2's virtual size
    assert hand_disk["declared_format"] == "raw" and hand_disk["format"] == "qcow2"
    assert hand_disk["over_commit"] == st.st_size - st.st_blocks * 512
    assert any(f["code"] == "folders-without-domain" for f in ours["findings"])
    d = rows[UUID.format(0xD, 0xD)]  # its domain names a disk.local that is gone
    assert d["missing_disks"] == ["disk.local"] and d["over_commit"] == 0
    assert d["growth"] > 0  # the disk that is there can still grow
    assert any(f["code"] == "missing-disks" for f in ours["findings"])
    want = expected(node, by_domain=True)
    for uuid, oc in want.per_instance.items():
        assert rows[uuid]["over_commit"] == oc, uuid

    nova = side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")
    theirs = run_nova_resources(nova, node.instances, domains)
    assert ours["over_commit"]["total"] == theirs["over_committed_size_total"]
    assert ours["nova"]["disk_available_least"] == theirs["disk_available_least"]
    assert ours["nova"]["disk_available_least_reported"] == theirs[
        "disk_available_least_int"]
