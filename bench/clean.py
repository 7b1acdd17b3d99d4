#!/usr/bin/env python3
"""Benchmark: `novakeeper cache clean` end to end, against `cache plan` and nova's own pass.

    python bench/clean.py [--sizes 1000,10000,50000] [--removals auto|N|N1,N2,...]
                          [--rounds 3] [--plan-runs 3] [--baseline auto|nova|qemu-img|none]

For each size N it builds bench/scan.py's throwaway node (N qcow2 disks over N/5 in-use
originals, plus swap and ephemeral bases), with as many unused old bases as the size's
number of removals asks for (default 450 at 10,000 disks, scaled with the square root of
the size: 142 at 1,000, 1,006 at 50,000; "hundreds", and never proportional to the disks,
so that the cost of a disk and the cost of a removal can be told apart). Then, in
--rounds rounds, each on a tree of its own:

1. the tree is built (the same tree every round: same seed, same names), its instance
   folders dated a day back (a folder younger than spawn_hold_seconds makes every pass
   read its disk.info: a steady node has few such folders), and left to settle for 2.5 s
   (the scanner rescans anything changed in the 2 s before a scan, which a real node's
   files were not); then one untimed `cache plan --json` creates the tree's fresh state
   database (in the tree's own folder, never /var/lib/novakeeper), warms the page cache
   and says what `clean` must remove;
2. `novakeeper --instances-path X cache plan --json > /dev/null`, --plan-runs times;
3. `novakeeper --instances-path X cache clean --yes --json`, once (it consumes the tree):
   wall and CPU time. Then it is checked: exactly the planned files are gone (the count
   it reports, its outcomes and the folder listing all agree with the plan), nothing was
   skipped or failed, and every base a disk uses is still there, the same inode. Any
   difference stops the benchmark.

The baseline, on one more tree of the same size in the same run:

* nova: nova 34.0.0's own `ImageCacheManager.update()` (libvirt driver), run in the
  virtualenv `.ci/nova-setup` makes (`${XDG_CACHE_HOME:-$HOME/.cache}/novakeeper/nova-venv`,
  NOVAKEEPER_NOVA_VENV or --nova-venv overrides it), with the tree's instances as
  unpersisted `objects.Instance` (image_ref, and swap/ephemeral block device mappings,
  which is what nova reads from its database), privsep run in-process (root). Only the
  pass is timed: nova-compute has its imports behind it. Nova runs one `qemu-img info`
  (through its prlimit wrapper) per instance; when a pilot says the whole pass would take
  over --full-limit seconds, a random sample of --qemu-sample of those calls is timed, the
  pass then runs with the backing file read natively, and the total is the pass as
  measured plus one sampled call's mean time per call it made: labelled "extrapolated".
  The pass really removes files; how many is printed (nova's rules differ from ours).
* qemu-img (when nova is not installed): the `qemu-img info` loop of bench/scan.py over
  every disk, or a sample extrapolated to all disks, labelled so.

Printed per size: medians of plan and clean, clean / plan, clean / baseline, time per
disk and, for the removals, (clean - plan) / removals; over three or more sizes, a
least-squares fit clean = a + b * disks + c * removals with its worst residual, so that
"linear in disks + removals" can be judged. Target: at 10,000 disks and ~450 removals,
clean under 5 s end to end (exit status 1 if missed).

The CLI runs from compiled bytecode, as an installed package does: children get no
PYTHONDONTWRITEBYTECODE and a PYTHONPYCACHEPREFIX in the work folder (bench/logs.py does
the same).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from novakeeper.cache.layout import QUARANTINE_NAME, RUN_LOCK_NAME, TRASH_NAME
from scan import (
    PILOT,
    Tree,
    bench_settings,
    build_tree,
    machine,
    novakeeper_argv,
    qemu_loop,
    qemu_variants,
    source_state,
    sweep_args,
    sweep_sizes,
    table,
    verify_tree,
)

HEADLINE = 10000
TARGET_SECONDS = 5.0
REMOVALS_AT_HEADLINE = 450
SETTLE_SECONDS = 2.5
"""The scanner rescans whatever changed within 2 s of its previous scan (coarse NFS
timestamps); a real node's files were not all written in the last two seconds."""
FOLDER_AGE_SECONDS = 86400.0
"""Instance folders are dated a day back once built (see make_tree)."""
FIXED_REMOVALS = 2
"""The builder always adds one old swap and one old ephemeral base: the plan removes both."""
NOT_CACHE_FILES = frozenset({RUN_LOCK_NAME, TRASH_NAME, QUARANTINE_NAME})

# Runs in nova's own virtualenv (python <this> SPEC.json): one pass of nova 34's libvirt
# ImageCacheManager over the tree SPEC describes; prints one JSON line.
NOVA_CHILD = r"""
import json, logging, os, random, struct, sys, time, warnings
warnings.simplefilter("ignore")
spec = json.load(open(sys.argv[1]))
import nova.conf
import nova.privsep
from nova import context as nova_context, objects
objects.register_all()
from nova.virt.libvirt import imagecache
from nova.virt.libvirt import utils as libvirt_utils

CONF = nova.conf.CONF
CONF([], project="nova", default_config_files=[])
CONF.set_override("instances_path", spec["instances_path"])
CONF.set_override("host", "bench")
nova.privsep.sys_admin_pctxt.set_client_mode(False)  # utime in-process: no privsep daemon
logging.basicConfig(level=logging.INFO, filename=spec["log"])  # as nova-compute logs

instances, bdms = [], {}
for i, inst in enumerate(spec["instances"], 1):
    instances.append(objects.Instance(
        id=i, uuid=inst["uuid"], image_ref=inst["image_ref"], kernel_id=None,
        ramdisk_id=None, host="bench", task_state=None, vm_state="active", os_type=None))
    blank = dict(source_type="blank", destination_type="local", boot_index=-1,
                 disk_bus="virtio", device_type="disk", instance_uuid=inst["uuid"],
                 delete_on_termination=True, no_device=False, encrypted=False,
                 encryption_secret_uuid=None, encryption_format=None,
                 encryption_options=None)
    lst = []
    if inst.get("swap_mb"):
        lst.append(objects.BlockDeviceMapping(guest_format="swap", device_name="/dev/vdc",
                                              volume_size=inst["swap_mb"], **blank))
    if inst.get("ephemeral_gb"):
        lst.append(objects.BlockDeviceMapping(guest_format=None, device_name="/dev/vdb",
                                              volume_size=inst["ephemeral_gb"], **blank))
    if lst:
        bdms[inst["uuid"]] = objects.BlockDeviceMappingList(objects=lst)
# the one database read of the pass: the instances' block device mappings
objects.BlockDeviceMappingList.bdms_by_instance_uuid = classmethod(
    lambda cls, context, uuids: {u: bdms[u] for u in uuids if u in bdms})

real = libvirt_utils.get_disk_backing_file
disks = [os.path.join(spec["instances_path"], i["uuid"], "disk") for i in spec["instances"]]
rng = random.Random(spec["seed"])

def timed_calls(paths):
    t0 = time.perf_counter()
    for p in paths:
        real(p)
    return time.perf_counter() - t0

pilot = rng.sample(disks, min(spec["pilot"], len(disks)))
mean = timed_calls(pilot) / len(pilot)
full = mean * len(disks) < spec["full_limit"]
stats = {"calls": 0, "stub_seconds": 0.0}
if not full:
    sample = rng.sample(disks, min(spec["sample"], len(disks)))
    mean = timed_calls(sample) / len(sample)

    def native(path, basename=True, format=None):  # what qemu-img info would answer
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            head = f.read(4096)
        offset, size = struct.unpack_from(">QI", head, 8)
        backing = os.fsdecode(head[offset:offset + size]) if offset else None
        if backing and basename:
            backing = os.path.basename(backing)
        stats["calls"] += 1
        stats["stub_seconds"] += time.perf_counter() - t0
        return backing

    libvirt_utils.get_disk_backing_file = native
else:
    def counted(path, basename=True, format=None):
        stats["calls"] += 1
        return real(path, basename, format)

    libvirt_utils.get_disk_backing_file = counted

manager = imagecache.ImageCacheManager()
context = nova_context.get_admin_context()
t0 = time.perf_counter()
manager.update(context, instances)
wall = time.perf_counter() - t0
total = wall if full else wall - stats["stub_seconds"] + stats["calls"] * mean
print(json.dumps({"full": full, "pass_seconds": wall, "total": total, "mean_call": mean,
                  "calls": stats["calls"], "sampled": 0 if full else len(sample),
                  "stub_seconds": stats["stub_seconds"],
                  "active": len(manager.active_base_files)}))
"""


# -- the node ---------------------------------------------------------------------------


def default_removals(size: int) -> int:
    return max(FIXED_REMOVALS + 1, round(REMOVALS_AT_HEADLINE * math.sqrt(size / HEADLINE)))


def make_tree(root: str, size: int, removals: int, args: argparse.Namespace,
              binary: str) -> tuple[Tree, float]:
    """The size's tree in `root`, and perf_counter() when its last file was written."""
    os.makedirs(root)
    tree = build_tree(root, size, args.bases_ratio, random.Random(args.seed + size), binary,
                      old_unused=removals - FIXED_REMOVALS)
    # As on a node whose instances were not all spawned in the last minutes: a folder
    # younger than spawn_hold_seconds (120 s) makes every pass read its disk.info
    # (about 15 µs a folder), which a steady node pays only for its few new instances.
    then = time.time() - FOLDER_AGE_SECONDS
    for folder in {os.path.dirname(disk) for disk, _ in tree.disks}:
        os.utime(folder, (then, then))
    return tree, time.perf_counter()


def settle(built: float) -> None:
    wait = built + SETTLE_SECONDS - time.perf_counter()
    if wait > 0:
        time.sleep(wait)


def cache_files(tree: Tree) -> dict[str, int]:
    """Name -> inode of every cache entry (novakeeper's own folders left out)."""
    out = {}
    with os.scandir(tree.cache_path) as it:
        for entry in it:
            if entry.name not in NOT_CACHE_FILES:
                out[entry.name] = entry.inode()
    return out


def in_use_names(tree: Tree) -> set[str]:
    return {os.path.basename(backing) for _, backing in tree.disks}


# -- running the CLI --------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    cpu: float  # user + system of the child


def child_env(tree: Tree, pycache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["OS_NOVAKEEPER__STATE_PATH"] = os.path.join(tree.root, "state.db")
    return env


def run_cli(argv: Sequence[str], env: dict[str, str], stdout: str = os.devnull,
            timeout: float | None = None) -> Run:
    """Wall and CPU seconds (user + system, from wait4) of one command that must exit 0;
    its stdout to `stdout`."""
    with open(stdout, "wb") as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer is not None:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        wall = time.perf_counter() - t0
        code = proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here
        if code != 0:
            err.seek(0)
            why = (f"killed after {timeout:.0f} s (--timeout)" if timeout and wall >= timeout
                   else f"exited {code}")
            raise SystemExit(f"bench: {' '.join(argv)} {why}: "
                             f"{err.read().decode(errors='replace').strip()[-2000:]}")
    return Run(wall, usage.ru_utime + usage.ru_stime)


def cli_argvs(tree: Tree) -> tuple[list[str], list[str], str]:
    plan, note = novakeeper_argv(tree.instances_path)
    head = plan[:plan.index("cache")]
    return plan, [*head, "cache", "clean", "--yes", "--json"], note


# -- checking a clean -------------------------------------------------------------------


def planned_removals(plan_json: str) -> list[str]:
    with open(plan_json) as f:
        plan = json.load(f)
    removes = {"remove", "stale-partial", "evict"}
    names = [d["name"] for d in plan["decisions"] if d["verdict"] in removes]
    if plan["summary"]["removals"] != len(names):
        raise SystemExit(f"bench: plan summary says {plan['summary']['removals']} removals, "
                         f"its decisions {len(names)}")
    return names


def check_clean(tree: Tree, before: dict[str, int], planned: list[str], out_json: str,
                expected: int) -> int:
    """Fail loudly unless exactly the planned files went and every in-use base stayed."""
    with open(out_json) as f:
        out = json.load(f)
    result = out["result"]
    removed_names = sorted(o["name"] for o in result.get("outcomes", [])
                           if o.get("action") == "removed")
    after = cache_files(tree)
    gone = sorted(set(before) - set(after))
    problems = []
    if len(planned) != expected:
        problems.append(f"the plan has {len(planned)} removals, the tree was built for "
                        f"{expected}")
    if result["removed"] != len(planned):
        problems.append(f"clean reports {result['removed']} removed, the plan "
                        f"{len(planned)}")
    if removed_names != sorted(planned):
        problems.append(f"clean's outcomes name {len(removed_names)} removed files, not the "
                        f"{len(planned)} planned ones")
    if gone != sorted(planned):
        problems.append(f"{len(gone)} files left the cache folder, {len(planned)} planned "
                        f"(unplanned: {sorted(set(gone) - set(planned))[:5]}, still there: "
                        f"{sorted(set(planned) - set(gone))[:5]})")
    if set(after) - set(before):
        problems.append(f"new files in the cache folder: {sorted(set(after) - set(before))[:5]}")
    for key in ("skipped", "failed", "trashed"):
        if result.get(key):
            problems.append(f"clean reports {result[key]} {key}")
    lost = [n for n in in_use_names(tree) if after.get(n) != before.get(n)]
    if lost:
        problems.append(f"{len(lost)} IN-USE BASES GONE OR REPLACED: {lost[:5]}")
    if problems:
        raise SystemExit("bench: clean did not do what the plan said:\n  "
                         + "\n  ".join(problems))
    return len(gone)


# -- baselines --------------------------------------------------------------------------


@dataclass
class Baseline:
    name: str  # "nova" or the qemu-img variant
    total: float  # seconds for the whole node (measured, or extrapolated)
    how: str
    extrapolated: bool
    removed: int | None = None  # files the baseline removed (nova)
    detail: dict[str, Any] = field(default_factory=dict)


def nova_python(args: argparse.Namespace) -> str | None:
    venv = args.nova_venv or os.environ.get("NOVAKEEPER_NOVA_VENV") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "novakeeper", "nova-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.access(python, os.X_OK):
        return None
    probe = subprocess.run(
        [python, "-c", "import importlib.metadata as m, nova.virt.libvirt.imagecache; "
                       "print(m.version('nova'))"],
        capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return None
    if probe.stdout.strip() != "34.0.0":
        print(f"  note: nova {probe.stdout.strip()} in {venv}, not 34.0.0", flush=True)
    return python


def nova_baseline(python: str, tree: Tree, args: argparse.Namespace, work: str) -> Baseline:
    instances: dict[str, dict[str, Any]] = {}
    for disk, backing in tree.disks:
        uuid = os.path.basename(os.path.dirname(disk))
        inst = instances.setdefault(uuid, {"uuid": uuid, "image_ref": None})
        name, base = os.path.basename(disk), os.path.basename(backing)
        if name == "disk":
            inst["image_ref"] = tree.image_ids[backing]
        elif name == "disk.swap":
            inst["swap_mb"] = int(base.split("_")[1])
        elif name == "disk.local":
            inst["ephemeral_gb"] = int(base.split("_")[1])
    spec = os.path.join(tree.root, "nova-spec.json")
    with open(spec, "w") as f:
        json.dump({"instances_path": tree.instances_path, "instances": list(instances.values()),
                   "log": os.path.join(tree.root, "nova-compute.log"), "seed": args.seed,
                   "pilot": PILOT, "sample": args.qemu_sample,
                   "full_limit": args.full_limit}, f)
    child = os.path.join(work, "nova_pass.py")
    with open(child, "w") as f:
        f.write(NOVA_CHILD)
    before = cache_files(tree)
    proc = subprocess.run([python, child, spec], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: nova's pass failed:\n{proc.stderr.strip()[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    removed = len(set(before) - set(cache_files(tree)))
    n = len(instances)
    how = (f"measured, {data['calls']:,} qemu-img calls" if data["full"] else
           f"extrapolated: pass measured with {data['calls']:,} backing files read "
           f"natively, + {data['calls']:,} x {data['mean_call'] * 1e3:.1f} ms (mean of "
           f"{data['sampled']} real qemu-img calls)")
    print(f"  nova 34 ImageCacheManager.update(): {data['total']:.1f} s for {n:,} instances "
          f"({how}); it removed {removed} files", flush=True)
    return Baseline("nova ImageCacheManager", data["total"], how, not data["full"], removed,
                    data)


def qemu_baseline(binary: str, tree: Tree, args: argparse.Namespace,
                  rng: random.Random) -> Baseline:
    """bench/scan.py's plain `qemu-img info` loop, all disks or an extrapolated sample."""
    name, pre, post = qemu_variants(binary)[0]
    disks = [d for d, _ in tree.disks]
    n = len(disks)
    pilot = rng.sample(disks, min(PILOT, n))
    full = qemu_loop(pre, post, pilot) / len(pilot) * n < args.full_limit
    chosen = disks if full else rng.sample(disks, min(args.qemu_sample, n))
    seconds = qemu_loop(pre, post, chosen)
    total = seconds / len(chosen) * n
    how = "measured, all disks" if full else f"extrapolated from {len(chosen)} random disks"
    print(f"  {name} loop: {total:.1f} s for {n:,} disks ({how})", flush=True)
    return Baseline(f"{name} loop", total, how, not full)


# -- one size ---------------------------------------------------------------------------


@dataclass
class Result:
    size: int
    disks: int
    instances: int
    cache_files: int
    removals: int
    plan_runs: list[Run]
    clean_runs: list[Run]
    baseline: Baseline | None
    note: str

    @property
    def plan(self) -> float:
        return statistics.median(r.wall for r in self.plan_runs)

    @property
    def clean(self) -> float:
        return statistics.median(r.wall for r in self.clean_runs)


def bench_size(size: int, removals: int, args: argparse.Namespace, binary: str,
               work: str, python: str | None) -> Result:
    print(f"\n== {size:,} disks, {removals} removals", flush=True)
    pycache = os.path.join(work, "pycache")
    plan_runs: list[Run] = []
    clean_runs: list[Run] = []
    tree: Tree | None = None
    note = ""
    for r in range(1, args.rounds + 1):
        root = os.path.join(work, f"n{size}-round{r}")
        tree, built = make_tree(root, size, removals, args, binary)
        if r == 1:
            print(f"  built {len(tree.disks):,} disks in {tree.instances:,} instance folders "
                  f"over {tree.cache_files:,} files in _base in {tree.build_seconds:.1f} s",
                  flush=True)
            logging.getLogger("novakeeper").setLevel(logging.ERROR)  # "new state db"
            verify_tree(tree, binary, random.Random(args.seed),
                        bench_settings(tree.instances_path))
            os.unlink(os.path.join(tree.root, "state.db"))  # the CLI makes its own below
            for suffix in ("-wal", "-shm"):
                if os.path.exists(os.path.join(tree.root, "state.db" + suffix)):
                    os.unlink(os.path.join(tree.root, "state.db" + suffix))
        settle(built)
        env = child_env(tree, pycache)
        plan_argv, clean_argv, note = cli_argvs(tree)
        plan_out = os.path.join(tree.root, "plan.json")
        run_cli(plan_argv, env, plan_out)  # untimed: state db, page cache, what to expect
        planned = planned_removals(plan_out)
        runs = [run_cli(plan_argv, env) for _ in range(args.plan_runs)]
        plan_runs += runs
        before = cache_files(tree)
        out = os.path.join(tree.root, "clean.json")
        run = run_cli(clean_argv, env, out, timeout=args.timeout)
        removed = check_clean(tree, before, planned, out, removals)
        clean_runs.append(run)
        print(f"  round {r}: plan {' '.join(f'{x.wall:.2f}' for x in runs)} s; clean "
              f"{run.wall:.2f} s (CPU {run.cpu:.2f} s), removed {removed} = planned, every "
              f"in-use base kept", flush=True)
        if not args.keep:
            shutil.rmtree(tree.root, ignore_errors=True)
    assert tree is not None
    baseline = None
    if args.baseline != "none":
        root = os.path.join(work, f"n{size}-baseline")
        btree, built = make_tree(root, size, removals, args, binary)
        settle(built)
        if python is not None:
            baseline = nova_baseline(python, btree, args, work)
        else:
            baseline = qemu_baseline(binary, btree, args, random.Random(args.seed + size))
        if not args.keep:
            shutil.rmtree(btree.root, ignore_errors=True)
    return Result(size, len(tree.disks), tree.instances, tree.cache_files, removals,
                  plan_runs, clean_runs, baseline, note)


# -- report -----------------------------------------------------------------------------


def fit(results: Sequence[Result]) -> str:
    """Least squares clean = a + b * disks + c * removals over every clean run."""
    points = [(float(r.disks), float(r.removals), run.wall)
              for r in results for run in r.clean_runs]
    if len({(d, k) for d, k, _ in points}) < 3:
        return "fit: needs three sizes or more (with different disks : removals)"
    rows = [(1.0, d, k) for d, k, _ in points]
    ata = [[sum(x[i] * x[j] for x in rows) for j in range(3)] for i in range(3)]
    aty = [sum(x[i] * p[2] for x, p in zip(rows, points, strict=True)) for i in range(3)]
    coef = solve3(ata, aty)
    if coef is None:
        return "fit: singular (disks and removals move together)"
    a, b, c = coef
    worst = max(abs(a + b * d + c * k - y) / y for d, k, y in points)
    exact = " (three points: the fit is exact)" if len(points) == 3 else ""
    return (f"fit over {len(points)} clean runs: clean = {a:+.2f} s {b * 1e6:+.1f} µs x disks "
            f"{c * 1e3:+.2f} ms x removals; worst residual {worst * 100:.0f} %{exact}. A cost "
            "linear in disks + removals fits with small residuals and a flat (clean - plan) "
            "per removal across sizes; a re-check that rescans the node per removal makes "
            "that column grow with the disks")


def solve3(m: list[list[float]], v: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting on a 3x3 system."""
    a = [[*row, rhs] for row, rhs in zip(m, v, strict=True)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12 * max(1.0, abs(a[0][0])):
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(3):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][3] / a[i][i] for i in range(3)]


def report(results: Sequence[Result]) -> tuple[str, bool | None]:
    rows = []
    for r in results:
        b = r.baseline
        rows.append([
            f"{r.disks:,}", f"{r.instances:,}", f"{r.cache_files:,}", f"{r.removals:,}",
            f"{r.plan:.2f}", f"{r.clean:.2f} ({len(r.clean_runs)})",
            f"{statistics.median(x.cpu for x in r.clean_runs):.2f}",
            f"{r.clean / r.plan:.2f}x",
            f"{b.total:.1f}" if b else "-",
            f"{r.clean / b.total:.3g}x" if b else "-",
            f"{r.plan / r.disks * 1e6:.0f}", f"{r.clean / r.disks * 1e6:.0f}",
            f"{(r.clean - r.plan) / r.removals * 1e3:.1f}",
        ])
    text = table(["disks", "instances", "_base files", "removals", "plan s (median)",
                  "clean s (median, runs)", "clean CPU s", "clean / plan", "baseline s",
                  "clean / baseline", "plan µs/disk", "clean µs/disk",
                  "(clean - plan) ms/removal"], rows)
    lines = [text, ""]
    for r in results:
        if r.baseline is not None:
            lines.append(f"baseline at {r.disks:,} disks: {r.baseline.name}, "
                         f"{r.baseline.how}"
                         + (f"; it removed {r.baseline.removed} files (novakeeper: "
                            f"{r.removals})" if r.baseline.removed is not None else ""))
    lines.append(fit(results))
    head = next((r for r in results if r.size == HEADLINE), None)
    ok: bool | None = None
    if head is None:
        lines.append(f"target (clean < {TARGET_SECONDS:g} s at {HEADLINE:,} disks, ~"
                     f"{REMOVALS_AT_HEADLINE} removals): not measured in this run")
    else:
        ok = head.clean < TARGET_SECONDS
        lines.append(f"[{'PASS' if ok else 'FAIL'}] clean at {head.disks:,} disks and "
                     f"{head.removals} removals < {TARGET_SECONDS:g} s end to end: "
                     f"{head.clean:.2f} s (median of {len(head.clean_runs)})"
                     + ("" if abs(head.removals - REMOVALS_AT_HEADLINE) < 50 else
                        f" [removals {head.removals}, not ~{REMOVALS_AT_HEADLINE}]"))
    return "\n".join(lines), ok


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep_args(ap, "build the trees in DIR and keep them")
    ap.add_argument("--removals", default="auto",
                    help="removals at each size: auto (450 at 10,000 disks, scaled with the "
                         "square root of the size), one number for every size, or one per "
                         "size, comma-separated (at least 3: one old swap and one old "
                         "ephemeral base are always there)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="trees built per size, one clean each (default: %(default)s)")
    ap.add_argument("--plan-runs", type=int, default=3,
                    help="timed plans on each round's tree, before its clean "
                         "(default: %(default)s)")
    ap.add_argument("--baseline", choices=("auto", "nova", "qemu-img", "none"),
                    default="auto", help="auto: nova's pass if nova is installed (see "
                    ".ci/nova-setup), else the qemu-img loop (default: %(default)s)")
    ap.add_argument("--nova-venv", metavar="DIR",
                    help="nova's virtualenv (default: $NOVAKEEPER_NOVA_VENV, else "
                         "${XDG_CACHE_HOME:-~/.cache}/novakeeper/nova-venv)")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="give up on a clean running longer (default: %(default)s s)")
    args = ap.parse_args(argv)
    sweep_sizes(ap, args)
    try:
        if args.removals == "auto":
            args.removals = [default_removals(s) for s in args.sizes]
        else:
            given = [int(x) for x in args.removals.split(",") if x.strip()]
            args.removals = given * len(args.sizes) if len(given) == 1 else given
    except ValueError:
        ap.error("--removals takes comma-separated integers")
    if len(args.removals) != len(args.sizes):
        ap.error("--removals: one number, or one per size")
    if min(args.removals) < FIXED_REMOVALS + 1:
        ap.error(f"--removals: at least {FIXED_REMOVALS + 1}")
    if args.rounds < 1 or args.plan_runs < 1:
        ap.error("--rounds and --plan-runs must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    binary = shutil.which("qemu-img")
    if binary is None:
        raise SystemExit("bench: needs qemu-img (Debian: apt-get install qemu-utils)")
    python = None
    if args.baseline in ("auto", "nova"):
        python = nova_python(args)
        if python is None and args.baseline == "nova":
            raise SystemExit("bench: nova 34 not found: run .ci/nova-setup (or --nova-venv)")
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"baseline: {'nova ImageCacheManager (' + python + ')' if python else args.baseline}",
          flush=True)
    if args.keep:
        work = os.path.abspath(args.keep)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="novakeeper-bench-clean-")
    try:
        results = [bench_size(size, k, args, binary, work, python)
                   for size, k in zip(args.sizes, args.removals, strict=True)]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text, ok = report(results)
    print(f"\ncommand: python bench/clean.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"source: {source_state()}; timed: novakeeper --instances-path X cache plan "
          f"--json > /dev/null, novakeeper --instances-path X cache clean --yes --json > FILE"
          f"{results[0].note}")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": [asdict(r) for r in results],
                       "target_met": ok}, f, indent=2)
    return 1 if ok is False else 0


if __name__ == "__main__":
    sys.exit(main())
