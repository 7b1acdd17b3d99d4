#!/usr/bin/env python3
"""Benchmark: planning with a space budget against the foundation's plain plan.

    python bench/budget.py [--disks 10000] [--bases-ratio 5] [--runs 9]

Builds the same throwaway node as bench/scan.py (10,000 qcow2 disks over 2,000 in-use
original bases, plus unused, young, swap and ephemeral bases), then times, interleaved
run by run so both see the same machine:

* plain: the foundation's pass, plan_pass without the state database and without a budget
  (scan + decide), the baseline;
* budget: what `cache plan` now runs with a budget set: scan, settle the journal, record
  usage for every base in the SQLite state database (one write transaction), read pins,
  statvfs, decide with max_cache_size + high/low watermarks + min_free_space, where
  max_cache_size is set below what the cache holds, so that eviction chooses bases in LRU
  order.

It checks that the budget plan really evicts (and never an in-use base) before timing,
and prints the ratio of the medians. Target (issue 3): budget / plain <= 1.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import cache_bytes
from novakeeper.passes import plan_pass
from novakeeper.settings import Settings
from scan import bench_settings, built_node, node_args, source_state

TARGET = 1.5


def budget_settings(plain: Settings, cache_total: int) -> Settings:
    """Every budget option set; max_cache_size 2 % under what the cache holds after the
    age-based removals would run, so eviction has to choose."""
    budget = BudgetConfig(max_cache_size=int(cache_total * 0.98), high_watermark=99.0,
                          low_watermark=95.0, min_free_space=1 << 20,
                          eviction_min_age_seconds=600)
    policy = dataclasses.replace(plain.policy, budget=budget)
    return dataclasses.replace(plain, policy=policy)


def timed(settings: Settings, use_state: bool) -> tuple[float, float]:
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    with plan_pass(settings, use_state=use_state) as result:
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert result.plan.disks_seen > 0
    return wall, cpu


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    node_args(ap)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args(argv)
    with built_node(args, "novakeeper-bench-budget-") as tree:
        plain = bench_settings(tree.instances_path)
        with plan_pass(plain, use_state=False) as first:
            total = cache_bytes(first.inventory) - first.plan.frees
        budgeted = budget_settings(plain, total)
        with plan_pass(budgeted) as check:
            plan = check.plan
            evicted = [d for d in plan.decisions if d.verdict is Verdict.EVICT]
            assert plan.budget is not None and evicted, "the budget plan must evict"
            assert not any(d.users for d in evicted)
            print(f"  {len(tree.disks)} disks, {tree.cache_files} files in _base; budget "
                  f"plan: {plan.budget.words()}", flush=True)
        plain_runs: list[tuple[float, float]] = []
        budget_runs: list[tuple[float, float]] = []
        for _ in range(args.runs):  # interleaved: drift hits both alike
            plain_runs.append(timed(plain, use_state=False))
            budget_runs.append(timed(budgeted, use_state=True))
    p_wall = statistics.median(w for w, _ in plain_runs)
    b_wall = statistics.median(w for w, _ in budget_runs)
    p_cpu = statistics.median(c for _, c in plain_runs)
    b_cpu = statistics.median(c for _, c in budget_runs)
    ratio = b_wall / p_wall
    print(f"\ncommand: python bench/budget.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"source: {source_state()}")
    print("| pass | median wall | median CPU |")
    print("|---|---:|---:|")
    print(f"| plain plan (foundation: no state, no budget) | {p_wall * 1e3:.0f} ms "
          f"| {p_cpu * 1e3:.0f} ms |")
    print(f"| plan with budget + state database | {b_wall * 1e3:.0f} ms "
          f"| {b_cpu * 1e3:.0f} ms |")
    print(f"\nratio budget / plain: {ratio:.2f}x wall, {b_cpu / p_cpu:.2f}x CPU "
          f"(target <= {TARGET}x): {'met' if ratio <= TARGET else 'NOT MET'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
