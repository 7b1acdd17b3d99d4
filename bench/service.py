#!/usr/bin/env python3
"""Benchmark: a service pass over a node whose state did not change, against the first.

    python bench/service.py [--disks 10000] [--bases-ratio 5] [--passes 5]

Builds the node of bench/scan.py (10,000 qcow2 disks over 2,000 in-use bases), then runs
the passes `novakeeper cache serve` runs (service_mode = plan: scan, record usage in the
state database, decide, update the metrics, write the textfile; verify_files_per_pass = 0,
since the few checksums a pass reads are rate-limited work measured by bench/verify.py)
in this process with the service's own code, and measures the CPU time (user + system) of
each. The first pass scans everything; later ones reuse the previous pass's scanner and
re-read only what changed (here: nothing), which is what makes an idle node cheap to watch.
Target (issue 5): later passes cost less CPU than the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from novakeeper.service.loop import Outputs, Service
from scan import bench_settings, built_node, node_args, source_state

RECENT_SECONDS = 2.0
"""Scanner._scan_folders's window of always-rescanned recent changes."""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    node_args(ap)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args(argv)
    with built_node(args, "novakeeper-bench-service-") as tree:
        # the pass itself: verification is rate-limited reading of its own (bench/verify.py)
        settings = dataclasses.replace(bench_settings(tree.instances_path),
                                       verify_files_per_pass=0)
        prom = os.path.join(os.path.dirname(tree.instances_path), "novakeeper.prom")
        service = Service(lambda: settings, Outputs(metrics_file=prom))
        cpu, wall = [], []
        for n in range(args.passes):
            if n == 0:
                # As on a real node, whose instances did not all change in the last
                # seconds: a file changed within 2 s before a scan is read again by the
                # next one (coarse NFS timestamps hide such a change). Not timed.
                time.sleep(RECENT_SECONDS + 0.5)
            c0, t0 = time.process_time(), time.perf_counter()
            service._pass(settings)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
        assert os.path.getsize(prom) > 0 and service.metrics.success._value.get() == 1
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
