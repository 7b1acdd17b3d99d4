"""`novakeeper demo`: a realistic throwaway compute node, then status, plan and clean on it.

Disks are real qcow2 files made by qemu-img (one per backing file, copied for each
instance: the backing path lives in the header). Bases are sparse raw files with a little
real data, so apparent and allocated sizes differ as they do on a real node.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from rich.console import Console

from novakeeper import settings
from novakeeper.cache import render
from novakeeper.cache.layout import image_hash
from novakeeper.cache.plan import Verdict
from novakeeper.disk import render as disk_render
from novakeeper.disk.report import from_pass
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.passes import executor_for, plan_pass
from novakeeper.state.journal import history
from novakeeper.units import human_bytes

DAY = 86400
GiB = 1 << 30
MiB = 1 << 20


@dataclass
class Sandbox:
    root: str
    instances_path: str
    cache_path: str
    instances: int = 0
    cache_files: int = 0
    pinned_image: str = ""
    """An unused image the demo's configuration pins."""
    notes: list[str] = field(default_factory=list)


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise NovakeeperError(ExitCode.PATH,
                              "the demo needs qemu-img to make real qcow2 disks "
                              "(Debian: apt-get install qemu-utils)")
    return path


def _sparse(path: str, apparent: int, data: int, mtime: float, rng: random.Random) -> None:
    """A sparse raw file: `apparent` bytes long, `data` bytes really written."""
    with open(path, "wb") as f:
        f.truncate(apparent)
        f.seek(0)
        chunk = rng.randbytes(min(data, MiB))
        written = 0
        while written < data:
            f.write(chunk)
            written += len(chunk)
    os.utime(path, (mtime, mtime))


class _Disks:
    """Makes qcow2 overlays: one `qemu-img create` per backing file, then copies."""

    def __init__(self, binary: str, scratch: str) -> None:
        self.binary = binary
        self.scratch = scratch
        self.templates: dict[tuple[str, str], str] = {}

    def make(self, path: str, backing: str, backing_format: str = "raw") -> None:
        key = (backing, backing_format)
        template = self.templates.get(key)
        if template is None:
            template = os.path.join(self.scratch, f"t{len(self.templates)}.qcow2")
            subprocess.run(
                [self.binary, "create", "-q", "-f", "qcow2", "-b", backing, "-F",
                 backing_format, template],
                check=True, capture_output=True,
            )
            self.templates[key] = template
        shutil.copyfile(template, path)


def build_sandbox(root: str, instances: int = 300, now: float | None = None,
                  seed: int = 2026) -> Sandbox:
    """A compute node with bases of every kind, ages spread over weeks, and disks using
    them through every route nova takes (disk, disk.local, disk.swap, rescue, resize,
    deferred delete, unshelve from a snapshot, a three-deep chain)."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    root = os.path.abspath(root)  # qemu-img resolves relative backing names from the image
    binary = _qemu_img()
    ipath = os.path.join(root, "instances")
    cpath = os.path.join(ipath, "_base")
    scratch = os.path.join(root, "scratch")
    for p in (cpath, scratch, os.path.join(ipath, "locks")):
        os.makedirs(p, exist_ok=True)
    sb = Sandbox(root, ipath, cpath)
    disks = _Disks(binary, scratch)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    # Glance images: the first 8 are in use, the rest fell out of use at various times.
    images = [uid() for _ in range(20)]
    originals = {}
    for i, image in enumerate(images):
        name = image_hash(image)
        if i < 8:
            mtime = now - rng.uniform(60, 1800)  # nova touches in-use bases every pass
        elif i < 11:
            mtime = now - rng.uniform(2 * 3600, 20 * 3600)  # unused, but under 24 h
        else:
            mtime = now - rng.uniform(2 * DAY, 40 * DAY)  # unused for days or weeks
        path = os.path.join(cpath, name)
        _sparse(path, rng.choice([1, 2, 4, 8, 10, 20]) * GiB,
                rng.randint(1, 6) * MiB, mtime, rng)
        originals[image] = path
    # Resized copies: one in use, one unused for 3 h (removable after 1 h), one fresh.
    resized = []
    for image, age in ((images[1], 300.0), (images[12], 3 * 3600.0), (images[13], 600.0)):
        path = originals[image] + f"_{rng.choice([10, 20, 40])}"
        _sparse(path, 20 * GiB, 2 * MiB, now - age, rng)
        resized.append(path)
    swaps = {}
    for mb, age in ((512, 100.0), (2048, 100.0), (4096, 5 * DAY)):
        path = os.path.join(cpath, f"swap_{mb}")
        _sparse(path, mb * MiB, 64 * 1024, now - age, rng)
        swaps[mb] = path
    ephemerals = {}
    for name, age in (("ephemeral_10_0706d66", 100.0), ("ephemeral_20_40d1d2c", 100.0),
                      ("ephemeral_40_40d1d2c", 9 * DAY)):
        path = os.path.join(cpath, name)
        _sparse(path, 10 * GiB, 256 * 1024, now - age, rng)
        ephemerals[name] = path
    # Debris nova never cleans: dead downloads, a dead conversion, checksum leftovers.
    for name, age in ((image_hash(uid()) + ".part", 3 * DAY),
                      (image_hash(uid()) + ".part", 11 * DAY),
                      (image_hash(uid()) + ".part", 120.0),
                      (image_hash(uid()) + ".converted", 2 * DAY),
                      (image_hash(images[15]) + ".info", 300 * DAY)):
        _sparse(os.path.join(cpath, name), 3 * GiB, 2 * MiB, now - age, rng)
    _sparse(os.path.join(cpath, "README.operator"), 100, 100, now - 60 * DAY, rng)

    def instance_dir(suffix: str = "") -> tuple[str, str]:
        u = uid()
        d = os.path.join(ipath, u + suffix)
        os.makedirs(d)
        with open(os.path.join(d, "console.log"), "w") as f:
            f.write("[    0.000000] Linux version 6.1.0\n")
        with open(os.path.join(d, "libvirt.xml"), "w") as f:
            f.write(f"<domain type='kvm'><uuid>{u}</uuid></domain>\n")
        return u, d

    used = images[:8]
    for n in range(instances):
        _, d = instance_dir()
        disks.make(os.path.join(d, "disk"), originals[used[n % len(used)]])
        if n % 3 == 0:
            disks.make(os.path.join(d, "disk.local"),
                       ephemerals["ephemeral_10_0706d66" if n % 2 else "ephemeral_20_40d1d2c"])
        if n % 4 == 0:
            disks.make(os.path.join(d, "disk.swap"), swaps[512 if n % 8 else 2048])
        if n % 10 == 0:
            with open(os.path.join(d, "disk.config"), "wb") as f:
                f.truncate(460 * 1024)
    # Routes nova's own manager does not see:
    _, d = instance_dir()  # rescue: disk.rescue backed by another image
    disks.make(os.path.join(d, "disk"), originals[images[0]])
    disks.make(os.path.join(d, "disk.rescue"), originals[images[8]])
    _, d = instance_dir()  # unshelved: disk backed by the snapshot's base, not its image's
    disks.make(os.path.join(d, "disk"), originals[images[9]])
    _, d = instance_dir("_resize")  # resize source kept on this host
    disks.make(os.path.join(d, "disk"), resized[0])
    _, d = instance_dir("_del")  # deletion deferred: its disk still names its base
    disks.make(os.path.join(d, "disk"), originals[images[2]])
    legacy = os.path.join(ipath, "instance-0000a1f3")
    os.makedirs(legacy)
    disks.make(os.path.join(legacy, "disk"), originals[images[3]])
    with open(os.path.join(legacy, "console.log"), "w") as log:  # made after the disks
        log.write("[    0.000000] Linux version 3.2.0\n")
    # Three-deep chain with relative names: disk -> snap.qcow2 -> ../_base/<original>.
    _, d = instance_dir()
    subprocess.run([binary, "create", "-q", "-f", "qcow2", "-b",
                    os.path.join("..", "_base", os.path.basename(originals[images[4]])),
                    "-F", "raw", os.path.join(d, "snap.qcow2")], check=True, cwd=d,
                   capture_output=True)
    subprocess.run([binary, "create", "-q", "-f", "qcow2", "-b", "snap.qcow2", "-F", "qcow2",
                    os.path.join(d, "disk")], check=True, cwd=d, capture_output=True)
    # A deferred-delete folder whose swap disk is truncated: it holds swap files only.
    _, d = instance_dir("_del")
    with open(os.path.join(d, "disk.swap"), "wb") as f:
        f.write(b"QFI\xfb\x00\x00\x00\x03")
    sb.notes.append(f"{os.path.join(d, 'disk.swap')} is truncated on purpose: swap bases held")
    shutil.rmtree(scratch)
    sb.pinned_image = images[12]  # unused for days: age alone would remove it
    sb.instances = instances + 7
    sb.cache_files = len(os.listdir(cpath))
    return sb


def write_config(sb: Sandbox, root: str) -> str:
    """A novakeeper.conf for the sandbox: its own state database, and a budget the cache
    exceeds even after the age-based removals, so eviction has work to do."""
    total = 0
    for entry in os.scandir(sb.cache_path):
        total += entry.stat(follow_symlinks=False).st_blocks * 512
    budget_mib = max(1, int(total * 0.55) // MiB)
    path = os.path.join(root, "novakeeper.conf")
    with open(path, "w") as f:
        f.write(f"[DEFAULT]\ninstances_path = {sb.instances_path}\n\n"
                f"[novakeeper]\nstate_path = {os.path.join(root, 'state', 'state.db')}\n"
                f"max_cache_size = {budget_mib}M\n"
                f"pinned_images = {sb.pinned_image}\n")
    return path


def run(root: str | None, instances: int, keep: bool, out: Console) -> None:
    made_here = root is None
    base_root = tempfile.mkdtemp(prefix="novakeeper-demo-") if root is None else root
    try:
        if not made_here and os.path.exists(os.path.join(base_root, "instances")):
            raise NovakeeperError(ExitCode.PATH,
                                  f"{base_root}/instances already exists; pick an empty --path")
        os.makedirs(base_root, exist_ok=True)
        started = time.time()
        try:
            sb = build_sandbox(base_root, instances)
        except subprocess.CalledProcessError as exc:
            err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise NovakeeperError(ExitCode.INTERNAL, "qemu-img failed while building the "
                                  f"sandbox: {err[-1] if err else exc}") from None
        except OSError as exc:
            raise NovakeeperError(ExitCode.PATH, f"cannot build the sandbox in {base_root}: "
                                  f"{exc.strerror}") from None
        out.print(f"[bold]Sandbox compute node[/] in {sb.instances_path}: {sb.instances} "
                  f"instance folders, {sb.cache_files} files in _base "
                  f"(built in {time.time() - started:.1f} s)")
        for note in sb.notes:
            out.print(f"  note: {note}", markup=False)
        conf_path = write_config(sb, base_root)
        conf = settings.load([conf_path])
        out.print(f"  config: {conf_path} (max_cache_size "
                  f"{human_bytes(conf.policy.budget.max_cache_size or 0)}, one pinned image)",
                  markup=False, highlight=False)
        out.rule("novakeeper cache status")
        first = plan_pass(conf, write_state=True)
        render.status_text(render.status_data(first.inventory, first.plan), out)
        out.rule("novakeeper cache plan")
        render.plan_table(first.plan, out)
        out.rule("novakeeper cache clean --yes")
        t0 = time.perf_counter()
        report = executor_for(first, conf).run()
        took = time.perf_counter() - t0
        for o in report.outcomes:
            out.print(f"{o.action:8} {o.name:52} {human_bytes(o.freed):>10}  {o.reason}",
                      markup=False, highlight=False)
        out.print(f"removed {len(report.removed)} files, freed {human_bytes(report.freed)} "
                  f"in {took:.2f} s; marked {report.touched} in-use bases", highlight=False)
        out.rule("novakeeper cache history")
        assert first.state is not None  # executor_for checked it
        render.history_table(history(first.state), out)
        first.close()
        with plan_pass(conf) as after:
            out.rule("after clean")
            out.print(render.summary_line(after.plan), highlight=False)
            for line in render.budget_lines(after.plan):
                out.print(line, markup=False, highlight=False)
            out.rule("novakeeper disk report (node totals and findings)")
            disk = from_pass(after, conf)
            for label, value in disk_render.node_lines(disk):
                out.print(f"{label:<24} {value}", markup=False, highlight=False)
            for finding in disk.findings:
                out.print(f"{finding.severity}: {finding.message}", markup=False,
                          highlight=False)
        gone = [d.name for d in first.plan.decisions
                if d.verdict is Verdict.IN_USE and not os.path.lexists(d.path)]
        if gone:
            raise NovakeeperError(ExitCode.INTERNAL,
                                  f"in-use bases were removed: {', '.join(gone)}")
        lost = [d.name for d in after.plan.decisions if d.removes]
        out.print(f"nothing in use was removed; {len(lost)} files still removable "
                  f"({'none' if not lost else ', '.join(lost)})", highlight=False)
        if keep or not made_here:
            out.print(f"sandbox kept: try  novakeeper --config-file {conf_path} cache plan",
                      markup=False, highlight=False)
    finally:
        if made_here and not keep:
            shutil.rmtree(base_root, ignore_errors=True)
