"""A compute node of known sizes on a small file system of its own (a loop-mounted ext4
image), so that free space is exact and nothing else writes to it; and the figures of
that node computed independently of novakeeper: qemu-img's own JSON for qcow2 disks,
os.stat and os.statvfs for the rest, nova's formulas written out again here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import make_qcow2, make_raw, qemu_img

GIB = 1024**3
MIB = 1024**2
QEMU_IO = shutil.which("qemu-io") or "qemu-io"


def qemu_io_write(path: Path, offset: int, length: int, pattern: int = 0x5A,
                  fmt: str = "qcow2") -> None:
    """Bytes really written into the image, as a guest would (qemu-io from qemu-utils)."""
    subprocess.run([QEMU_IO, "-f", fmt, "-c", f"write -P {pattern} {offset} {length}",
                    str(path)], check=True, capture_output=True, timeout=60)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def mounted_fs(tmp_path: Path, size: int) -> Iterator[Path]:
    """A fresh ext4 file system of `size` bytes, loop-mounted on tmp_path/mnt: free space
    is the test's alone (root and mount needed: a failure in CI, a skip elsewhere).
    Inode tables and journal are initialised at mkfs time, not lazily after the mount."""
    image = tmp_path / "fs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        _unavailable("a loop-mounted file system needs root and mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "5",
                    "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                   check=True, capture_output=True, timeout=120)
    proc = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        _unavailable(f"cannot loop-mount a file system: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)


@pytest.fixture
def loopfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 GiB node of its own."""
    with mounted_fs(tmp_path, 3 * GIB) as mnt:
        yield mnt


def cache_name(image_id: str) -> str:
    return hashlib.sha1(image_id.encode()).hexdigest()


def finish(folder: Path, disk_info: dict[str, str] | None = None,
           console: int = 10 * 1024) -> None:
    """What nova leaves in a finished instance folder: disk.info, console.log."""
    info = disk_info if disk_info is not None else {
        str(p): "qcow2" for p in sorted(folder.glob("disk*"))}
    (folder / "disk.info").write_text(json.dumps(info))
    (folder / "console.log").write_bytes(b"x" * console)


@dataclass
class Node:
    root: Path
    instances: Path
    cache: Path
    config: Path
    domains: dict[str, list[str]] = field(default_factory=dict)
    """Instance uuid -> its disks' paths, as its libvirt domain would list them."""
    corrupt: list[str] = field(default_factory=list)


UUID = "{:08x}-0000-4000-8000-{:012x}"


def build_node(root: Path) -> Node:
    """Instances A..E, a `_del` and a `_resize` folder, a cache with an original, a
    swap and an ephemeral base."""
    inst = root / "instances"
    cache = inst / "_base"
    cache.mkdir(parents=True)
    node = Node(root, inst, cache, root / "nova.conf")
    node.config.write_text(f"[DEFAULT]\ninstances_path = {inst}\n")
    base = make_raw(cache / cache_name("image-a"), 64 * MIB, b"\x01" * (2 * MIB))
    unused = make_raw(cache / cache_name("image-old"), 16 * MIB, b"\x02" * MIB)
    os.utime(unused, (1, 1))  # unused for ages: reclaimable
    swap = make_raw(cache / "swap_512", 512 * MIB)
    eph = make_raw(cache / "ephemeral_1_0706d66", GIB)

    def folder(n: int) -> Path:
        path = inst / UUID.format(n, n)
        path.mkdir()
        return path

    # A: root overlay with 3 MiB written, ephemeral and swap overlays, a full config drive
    a = folder(0xA)
    qemu_io_write(make_qcow2(a / "disk", backing=base, size="2G"), 0, 3 * MIB)
    qemu_io_write(make_qcow2(a / "disk.local", backing=eph, size="1G"), 0, MIB)
    make_qcow2(a / "disk.swap", backing=swap, size="512M")
    (a / "disk.config").write_bytes(os.urandom(460 * 1024))
    finish(a)
    # B: an overlay the guest filled past its virtual size (metadata on top): clamped to 0
    b = folder(0xB)
    qemu_io_write(make_qcow2(b / "disk", backing=base, size="4M"), 0, 4 * MIB)
    finish(b)
    # C: a sparse raw root and a fully written raw disk whose size is not a block multiple
    c = folder(0xC)
    make_raw(c / "disk", 64 * MIB, b"\x03" * MIB)
    (c / "disk.local").write_bytes(b"\x04" * (8 * MIB + 100))
    finish(c, {str(c / "disk"): "raw", str(c / "disk.local"): "raw"})
    # D: finished, but disk.info names an ephemeral disk that is gone: nova counts 0
    d = folder(0xD)
    qemu_io_write(make_qcow2(d / "disk", backing=base, size="1G"), 0, MIB)
    finish(d, {str(d / "disk"): "qcow2", str(d / "disk.local"): "qcow2"})
    # E: boot from volume, an ephemeral disk with a corrupt qcow2 header: unknown (it
    # holds ephemeral bases only, so the unused original stays reclaimable)
    e = folder(0xE)
    make_qcow2(e / "disk.eph0", backing=eph, size="1G")
    with open(e / "disk.eph0", "r+b") as f:  # cluster_bits (offset 20) far out of range
        f.seek(20)
        f.write((200).to_bytes(4, "big"))
    finish(e, {str(e / "disk.eph0"): "qcow2"})
    node.corrupt.append(str(e / "disk.eph0"))
    # a deleted instance nova could not remove yet, and a resize's source disks
    gone = inst / (UUID.format(0xF0, 0xF0) + "_del")
    gone.mkdir()
    (gone / "disk").write_bytes(b"\x05" * (4 * MIB))
    (gone / "console.log").write_bytes(b"y" * 2048)
    resize = inst / (UUID.format(0xA, 0xA) + "_resize")
    resize.mkdir()
    qemu_io_write(make_qcow2(resize / "disk", backing=base, size="1G"), 0, MIB)
    for n, path in ((0xA, a), (0xB, b), (0xC, c), (0xD, d)):
        names = ["disk", "disk.local", "disk.swap", "disk.config"]
        uuid = UUID.format(n, n)
        node.domains[uuid] = [str(path / x) for x in names
                              if (path / x).exists() or x in _announced(path)]
    return node


def _announced(folder: Path) -> set[str]:
    return {os.path.basename(k) for k in json.loads((folder / "disk.info").read_text())}


# -- the independent computation ---------------------------------------------------------


def qemu_info(path: str) -> dict[str, object]:
    return dict(json.loads(qemu_img("info", "--output=json", path)))


def over_commit(path: str) -> int:
    """nova's figure for one disk, from qemu-img's JSON and os.stat."""
    info = qemu_info(path)
    if info["format"] == "qcow2":
        return max(0, int(str(info["virtual-size"])) - int(str(info["actual-size"])))
    st = os.stat(path)
    return st.st_size - st.st_blocks * 512


@dataclass
class Expected:
    free: int
    total: int
    used: int
    over_commit: int
    growth: int
    per_instance: dict[str, int]

    @property
    def available_least(self) -> float:
        return ((self.free / GIB) * GIB - self.over_commit) / GIB


def expected(node: Node, by_domain: bool = False) -> Expected:
    """Without `by_domain`, as the report counts instance folders; with it, as nova
    counts the domains `node.domains` describes (D's ephemeral disk is missing)."""
    st = os.statvfs(node.instances)
    per: dict[str, int] = {}
    growth = 0
    for uuid, disks in node.domains.items():
        figures = [over_commit(p) for p in disks if os.path.exists(p)]
        growth += sum(max(0, x) for x in figures)  # a disk that exists can grow
        if by_domain:
            # nova's ENOENT handler: a domain with a missing disk adds nothing at all
            per[uuid] = sum(figures) if len(figures) == len(disks) else 0
        else:  # the folder view: the disks that are there
            per[uuid] = sum(figures)
    return Expected(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize,
                    (st.f_blocks - st.f_bfree) * st.f_frsize, sum(per.values()), growth, per)


def allocated_under(path: Path) -> int:
    """st_blocks × 512 of every file below `path` (not the folders themselves)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
