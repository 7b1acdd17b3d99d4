#!/usr/bin/env python3
"""Benchmark: `novakeeper cache plan` against a `qemu-img info` loop on a large node.

    python bench/scan.py [--sizes 1000,10000,50000] [--bases-ratio 5] [--qemu-sample N]
                         [--keep DIR]

For each size N it builds a throwaway compute node in a temp folder:

* N instance disks: instances_path/<uuid>/disk (qcow2 over a raw original), plus a
  disk.local over an ephemeral_* base on one instance in ten and a disk.swap over a swap_*
  base on another one in ten (every instance folder also holds console.log, libvirt.xml and
  disk.info, which the scan must skip, as on a real node);
* N / bases-ratio original bases in instances_path/_base, named by 40-hex sha1s, raw and
  sparse, all in use (recent mtimes), plus unused originals, swap and ephemeral bases with
  old mtimes (the plan removes them) and a few unused but young ones (too young).

Disks are made fast: ONE real qcow2 per backing-name length is made by
`qemu-img create -f qcow2 -b <absolute base path> -F raw`; every disk is a copy of its bytes
with the backing file name patched in place (same length, so the header's
backing_file_size stays valid). The copies are written sparse (only the template's
non-zero 4 KiB blocks), so the files are byte-identical to the template but cost ~12 KiB
each. A few patched disks are checked with `qemu-img info --backing-chain` and the whole
plan is checked against what the tree should give before anything is timed.

Then, on the same tree, it times:

1. the in-process plan (plan_pass: scan + decide, exactly what `cache plan` runs): median
   of --runs runs after one warm-up, with the page cache warm;
2. the CLI, `novakeeper --instances-path X cache plan --json > /dev/null`, wall time;
3. peak memory: tracemalloc peak of one plan_pass (Python allocations), and ru_maxrss of
   a fresh process that only runs the plan (and of one that only imports novakeeper, and
   of one that runs the whole CLI, for scale);
4. the baseline, one `qemu-img info --output=json <disk>` per disk (also nova's
   `--force-share` form, and nova's exact command line with its env and prlimit wrapper),
   on every disk if a pilot says it takes under --full-limit seconds, otherwise on a
   random sample of --qemu-sample disks, extrapolated linearly (and labelled so).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from novakeeper.cache.layout import image_hash
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import PolicyConfig
from novakeeper.passes import plan_pass
from novakeeper.settings import Settings, default_config_files

DAY = 86400.0
GiB = 1 << 30
BLOCK = 4096
PILOT = 40  # disks timed to decide between the full set and a sample

# A raw base must not start with an image magic: start it like a boot sector.
BASE_HEAD = b"\xebc\x90" + bytes(range(256)) * 15 + b"\x00" * (BLOCK - 3 - 256 * 15)

# Peak memory is measured in a child process. ru_maxrss of a process started from this
# (large) one would include our own pages: Linux keeps the high-water mark across fork and
# exec. So the child forks first, while it is a bare interpreter, and reports the
# grandchild's ru_maxrss from wait4. argv: mode ("plan", "cli" or "import": the plan's
# imports only), then the instances path (plan) or the CLI arguments (cli).
MEM_CHILD = """
import os, sys, traceback
mode, rest = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    code = 0
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        if mode == "cli":
            sys.argv = ["novakeeper", *rest]
            from novakeeper.cli import main
            main()
        from novakeeper.passes import plan_pass
        from novakeeper.cache.policy import PolicyConfig
        from novakeeper.settings import Settings
        if mode == "plan":
            s = Settings(instances_path=rest[0], subdirectory_name="_base",
                         manager_interval=2400, host="bench", policy=PolicyConfig(),
                         touch_in_use=True, config_files=(),
                         state_path=os.path.join(rest[0], os.pardir, "state.db"))
            assert plan_pass(s).plan.disks_seen > 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 70
    sys.stdout.flush()
    os._exit(code)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss * 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


# -- building the tree ------------------------------------------------------------------


@dataclass
class Template:
    """One real qcow2 made by qemu-img, as the blocks to write for a copy."""

    size: int
    name_offset: int
    name_length: int
    blocks: list[tuple[int, bytes]]  # (offset, 4 KiB block) of every non-zero block


def make_template(binary: str, scratch: str, backing: str) -> Template:
    path = os.path.join(scratch, f"template-{len(backing)}.qcow2")
    subprocess.run([binary, "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", path],
                   check=True, capture_output=True)
    with open(path, "rb") as f:
        data = f.read()
    offset, length = struct.unpack_from(">QI", data, 8)
    if data[offset:offset + length] != os.fsencode(backing):
        raise RuntimeError(f"{path}: backing name not found at header offset {offset}")
    blocks = [(i, data[i:i + BLOCK]) for i in range(0, len(data), BLOCK)
              if data[i:i + BLOCK].count(0) != len(data[i:i + BLOCK])]
    if not blocks or blocks[0][0] != 0 or offset + length > BLOCK:
        raise RuntimeError(f"{path}: backing name is not in the first block")
    return Template(len(data), offset, length, blocks)


class DiskMaker:
    """Copies of one template per backing-name length, each with its own backing name."""

    def __init__(self, binary: str, scratch: str) -> None:
        self.binary = binary
        self.scratch = scratch
        self.templates: dict[int, Template] = {}

    def make(self, path: str, backing: str) -> None:
        name = os.fsencode(backing)
        t = self.templates.get(len(name))
        if t is None:
            t = self.templates[len(name)] = make_template(self.binary, self.scratch, backing)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            for offset, block in t.blocks:
                if offset == 0:
                    block = (block[:t.name_offset] + name
                             + block[t.name_offset + t.name_length:])
                os.pwrite(fd, block, offset)
            os.ftruncate(fd, t.size)
        finally:
            os.close(fd)


def make_base(path: str, apparent: int, mtime: float) -> None:
    """A sparse raw base: `apparent` bytes long, one real 4 KiB block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, BASE_HEAD, 0)
        os.ftruncate(fd, apparent)
    finally:
        os.close(fd)
    os.utime(path, (mtime, mtime))


def write_small(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class Tree:
    root: str
    instances_path: str
    cache_path: str
    disks: list[tuple[str, str]] = field(default_factory=list)  # (disk, its backing path)
    instances: int = 0
    cache_files: int = 0
    in_use: int = 0
    removable: int = 0
    too_young: int = 0
    build_seconds: float = 0.0
    templates: int = 0
    image_ids: dict[str, str] = field(default_factory=dict)
    """Path of each in-use original base -> the Glance image id it is named after
    (what nova's own cache manager needs as an instance's image_ref)."""


def build_tree(root: str, n: int, bases_ratio: int, rng: random.Random, binary: str,
               old_unused: int | None = None, local_slots: Sequence[int] = (3,),
               swap_slots: Sequence[int] = (7,)) -> Tree:
    """The node (see the module's docstring). The defaults are this benchmark's node; the
    other benchmarks may change the mix: `old_unused` unused originals with old mtimes (the
    plan removes them; default one per ten in-use originals), and an instance i gets a
    disk.local when i % 10 is in `local_slots` and a disk.swap when it is in `swap_slots`
    (default: one instance in ten each)."""
    started = time.perf_counter()
    now = time.time()
    ipath = os.path.join(root, "instances")
    cpath = os.path.join(ipath, "_base")
    scratch = os.path.join(root, "scratch")
    for p in (cpath, scratch, os.path.join(ipath, "locks")):
        os.makedirs(p)
    tree = Tree(root, ipath, cpath)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def base(name: str, age: float) -> str:
        path = os.path.join(cpath, name)
        make_base(path, rng.choice((1, 2, 4, 8, 10, 20)) * GiB, now - age)
        return path

    def original() -> str:  # an in-use original; same draws, same order as ever
        image_id = uid()
        path = base(image_hash(image_id), rng.uniform(60, 1800))
        tree.image_ids[path] = image_id
        return path

    n_used = max(1, n // bases_ratio)
    used = [original() for _ in range(n_used)]
    old = max(1, n_used // 10) if old_unused is None else old_unused  # unused for days: removed
    young = max(1, n_used // 40)  # unused for hours: too young
    for _ in range(old):
        base(image_hash(uid()), rng.uniform(2 * DAY, 40 * DAY))
    for _ in range(young):
        base(image_hash(uid()), rng.uniform(2 * 3600, 20 * 3600))
    swaps = [base("swap_512", 120.0), base("swap_2048", 120.0)]
    base("swap_4096", 9 * DAY)
    ephemerals = [base("ephemeral_10_0706d66", 120.0), base("ephemeral_20_40d1d2c", 120.0)]
    base("ephemeral_40_40d1d2c", 12 * DAY)
    tree.in_use = n_used + len(swaps) + len(ephemerals)
    tree.removable = old + 2
    tree.too_young = young

    maker = DiskMaker(binary, scratch)
    made = 0
    i = 0
    while made < n:
        u = uid()
        d = os.path.join(ipath, u)
        os.mkdir(d)
        write_small(os.path.join(d, "console.log"), b"[    0.000000] Linux version 6.1.0\n")
        write_small(os.path.join(d, "libvirt.xml"),
                    f"<domain type='kvm'><uuid>{u}</uuid></domain>\n".encode())
        write_small(os.path.join(d, "disk.info"), b'{"disk": "qcow2"}')
        # Every used original gets one disk first, then the rest are spread at random.
        extra: list[tuple[str, str]] = [
            ("disk", used[i] if i < n_used else rng.choice(used))]
        if i % 10 in local_slots:
            extra.append(("disk.local", ephemerals[(i // 10) % 2]))
        if i % 10 in swap_slots:
            extra.append(("disk.swap", swaps[(i // 10) % 2]))
        for name, backing in extra:
            if made == n:
                break
            path = os.path.join(d, name)
            maker.make(path, backing)
            tree.disks.append((path, backing))
            made += 1
        i += 1
    tree.instances = i
    tree.templates = len(maker.templates)
    shutil.rmtree(scratch)
    tree.cache_files = len(os.listdir(cpath))
    os.sync()  # no writeback of the new tree competing with the timings
    tree.build_seconds = time.perf_counter() - started
    return tree


def verify_tree(tree: Tree, binary: str, rng: random.Random, settings: Settings) -> None:
    """Before timing: qemu-img reads a few patched disks as we meant them, and the plan of
    the whole tree is exactly the one the tree was built to give."""
    picks = rng.sample(tree.disks, min(6, len(tree.disks)))
    picks += [next(x for x in tree.disks if x[0].endswith(s)) for s in ("disk.local",
                                                                        "disk.swap")
              if any(y[0].endswith(s) for y in tree.disks)]
    for path, backing in picks:
        out = subprocess.run([binary, "info", "--backing-chain", "--output=json", path],
                             check=True, capture_output=True, text=True).stdout
        chain = json.loads(out)
        top, bottom = chain[0], chain[-1]
        ok = (len(chain) == 2 and top["format"] == "qcow2"
              and top.get("backing-filename") == backing
              and top.get("backing-filename-format") == "raw"
              and bottom["filename"] == backing and bottom["format"] == "raw")
        if not ok:
            raise SystemExit(f"bench: qemu-img does not read {path} as built:\n{out}")
    result = plan_pass(settings)
    plan = result.plan
    counts = plan.by_verdict()
    expected = {Verdict.IN_USE: tree.in_use, Verdict.REMOVE: tree.removable,
                Verdict.TOO_YOUNG: tree.too_young}
    got = {v: counts.get(v, 0) for v in expected}
    if (got != expected or plan.problems or plan.disks_seen != len(tree.disks)
            or len(plan.decisions) != tree.cache_files):
        raise SystemExit(f"bench: plan does not match the tree: {dict(counts)}, "
                         f"{plan.disks_seen} disks, {len(plan.problems)} problems; "
                         f"expected {expected}, {len(tree.disks)} disks")
    print(f"  verified: qemu-img reads {len(picks)} patched disks as built; plan = "
          f"{got[Verdict.IN_USE]} in use, {got[Verdict.REMOVE]} remove, "
          f"{got[Verdict.TOO_YOUNG]} too young, 0 problems", flush=True)


# -- measuring --------------------------------------------------------------------------


def bench_settings(instances_path: str) -> Settings:
    """Nova's defaults; the state database lives in the throwaway tree."""
    return Settings(instances_path=instances_path, subdirectory_name="_base",
                    manager_interval=2400, host="bench", policy=PolicyConfig(),
                    touch_in_use=True, config_files=(),
                    state_path=os.path.join(os.path.dirname(instances_path), "state.db"))


def time_plan(settings: Settings, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of `runs` passes, after one warm-up."""
    held = [plan_pass(settings)]  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        held.clear()
        gc.collect()  # no garbage of the previous run collected inside this one
        c0, t0 = time.process_time(), time.perf_counter()
        held.append(plan_pass(settings))  # kept until the next run, as the CLI keeps it
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def traced_peak(settings: Settings) -> tuple[int, int]:
    """tracemalloc peak during one plan_pass, and what the finished Pass still holds."""
    gc.collect()
    tracemalloc.start()
    try:
        result = plan_pass(settings)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak, current


def run_wall(argv: Sequence[str]) -> float:
    """Wall seconds of one command, its stdout to /dev/null."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return wall


def max_rss(mode: str, args: Sequence[str]) -> int:
    """Peak RSS (bytes, ru_maxrss) of a fresh process that does only `mode`."""
    proc = subprocess.run([sys.executable, "-c", MEM_CHILD, mode, *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: memory child ({mode}) exited {proc.returncode}: "
                         f"{proc.stderr.strip()}")
    return int(proc.stdout.split()[-1])


def novakeeper_argv(instances_path: str) -> tuple[list[str], str]:
    exe = os.path.join(os.path.dirname(sys.executable), "novakeeper")
    if not os.access(exe, os.X_OK):  # a pyenv shim would add its own start-up to the time
        exe = shutil.which("novakeeper") or ""
    base = [exe] if exe else [sys.executable, "-m", "novakeeper"]
    note = ""
    if default_config_files():  # a real nova.conf here would change the plan: read none
        base += ["--config-file", os.devnull]
        note = " (--config-file /dev/null: this host has a nova.conf)"
    return [*base, "--instances-path", instances_path, "cache", "plan", "--json"], note


@dataclass
class Baseline:
    variant: str
    command: str
    measured: int  # disks actually probed
    seconds: float  # for `measured` disks
    total: float  # for all disks (measured, or extrapolated)
    extrapolated: bool


def qemu_variants(binary: str) -> list[tuple[str, list[str], list[str]]]:
    """(name, argv before the path, argv after it)."""
    variants = [
        ("qemu-img info", [binary, "info", "--output=json"], []),
        ("qemu-img info -U", [binary, "info", "--force-share", "--output=json"], []),
    ]
    try:
        import oslo_concurrency.prlimit  # noqa: F401  (nova's own wrapper)
    except ImportError:
        return variants
    nova = [sys.executable, "-m", "oslo_concurrency.prlimit", "--as=1073741824", "--cpu=30",
            "--", "env", "LC_ALL=C", "LANG=C", binary, "info"]
    variants.append(("nova exact", nova, ["--force-share", "--output=json"]))
    return variants


def qemu_loop(pre: list[str], post: list[str], disks: Sequence[str]) -> float:
    """What an operator's loop does: one qemu-img per disk, parse its JSON."""
    t0 = time.perf_counter()
    for disk in disks:
        out = subprocess.run([*pre, disk, *post], check=True, capture_output=True).stdout
        if json.loads(out)["format"] != "qcow2":
            raise SystemExit(f"bench: qemu-img: {disk} is not qcow2")
    return time.perf_counter() - t0


def baselines(binary: str, disks: Sequence[str], sample: int, full_limit: float,
              rng: random.Random) -> list[Baseline]:
    out = []
    n = len(disks)
    for name, pre, post in qemu_variants(binary):
        pilot = rng.sample(disks, min(PILOT, n))
        estimate = qemu_loop(pre, post, pilot) / len(pilot) * n
        full = estimate < full_limit
        chosen = list(disks) if full else rng.sample(disks, min(sample, n))
        seconds = qemu_loop(pre, post, chosen)
        extrapolated = len(chosen) < n
        total = seconds / len(chosen) * n
        command = " ".join([os.path.basename(pre[0]) if pre[0] == binary else "python",
                            *pre[1:], "<disk>", *post])
        out.append(Baseline(name, command, len(chosen), seconds, total, extrapolated))
        how = (f"extrapolated from {len(chosen)} random disks" if extrapolated
               else "all disks")
        print(f"  {name:18} {total:9.1f} s for {n} disks ({how}; "
              f"{seconds / len(chosen) * 1e3:.1f} ms/disk)", flush=True)
    return out


# -- one size ---------------------------------------------------------------------------


@dataclass
class Result:
    size: int
    disks: int
    instances: int
    cache_files: int
    templates: int
    build_seconds: float
    plan_runs: list[float]
    plan_cpu_runs: list[float]
    plan_median: float
    us_per_disk: float
    load: tuple[float, float]  # 1-min load average before and after the plan timings
    cli_runs: list[float]
    cli_median: float
    cli_command: str
    traced_peak: int
    traced_retained: int
    child_maxrss: int
    import_maxrss: int
    cli_maxrss: int
    baselines: list[Baseline]

    def ratio(self, b: Baseline) -> float:
        return b.total / self.plan_median


def node_args(ap: argparse.ArgumentParser) -> None:
    """The node options the other benchmarks share (bench/budget.py, bench/service.py)."""
    ap.add_argument("--disks", type=int, default=10000)
    ap.add_argument("--bases-ratio", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2026)


@contextlib.contextmanager
def built_node(args: argparse.Namespace, prefix: str) -> Iterator[Tree]:
    """The node of node_args in a throwaway folder, removed afterwards; prints the
    machine first, as every benchmark does."""
    binary = shutil.which("qemu-img")
    if binary is None:
        raise SystemExit("bench: needs qemu-img (Debian: apt-get install qemu-utils)")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()), flush=True)
    root = tempfile.mkdtemp(prefix=prefix)
    try:
        yield build_tree(root, args.disks, args.bases_ratio, random.Random(args.seed), binary)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tree_root(keep: str | None, size: int) -> Iterator[str]:
    if keep:
        root = os.path.join(os.path.abspath(keep), f"n{size}")
        if os.path.exists(root):
            raise SystemExit(f"bench: {root} already exists; pick an empty --keep folder")
        os.makedirs(root)
        yield root
        return
    root = tempfile.mkdtemp(prefix=f"novakeeper-bench-{size}-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_size(size: int, args: argparse.Namespace, binary: str) -> Result:
    rng = random.Random(args.seed + size)
    print(f"\n== {size} disks", flush=True)
    with tree_root(args.keep, size) as root:
        tree = build_tree(root, size, args.bases_ratio, rng, binary)
        print(f"  built {len(tree.disks)} disks in {tree.instances} instance folders over "
              f"{tree.cache_files} files in _base in {tree.build_seconds:.1f} s "
              f"({tree.templates} qemu-img templates) at {tree.instances_path}", flush=True)
        settings = bench_settings(tree.instances_path)
        os.environ["OS_NOVAKEEPER__STATE_PATH"] = settings.state_path  # the CLI runs too
        verify_tree(tree, binary, rng, settings)

        load_before = os.getloadavg()[0]
        runs, cpu_runs = time_plan(settings, args.runs)
        load_after = os.getloadavg()[0]
        median = statistics.median(runs)
        print(f"  plan (in process): median {median * 1e3:.1f} ms of {len(runs)} runs "
              f"(min {min(runs) * 1e3:.1f}, max {max(runs) * 1e3:.1f}; CPU median "
              f"{statistics.median(cpu_runs) * 1e3:.1f}); "
              f"{median / len(tree.disks) * 1e6:.1f} µs/disk; load average "
              f"{load_before:.2f} -> {load_after:.2f}", flush=True)
        peak, retained = traced_peak(settings)

        child_rss = max_rss("plan", [tree.instances_path])
        import_rss = max_rss("import", [])
        argv, note = novakeeper_argv(tree.instances_path)
        cli_rss = max_rss("cli", argv[1:])
        run_wall(argv)  # warm-up
        cli_runs = [run_wall(argv) for _ in range(args.runs)]
        print(f"  CLI: median {statistics.median(cli_runs) * 1e3:.0f} ms{note}; memory: "
              f"tracemalloc peak {peak / 2**20:.1f} MiB, plan child maxrss "
              f"{child_rss / 2**20:.1f} MiB (import only {import_rss / 2**20:.1f} MiB), "
              f"CLI maxrss {cli_rss / 2**20:.1f} MiB", flush=True)

        base = baselines(binary, [d for d, _ in tree.disks], args.qemu_sample,
                         args.full_limit, rng)
        return Result(
            size=size, disks=len(tree.disks), instances=tree.instances,
            cache_files=tree.cache_files, templates=tree.templates,
            build_seconds=tree.build_seconds, plan_runs=runs, plan_cpu_runs=cpu_runs,
            plan_median=median, us_per_disk=median / len(tree.disks) * 1e6,
            load=(load_before, load_after), cli_runs=cli_runs,
            cli_median=statistics.median(cli_runs),
            cli_command=" ".join(["novakeeper", *argv[1:]]) + " > /dev/null",
            traced_peak=peak, traced_retained=retained, child_maxrss=child_rss,
            import_maxrss=import_rss, cli_maxrss=cli_rss, baselines=base,
        )


# -- report -----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    qemu = subprocess.run([shutil.which("qemu-img") or "qemu-img", "--version"],
                          capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "qemu-img": qemu[0] if qemu else "?",
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "novakeeper source": source_state(),
    }


def source_state() -> str:
    """The commit the benchmark ran on, and whether src had uncommitted changes."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules[plan_pass.__module__]
                                                          .__file__ or ".")))
    try:
        head = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def report(results: list[Result], headline: int) -> tuple[str, bool]:
    time_rows = [
        [f"{r.disks:,}", f"{r.instances:,}", f"{r.cache_files:,}",
         f"{r.plan_median * 1e3:.1f}", f"{min(r.plan_runs) * 1e3:.1f}",
         f"{max(r.plan_runs) * 1e3:.1f}", f"{statistics.median(r.plan_cpu_runs) * 1e3:.1f}",
         f"{r.us_per_disk:.1f}", f"{min(r.plan_runs) / r.disks * 1e6:.1f}",
         f"{r.cli_median * 1e3:.0f}", f"{r.load[0]:.1f} / {r.load[1]:.1f}"]
        for r in results
    ]
    time_table = table(
        ["disks", "instances", "_base files", "plan median ms", "min ms", "max ms",
         "CPU median ms", "µs/disk (median)", "µs/disk (min)", "CLI wall ms (median)",
         "load avg before / after"], time_rows)
    mem_rows = [
        [f"{r.disks:,}", mib(r.traced_peak), mib(r.traced_retained), mib(r.child_maxrss),
         mib(r.import_maxrss), mib(r.child_maxrss - r.import_maxrss), mib(r.cli_maxrss)]
        for r in results
    ]
    mem_table = table(
        ["disks", "tracemalloc peak MiB", "retained by Pass MiB", "plan process maxrss MiB",
         "imports only MiB", "plan's share MiB", "CLI process maxrss MiB"], mem_rows)
    base_rows = []
    for r in results:
        for b in r.baselines:
            how = f"extrapolated from {b.measured:,}" if b.extrapolated else "measured, all"
            base_rows.append([
                f"{r.disks:,}", b.variant, f"{b.total:.1f}", how,
                f"{b.seconds / b.measured * 1e3:.2f}", f"{r.ratio(b):,.0f}x",
                f"{b.total / r.cli_median:,.0f}x"])
    base_table = table(["disks", "baseline", "total s", "how", "ms/disk",
                        "baseline / plan", "baseline / CLI wall"], base_rows)

    head = next((r for r in results if r.size == headline), results[-1])
    checks = []
    plain = head.baselines[0]
    checks.append((f"plan at {head.disks:,} disks < 1 s (median)", head.plan_median < 1.0,
                   f"{head.plan_median * 1e3:.0f} ms"))
    checks.append((f"{plain.variant} loop / plan >= 100x at {head.disks:,} disks",
                   head.ratio(plain) >= 100, f"{head.ratio(plain):,.0f}x"
                   + (f" (baseline extrapolated from {plain.measured} disks)"
                      if plain.extrapolated else " (baseline measured on all disks)")))
    checks.append((f"plan process maxrss < 200 MB at {head.disks:,} disks",
                   head.child_maxrss < 200e6, f"{head.child_maxrss / 1e6:.0f} MB"))
    if len(results) > 1:
        # Best of the runs: the least disturbed by anything else running on the machine.
        per = [min(r.plan_runs) / r.disks * 1e6 for r in results]
        spread = max(per) / min(per)
        checks.append(("µs/disk (min of runs) roughly constant across sizes (max/min < 2)",
                       spread < 2, " / ".join(f"{p:.1f}" for p in per)
                       + f" µs (spread {spread:.2f}x)"))
    check_lines = "\n".join(f"  [{'PASS' if ok else 'FAIL'}] {what}: {value}"
                            for what, ok, value in checks)
    text = (f"Plan (scan + decide, in process) and CLI wall time:\n\n{time_table}\n\n"
            f"Memory:\n\n{mem_table}\n\n"
            f"Baseline, one qemu-img per disk, serial:\n\n{base_table}\n\n"
            f"Targets:\n{check_lines}\n")
    return text, all(ok for _, ok, _ in checks)


def sweep_args(ap: argparse.ArgumentParser, keep_help: str) -> None:
    """The options of a benchmark over several node sizes against a qemu-img baseline
    (this one and bench/clean.py)."""
    ap.add_argument("--sizes", default="1000,10000,50000",
                    help="comma-separated disk counts (default: %(default)s)")
    ap.add_argument("--bases-ratio", type=int, default=5,
                    help="disks per in-use original base (default: %(default)s)")
    ap.add_argument("--qemu-sample", type=int, default=500,
                    help="qemu-img calls timed when running it on every disk would take "
                         "too long (default: %(default)s)")
    ap.add_argument("--full-limit", type=float, default=180.0,
                    help="run qemu-img on every disk if a pilot says it takes less than "
                         "this many seconds (default: %(default)s)")
    ap.add_argument("--keep", metavar="DIR", help=keep_help)
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON here")
    ap.add_argument("--seed", type=int, default=2026)


def sweep_sizes(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Parse and check --sizes (and the positive counts) in place; argparse's error else."""
    try:
        args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes: not a list of integers: {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 10:
        ap.error("--sizes: each size must be at least 10")
    if args.bases_ratio < 1 or args.qemu_sample < 1:
        ap.error("--bases-ratio and --qemu-sample must be positive")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep_args(ap, "build the trees in DIR/n<size> and keep them")
    ap.add_argument("--runs", type=int, default=7,
                    help="timed plan runs per size, after one warm-up (min 5; default: "
                         "%(default)s)")
    args = ap.parse_args(argv)
    sweep_sizes(ap, args)
    args.runs = max(5, args.runs)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    binary = shutil.which("qemu-img")
    if binary is None:
        raise SystemExit("bench: needs qemu-img (Debian: apt-get install qemu-utils)")
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results = [bench_size(size, args, binary) for size in args.sizes]
    headline = 10000 if 10000 in args.sizes else max(args.sizes)
    text, ok = report(results, headline)
    print(f"\ncommand: python bench/scan.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(text)
    if args.json:
        data: dict[str, Any] = {"machine": info, "results": [asdict(r) for r in results],
                                "targets_met": ok}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
