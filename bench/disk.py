#!/usr/bin/env python3
"""Benchmark: `novakeeper disk report` against `cache plan` on the same tree.

    python bench/disk.py [--sizes 10000] [--runs 5] [--keep DIR]

For each size N it builds bench/scan.py's throwaway node (N qcow2 disks over N/5 in-use
originals, swap and ephemeral bases, instance folders with console.log and disk.info),
dates the instance folders a day back and lets the tree settle, runs one untimed plan
(state database, page cache), then alternates `novakeeper --instances-path X cache plan
--json > /dev/null` and `novakeeper --instances-path X disk report --json > /dev/null`,
--runs times each, so that both see the same cache state. Printed: the medians (wall and
CPU) and report / plan. The issue's target: report within 1.5x of plan at 10,000 disks
(exit status 1 if missed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from clean import child_env, run_cli
from scan import build_tree, machine, source_state

TARGET = 1.5


def age_folders(ipath: str, age: float) -> None:
    """A steady node: instance folders last changed a day ago (not within the spawn hold)."""
    when = time.time() - age
    for entry in os.scandir(ipath):
        if entry.is_dir() and entry.name not in ("_base", "locks"):
            os.utime(entry.path, (when, when))


def bench_size(n: int, runs: int, work: str, binary: str) -> dict[str, float]:
    root = os.path.join(work, f"n{n}")
    tree = build_tree(root, n, 5, random.Random(n), binary)
    age_folders(tree.instances_path, 86400.0)
    time.sleep(2.5)  # the scanner rescans whatever changed in the 2 s before a scan
    env = child_env(tree, os.path.join(work, "pycache"))
    base = [sys.executable, "-m", "novakeeper", "--instances-path", tree.instances_path]
    run_cli([*base, "cache", "plan", "--json"], env)  # untimed: state db, page cache
    out = os.path.join(root, "report.json")
    run_cli([*base, "disk", "report", "--json"], env, stdout=out)
    with open(out) as f:
        disks = json.load(f)["over_commit"]["disks"]
    plans, reports = [], []
    for _ in range(runs):
        plans.append(run_cli([*base, "cache", "plan", "--json"], env))
        reports.append(run_cli([*base, "disk", "report", "--json"], env))
    plan_wall = statistics.median(r.wall for r in plans)
    report_wall = statistics.median(r.wall for r in reports)
    return {"size": n, "disks": disks, "plan_wall": plan_wall, "report_wall": report_wall,
            "plan_cpu": statistics.median(r.cpu for r in plans),
            "report_cpu": statistics.median(r.cpu for r in reports),
            "ratio": report_wall / plan_wall}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000", help="comma-separated disk counts")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="build the trees in DIR and keep them")
    args = ap.parse_args(argv)
    binary = shutil.which("qemu-img")
    if binary is None:
        raise SystemExit("bench: needs qemu-img (Debian: apt-get install qemu-utils)")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()), flush=True)
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(
        prefix="novakeeper-bench-disk-")
    os.makedirs(work, exist_ok=True)
    try:
        results = [bench_size(int(s), args.runs, work, binary) for s in args.sizes.split(",")]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ncommand: python bench/disk.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"source: {source_state()}; medians of {args.runs} alternating runs")
    print(f"{'size':>7} {'disks':>7} {'plan s':>8} {'report s':>9} {'plan cpu':>9} "
          f"{'report cpu':>10} {'report/plan':>12}")
    ok = True
    for r in results:
        print(f"{r['size']:>7} {r['disks']:>7} {r['plan_wall']:>8.3f} {r['report_wall']:>9.3f} "
              f"{r['plan_cpu']:>9.3f} {r['report_cpu']:>10.3f} {r['ratio']:>12.2f}")
        ok = ok and r["ratio"] <= TARGET
    print(f"target: disk report within {TARGET}x of cache plan: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
