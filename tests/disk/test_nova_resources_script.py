"""nova 34's own `get_available_resource` on a sandbox node, checked by hand.

tests/disk/nova_resources.py runs nova's unchanged disk accounting (statvfs through
`get_fs_info`, `_get_disk_over_committed_size_total`, vconfig's parse of the domain XML,
`_get_instance_disk_info_from_config` with the real `qemu-img info`) in nova's side
virtualenv. Here it meets a small node on a loop-mounted ext4 file system of its own
(4 KiB blocks, 5 % reserved), so free space holds still, and every figure it gives is
compared with one computed here from os.stat / os.statvfs and the sizes chosen:

* a qcow2 overlay of 3 GiB over a raw base in `_base`, 3 MiB really written by
  `qemu-io`: max(0, virtual - st_blocks*512), backing file by its base name;
* a config drive (raw cdrom, an odd number of 2 KiB sectors, all written): st_size -
  st_blocks*512, which is -2048 here: nova does not clamp it;
* a network (rbd) disk and a block disk: skipped (no BDM says what they are);
* a shut-off domain with a sparse raw disk and a fully written raw one: counted, as
  nova lists inactive domains too;
* a qcow2 the guest filled past its virtual size: clamped to 0;
* a domain whose raw config drive is missing (FileNotFoundError) and one whose qcow2
  disk is missing (nova's DiskNotFound): nova counts the WHOLE domain as 0, its present
  disks included.

Then the node figures: local_gb, local_gb_used, disk_available_least as nova's floats and
as ComputeNode's IntegerField stores them (int(): toward zero, so -3.4 is -3).

Also: a corrupt qcow2 makes nova raise for the whole node (no figures at all), and nova
counts a disk by the format its domain XML declares, not the file's.
"""

from __future__ import annotations

import errno
import math
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _disk_sandbox import mounted_fs, qemu_io_write
from _nova import NovaRaised, run_nova_resources

from conftest import make_qcow2, make_raw, side_venv_python

GI = 1 << 30
MI = 1 << 20
FS_BYTES = 128 * MI
CONFIG_DRIVE_BYTES = 227 * 2048
"""An ISO 9660 config drive is whole 2 KiB sectors; an odd count ends mid-block."""


@pytest.fixture(scope="module")
def nova() -> Path:
    return side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")


@pytest.fixture
def node_fs(tmp_path: Path) -> Iterator[Path]:
    """A 128 MiB ext4 of its own, loop-mounted: free space is the test's alone."""
    with mounted_fs(tmp_path, FS_BYTES) as mnt:
        yield mnt


def write_all(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def file_disk(path: Path, fmt: str, target: str, device: str = "disk") -> dict[str, Any]:
    return {"type": "file", "device": device, "path": str(path), "format": fmt,
            "target": target}


def domain(number: int, running: bool, *disks: dict[str, Any]) -> dict[str, Any]:
    return {"uuid": str(uuid.UUID(int=number, version=4)), "name": f"instance-{number:08x}",
            "running": running, "disks": list(disks)}


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def expected_qcow2(path: Path, virtual: int, backing: str | None) -> dict[str, Any]:
    return {"type": "qcow2", "path": str(path), "virt_disk_size": virtual,
            "backing_file": backing, "disk_size": allocated(path),
            "over_committed_disk_size": max(0, virtual - allocated(path))}


def expected_raw(path: Path) -> dict[str, Any]:
    size = os.stat(path).st_size
    return {"type": "raw", "path": str(path), "virt_disk_size": size, "backing_file": "",
            "disk_size": allocated(path), "over_committed_disk_size": size - allocated(path)}


def build_node(instances: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The domains, and what nova must say of each (a list of disks, or what it raised)."""
    base = make_raw(instances / "_base" / ("a" * 40), 8 * MI, os.urandom(MI))
    (instances / "locks").mkdir()

    a = instances / str(uuid.UUID(int=1, version=4))
    overlay = make_qcow2(a / "disk", backing=base, size="3G")
    qemu_io_write(overlay, 0, 3 * MI)
    config = write_all(a / "disk.config", CONFIG_DRIVE_BYTES)
    running_a = domain(1, True, file_disk(overlay, "qcow2", "vda"),
                       file_disk(config, "raw", "sda", device="cdrom"),
                       {"type": "network", "device": "disk", "path": "volumes/volume-1",
                        "format": "raw", "target": "vdb"},
                       {"type": "block", "device": "disk", "target": "vdc", "format": "raw",
                        "path": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"})

    b = instances / str(uuid.UUID(int=2, version=4))
    sparse = make_raw(b / "disk", 512 * MI, os.urandom(MI))
    with open(sparse, "r+b") as f:
        f.seek(100 * MI)
        f.write(os.urandom(MI))
    full = write_all(b / "disk.eph0", 2 * MI)
    shut_off_b = domain(2, False, file_disk(sparse, "raw", "vda"),
                        file_disk(full, "raw", "vdb"))

    c = instances / str(uuid.UUID(int=3, version=4))
    filled = make_qcow2(c / "disk", size="2M")
    qemu_io_write(filled, 0, 2 * MI)
    running_c = domain(3, True, file_disk(filled, "qcow2", "vda"))

    d = instances / str(uuid.UUID(int=4, version=4))
    lonely = make_qcow2(d / "disk", backing=base, size="1G")
    qemu_io_write(lonely, 0, MI)
    no_config = domain(4, False, file_disk(lonely, "qcow2", "vda"),
                       file_disk(d / "disk.config", "raw", "sda", device="cdrom"))

    e = instances / str(uuid.UUID(int=5, version=4))
    e_config = write_all(e / "disk.config", CONFIG_DRIVE_BYTES)
    no_disk = domain(5, True, file_disk(e / "disk", "qcow2", "vda"),
                     file_disk(e_config, "raw", "sda", device="cdrom"))

    for folder in (a, b, c, d, e):
        (folder / "console.log").write_text("[    0.000000] Linux version 6.1.0\n")
    os.sync()  # ext4's delayed allocation: blocks and free counts settle first

    expected: dict[str, Any] = {
        running_a["name"]: [expected_qcow2(overlay, 3 * GI, base.name), expected_raw(config)],
        shut_off_b["name"]: [expected_raw(sparse), expected_raw(full)],
        running_c["name"]: [expected_qcow2(filled, 2 * MI, None)],
        no_config["name"]: {"type": "builtins.FileNotFoundError", "errno": errno.ENOENT},
        no_disk["name"]: {"type": "nova.exception.DiskNotFound", "errno": None},
    }
    return [running_a, shut_off_b, running_c, no_config, no_disk], expected


def test_nova_figures_match_an_independent_computation(node_fs: Path, nova: Path,
                                                       tmp_path: Path) -> None:
    instances = node_fs / "instances"
    instances.mkdir()
    domains, expected = build_node(instances)
    before = os.statvfs(instances)
    result = run_nova_resources(nova, instances, domains, workdir=tmp_path / "libvirt")
    after = os.statvfs(instances)
    assert (before.f_bavail, before.f_bfree) == (after.f_bavail, after.f_bfree)

    # the sandbox is what the test means: data really written, holes really there
    a, b, c = (expected[dom["name"]] for dom in domains[:3])
    assert a[0]["disk_size"] >= 3 * MI  # qemu-io's 3 MiB, plus qcow2 metadata
    assert a[1]["over_committed_disk_size"] == -2048  # half a 4 KiB block, not clamped
    assert b[0]["disk_size"] == 2 * MI  # 2 MiB written of 512
    assert b[1]["over_committed_disk_size"] == 0
    assert c[0]["disk_size"] > 2 * MI and c[0]["over_committed_disk_size"] == 0

    by_name = {entry["name"]: entry for entry in result["domains"]}
    assert set(by_name) == set(expected)
    for name, want in expected.items():
        got = by_name[name]
        if isinstance(want, list):
            assert got["disks"] == want, name
        else:
            assert got["disks"] is None, got
            assert {k: got["raised"][k] for k in ("type", "errno")} == want, got

    # nova's total: every domain, running or not, whose disks could all be read
    over_commit = sum(disk["over_committed_disk_size"]
                      for want in expected.values() if isinstance(want, list)
                      for disk in want)
    assert result["over_committed_size_total"] == over_commit
    # the missing disks' domains count 0 though their qcow2 / config drive exist
    assert "instance-00000004" in result["stderr"] and "instance-00000005" in result["stderr"]

    st = after
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert result["local_gb_info"] == {"total": total / GI, "free": free / GI,
                                       "used": used / GI}
    assert result["local_gb"] == total / GI
    assert result["local_gb_used"] == used / GI
    # nova's used counts the blocks reserved for root; its free leaves them out
    assert total - used - free == (st.f_bfree - st.f_bavail) * st.f_frsize > 0
    least = (free / GI * GI - over_commit) / GI
    assert result["disk_available_least"] == least
    assert least == (free - over_commit) / GI
    assert -4 < least < -3  # 3 GiB of overlay and 510 MiB of holes on a 128 MiB disk
    # ComputeNode's IntegerField: int(), toward zero, not floor
    assert result["disk_available_least_int"] == math.trunc(least) == -3
    assert result["local_gb_int"] == math.trunc(total / GI) == 0
    assert result["local_gb_used_int"] == 0

    # the XML nova parsed is libvirt's description of these disks
    xml = ET.fromstring(result["xml"]["instance-00000001"])
    disks = xml.findall("./devices/disk")
    assert [(d.get("type"), d.get("device")) for d in disks] == [
        ("file", "disk"), ("file", "cdrom"), ("network", "disk"), ("block", "disk")]
    first = disks[0]
    assert first.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert first.find("source").get("file") == a[0]["path"]  # type: ignore[union-attr]
    assert first.find("target").get("dev") == "vda"  # type: ignore[union-attr]


def test_a_corrupt_qcow2_makes_nova_raise_for_the_whole_node(tmp_path: Path,
                                                             nova: Path) -> None:
    """qemu-img cannot read it: InvalidDiskInfo, which the over-commit loop does not
    catch (only libvirtError, ENOENT/ESTALE/EACCES and DiskNotFound): nova reports no
    figures at all for the node."""
    instances = tmp_path / "instances"
    good = make_qcow2(instances / "good" / "disk", size="64M")
    bad = instances / "bad" / "disk"
    bad.parent.mkdir(parents=True)
    header = bytearray(os.urandom(512))
    header[0:8] = b"QFI\xfb\x00\x00\x00\x03"
    header[20:24] = (99).to_bytes(4, "big")  # cluster_bits: 2**99-byte clusters
    bad.write_bytes(bytes(header))
    domains = [domain(1, True, file_disk(good, "qcow2", "vda")),
               domain(2, True, file_disk(bad, "qcow2", "vda"))]
    with pytest.raises(NovaRaised) as raised:
        run_nova_resources(nova, instances, domains)
    assert raised.value.type == "nova.exception.InvalidDiskInfo"
    per_domain = {d["name"]: d for d in raised.value.result["domains"]}
    assert per_domain["instance-00000001"]["disks"][0]["virt_disk_size"] == 64 * MI
    assert per_domain["instance-00000002"]["raised"]["type"] == (
        "nova.exception.InvalidDiskInfo")


def test_bad_input_is_one_line(tmp_path: Path, nova: Path) -> None:
    with pytest.raises(AssertionError, match=r"exited 2: nova_resources\.py: instances_path"):
        run_nova_resources(nova, tmp_path / "nowhere", [])


def test_nova_counts_by_the_format_the_domain_declares(tmp_path: Path, nova: Path) -> None:
    """nova takes the format from the domain XML (`<driver type=...>`), not the file: a
    qcow2 declared raw counts as raw (file size - allocated), a raw file declared qcow2
    goes through `qemu-img info` (which probes: raw) and the qcow2 formula. And a qcow2
    whose backing file is gone still counts: `qemu-img info` does not open the chain."""
    instances = tmp_path / "instances"
    folder = instances / str(uuid.UUID(int=1, version=4))
    qcow2 = make_qcow2(folder / "disk", size="1G")
    qemu_io_write(qcow2, 0, MI)
    raw = make_raw(folder / "disk.eph0", GI)
    gone = make_raw(instances / "_base" / ("b" * 40), 4 * MI)
    orphan = make_qcow2(folder / "disk.swap", backing=gone, size="1G")
    gone.unlink()
    domains = [domain(1, True, file_disk(qcow2, "raw", "vda"), file_disk(raw, "qcow2", "vdb"),
                      file_disk(orphan, "qcow2", "vdc"))]
    result = run_nova_resources(nova, instances, domains)
    disks = result["domains"][0]["disks"]
    as_raw = expected_raw(qcow2)
    assert disks == [as_raw, expected_qcow2(raw, GI, None),
                     expected_qcow2(orphan, GI, gone.name)]
    assert 0 <= as_raw["over_committed_disk_size"] < MI  # ~1 GiB, had it been read as qcow2
    assert result["over_committed_size_total"] == sum(
        d["over_committed_disk_size"] for d in disks)
