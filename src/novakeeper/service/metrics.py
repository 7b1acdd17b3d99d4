"""Prometheus metrics of the cache service, with prometheus-client.

One registry per service. After each pass the gauges are set from the pass's plan and
report (the same objects that feed the table and the JSON) and the counters advance.
Two ways out: a node_exporter textfile written atomically (write_to_textfile renames a
temporary file into place), and/or an HTTP /metrics endpoint, on 127.0.0.1 by default.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from novakeeper.cache.executor import Action, Report
from novakeeper.cache.inventory import Inventory, ProblemCode
from novakeeper.cache.plan import Plan, Verdict
from novakeeper.disk.accounting import DiskReport

UNREADABLE_CODES = frozenset({ProblemCode.DISK_UNREADABLE, ProblemCode.DISK_CORRUPT,
                              ProblemCode.FOLDER_UNREADABLE, ProblemCode.DOMAIN_DISK})


@dataclass
class PassInfo:
    """What a pass was, for the pass gauges."""

    started: float
    duration: float
    ok: bool
    error: str | None = None


class _Ours(Collector):
    """Our registry's metrics, inside the HTTP registry next to the process ones."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class _FetchTotals(Collector):
    """`cache fetch` runs are separate processes: their totals live in the state database
    (`fetches`), and each pass exports them as counters."""

    def __init__(self) -> None:
        self.count = self.bytes = self.failures = 0

    def collect(self) -> Iterable[Metric]:
        for name, doc, value in (
                ("novakeeper_cache_fetches", "Images `cache fetch` downloaded.", self.count),
                ("novakeeper_cache_fetched_bytes", "Bytes `cache fetch` downloaded.",
                 self.bytes),
                ("novakeeper_cache_fetch_failures", "`cache fetch` attempts that failed "
                 "(nothing cached).", self.failures)):
            yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise
        # The textfile holds only ours: node_exporter exports its own process_* series
        # and drops a textfile that repeats them. /metrics adds this process's.
        r = self.registry = CollectorRegistry()
        self.http_registry = CollectorRegistry()
        ProcessCollector(registry=self.http_registry)
        PlatformCollector(registry=self.http_registry)
        self.http_registry.register(_Ours(r))
        ns = "novakeeper"
        self.files = Gauge("cache_files", "Cache files by kind and verdict.",
                           ["kind", "verdict"], namespace=ns, registry=r)
        self.bytes = Gauge("cache_bytes", "Cache bytes by kind, verdict and measure "
                           "(allocated or apparent).", ["kind", "verdict", "measure"],
                           namespace=ns, registry=r)
        self.reclaimable = Gauge("cache_reclaimable_bytes", "Bytes a clean would free now.",
                                 namespace=ns, registry=r)
        self.freed = Counter("cache_freed_bytes", "Bytes freed by removals.",
                             namespace=ns, registry=r)
        self.removals = Counter("cache_removals", "Files removed, by the verdict that "
                                "removed them.", ["reason"], namespace=ns, registry=r)
        self.last_pass = Gauge("cache_pass_last_timestamp_seconds",
                               "When the last pass started.", namespace=ns, registry=r)
        self.duration = Gauge("cache_pass_duration_seconds", "How long the last pass took.",
                              namespace=ns, registry=r)
        self.success = Gauge("cache_pass_success", "1 if the last pass succeeded.",
                             namespace=ns, registry=r)
        self.passes = Counter("cache_passes", "Passes, by outcome.", ["outcome"],
                              namespace=ns, registry=r)
        self.headroom = Gauge("cache_budget_headroom_bytes", "Bytes before eviction starts "
                              "(negative: over budget).", namespace=ns, registry=r)
        self.need = Gauge("cache_budget_need_bytes", "Bytes over budget.", namespace=ns,
                          registry=r)
        self.shortfall = Gauge("cache_budget_shortfall_bytes", "Bytes still over budget "
                               "after every eligible removal.", namespace=ns, registry=r)
        self.disks = Gauge("cache_disks", "Instance disks seen.", namespace=ns, registry=r)
        self.unreadable = Gauge("cache_disks_unreadable", "Disks that could not be read.",
                                namespace=ns, registry=r)
        self.problems = Gauge("cache_problems", "Problems met while scanning, by code.",
                              ["code"], namespace=ns, registry=r)
        self.corrupt = Gauge("cache_in_use_corrupt_bases", "In-use bases whose checksum "
                             "does not match.", namespace=ns, registry=r)
        self.quarantined = Counter("cache_quarantined", "Bases moved to quarantine.",
                                   namespace=ns, registry=r)
        self.interval = Gauge("service_interval_seconds", "Seconds between passes "
                              "(0 when disabled).", namespace=ns, registry=r)
        self.deleting = Gauge("service_deleting", "1 when the service removes files "
                              "(service_mode = clean).", namespace=ns, registry=r)
        self.over_commit = Gauge(
            "disk_over_commit_bytes", "Total disk over-commit as nova computes it "
            "(`disk report`).", namespace=ns, registry=r)
        self.available_least = Gauge(
            "disk_available_least_gib", "nova's disk_available_least in GiB, before the "
            "ComputeNode record truncates it toward zero.", namespace=ns, registry=r)
        self.worst_free = Gauge(
            "disk_worst_case_free_bytes", "Free bytes under instances_path once every "
            "disk has grown to its virtual size (negative: past the disk).",
            namespace=ns, registry=r)
        self.worst_shortfall = Gauge(
            "disk_worst_case_shortfall_bytes", "Bytes the node lacks if every disk grows "
            "to its virtual size.", namespace=ns, registry=r)
        self.disk_bytes = Gauge(
            "disk_bytes", "Bytes under instances_path by what holds them.", ["holder"],
            namespace=ns, registry=r)
        self.unknown_disks = Gauge(
            "disk_unknown_disks", "Instance disks whose over-commit is unknown (unreadable "
            "or corrupt).", namespace=ns, registry=r)
        # Glance (images/catalog.py, cache/fetch.py)
        self.deleted_bases = Gauge("cache_deleted_image_bases", "Bases of images deleted or "
                                   "deactivated in Glance, by image status.", ["status"],
                                   namespace=ns, registry=r)
        self.deleted_bytes = Gauge("cache_deleted_image_bytes", "Allocated bytes of bases of "
                                   "images deleted or deactivated in Glance, by image status.",
                                   ["status"], namespace=ns, registry=r)
        self.fetch_totals = _FetchTotals()
        r.register(self.fetch_totals)
        for outcome in ("ok", "failed"):
            self.passes.labels(outcome)
        for reason in ("remove", "evict", "stale-partial", "trash-expired"):
            self.removals.labels(reason)

    def observe_plan(self, inventory: Inventory, plan: Plan) -> None:
        """Gauges that describe the node as this pass found it."""
        files: dict[tuple[str, str], int] = defaultdict(int)
        sizes: dict[tuple[str, str, str], int] = defaultdict(int)
        for d in plan.decisions:
            files[(str(d.kind), str(d.verdict))] += 1
            sizes[(str(d.kind), str(d.verdict), "allocated")] += d.allocated
            sizes[(str(d.kind), str(d.verdict), "apparent")] += d.size
        self.files.clear()
        self.bytes.clear()
        for key, n in files.items():
            self.files.labels(*key).set(n)
        for skey, n in sizes.items():
            self.bytes.labels(*skey).set(n)
        self.reclaimable.set(plan.frees)
        for status in ("deleted", "deactivated"):
            gone = [d for d in plan.decisions if d.image is not None
                    and d.image.status == status]
            self.deleted_bases.labels(status).set(len(gone))
            self.deleted_bytes.labels(status).set(sum(d.allocated for d in gone))
        self.corrupt.set(sum(1 for d in plan.decisions
                             if d.corrupt and d.verdict is Verdict.IN_USE))
        self.disks.set(len(inventory.disks))
        self.unreadable.set(sum(1 for p in plan.problems if p.code in UNREADABLE_CODES))
        self.problems.clear()
        counts: dict[str, int] = defaultdict(int)
        for p in plan.problems:
            counts[str(p.code)] += 1
        for code, n in counts.items():
            self.problems.labels(code).set(n)
        if plan.budget is not None and plan.budget.state.limits:
            self.headroom.set(plan.budget.state.headroom or 0)
            self.need.set(plan.budget.need)
            self.shortfall.set(plan.budget.shortfall)
        else:  # no budget: the series go away rather than claim zero headroom
            for g in (self.headroom, self.need, self.shortfall):
                g.set(0)
            self.headroom.set(float("nan"))

    def observe_disk(self, disk: DiskReport) -> None:
        """The disk report's figures (nova's over-commit, the worst case)."""
        self.over_commit.set(disk.over_commit)
        self.available_least.set(disk.disk_available_least)
        self.worst_free.set(disk.worst_case_free)
        self.worst_shortfall.set(disk.worst_case_shortfall)
        self.unknown_disks.set(disk.unknown_disks)
        holders = {"cache": disk.cache.total, "instance-disks": disk.instance_bytes,
                   "other": disk.other_bytes, "free": disk.fs.free,
                   "outside-instances-path": disk.outside_bytes}
        for holder, n in holders.items():
            self.disk_bytes.labels(holder).set(n)

    def observe_report(self, report: Report, reasons: dict[str, str]) -> None:
        """Counters: what the executor really removed (name -> verdict that removed it)."""
        for o in report.outcomes:
            if o.action in (Action.REMOVED, Action.PURGED):
                self.freed.inc(o.freed)
                reason = "trash-expired" if o.action is Action.PURGED else reasons.get(
                    o.name, "remove")
                self.removals.labels(reason).inc()
            elif o.action is Action.TRASHED:
                self.removals.labels(reasons.get(o.name, "remove")).inc()

    def observe_fetches(self, count: int, nbytes: int, failures: int) -> None:
        self.fetch_totals.count, self.fetch_totals.bytes = count, nbytes
        self.fetch_totals.failures = failures

    def observe_pass(self, info: PassInfo) -> None:
        self.last_pass.set(info.started)
        self.duration.set(info.duration)
        self.success.set(1 if info.ok else 0)
        self.passes.labels("ok" if info.ok else "failed").inc()

    def write_textfile(self, path: str) -> None:
        """Atomically (a temporary file renamed into place), as node_exporter expects."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        write_to_textfile(path, self.registry)

    def serve(self, port: int, address: str) -> Any:
        server, _thread = start_http_server(port, addr=address, registry=self.http_registry)
        return server
