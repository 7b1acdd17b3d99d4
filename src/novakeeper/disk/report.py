"""One disk report, end to end: the cache pass (scan, usage sources, plan), the survey of
what the scan did not stat, and the accounting. The CLI, the service's metrics and the
benchmark all come through here."""

from __future__ import annotations

from novakeeper.disk.accounting import DiskReport, account
from novakeeper.disk.survey import survey
from novakeeper.gcpause import cyclic_gc_paused
from novakeeper.passes import Pass, plan_pass
from novakeeper.settings import Settings


def from_pass(result: Pass, settings: Settings, flavor_gb: int | None = None,
              ratio: float | None = None, reserved_mb: int | None = None) -> DiskReport:
    """The report of a pass already made (the service reuses its own). Like the scan, it
    builds a few acyclic objects per disk that live as long as the report: the cycle
    collector waits."""
    with cyclic_gc_paused():
        facts = survey(result.inventory, result.scanner.folders, result.domains)
        return account(
            result.inventory, result.scanner.folders, result.plan, facts,
            ratio=settings.disk_allocation_ratio if ratio is None else ratio,
            reserved_mb=(settings.reserved_host_disk_mb if reserved_mb is None
                         else reserved_mb),
            flavor_gb=flavor_gb, now=result.plan.now)


def disk_report(settings: Settings, flavor_gb: int | None = None, ratio: float | None = None,
                reserved_mb: int | None = None) -> DiskReport:
    with plan_pass(settings) as result:
        return from_pass(result, settings, flavor_gb, ratio, reserved_mb)
