#!/usr/bin/env python3
"""Benchmark: a service pass over a node whose state did not change, against the first.

    python bench/service.py [--disks 10000] [--bases-ratio 5] [--passes 5]

Builds the node of bench/scan.py (10,000 qcow2 disks over 2,000 in-use bases), then runs
the passes `novakeeper cache serve` runs (service_mode = plan: scan, record usage in the
state database, decide, update the metrics, write the textfile) in this process with the
service's own code, and measures the CPU time (user + system) of each. The first pass
scans everything; later ones reuse the previous pass's scanner and re-read only what
changed (here: nothing), which is what makes an idle node cheap to watch.
Target (issue 5): later passes cost less CPU than the first.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from novakeeper.service.loop import Outputs, Service
from scan import bench_settings, build_tree, machine, source_state


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--disks", type=int, default=10000)
    ap.add_argument("--bases-ratio", type=int, default=5)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)
    binary = shutil.which("qemu-img")
    if binary is None:
        raise SystemExit("bench: needs qemu-img (Debian: apt-get install qemu-utils)")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()), flush=True)
    root = tempfile.mkdtemp(prefix="novakeeper-bench-service-")
    try:
        tree = build_tree(root, args.disks, args.bases_ratio, random.Random(args.seed),
                          binary)
        settings = bench_settings(tree.instances_path)
        prom = os.path.join(root, "novakeeper.prom")
        service = Service(lambda: settings, Outputs(metrics_file=prom))
        cpu, wall = [], []
        for _ in range(args.passes):
            c0, t0 = time.process_time(), time.perf_counter()
            service._pass(settings)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
        assert os.path.getsize(prom) > 0 and service.metrics.success._value.get() == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    later = statistics.median(cpu[1:])
    print(f"\ncommand: python bench/service.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"source: {source_state()}; {tree.cache_files} files in _base, "
          f"{len(tree.disks)} disks")
    print("| pass | CPU | wall |")
    print("|---|---:|---:|")
    for i, (c, w) in enumerate(zip(cpu, wall, strict=True), 1):
        print(f"| {i}{' (first: full scan)' if i == 1 else ' (unchanged)'} "
              f"| {c * 1e3:.0f} ms | {w * 1e3:.0f} ms |")
    ratio = later / cpu[0]
    print(f"\nunchanged pass / first pass: {ratio:.2f}x CPU (median of passes 2-"
          f"{args.passes}); target < 1: {'met' if ratio < 1 else 'NOT MET'}")
    return 0 if ratio < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
