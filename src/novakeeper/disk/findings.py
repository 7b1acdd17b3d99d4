"""What the disk report means, in plain words with the numbers and what to do. Each rule
is one function named after what it looks for; each returns a Finding or None."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from novakeeper.disk.survey import Other
from novakeeper.units import human_bytes

if TYPE_CHECKING:
    from novakeeper.disk.accounting import DiskReport, Finding

GIB = 1024**3
CACHE_SHARE_NOTABLE = 0.10
"""The cache's share of the disk worth a word, when some of it can be reclaimed."""
LEFTOVERS_NOTABLE = GIB
"""`_del` / `_resize` bytes worth a word."""
LOW_FREE = 0.10


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB"


def _finding(code: str, severity: str, message: str, action: str,
             **numbers: float | int) -> Finding:
    from novakeeper.disk.accounting import Finding

    return Finding(code, severity, message, action, numbers)


def worst_case_past_the_disk(r: DiskReport) -> Finding | None:
    if r.worst_case_shortfall <= 0:
        return None
    return _finding(
        "worst-case-shortfall", "critical",
        f"if every disk grows to its virtual size this node needs "
        f"{_gib(r.worst_case_shortfall)} more than it has ({_gib(r.growth)} of growth, "
        f"{_gib(r.fs.free)} free)",
        "live-migrate instances away, add disk under instances_path, or lower "
        "[DEFAULT] disk_allocation_ratio so the scheduler stops placing more here",
        shortfall=r.worst_case_shortfall, growth=r.growth, free=r.fs.free)


def negative_available_least(r: DiskReport) -> Finding | None:
    least = r.disk_available_least
    if least >= 0:
        return None
    return _finding(
        "disk-available-least-negative", "critical",
        f"disk_available_least is negative ({least:.2f} GiB; nova stores "
        f"{r.disk_available_least_reported}, truncated toward zero): placements forced "
        "past the scheduler (--availability-zone az:host) or a disk_allocation_ratio above "
        "1 promised more than the disk holds",
        "stop forcing placements onto this host; move instances away or add disk; "
        "`novakeeper cache clean` frees what the cache no longer needs",
        disk_available_least=least, reported=r.disk_available_least_reported)


def cache_reclaimable(r: DiskReport) -> Finding | None:
    if r.cache.reclaimable <= 0:
        return None
    share = r.cache.total / r.fs.total if r.fs.total else 0.0
    severity = "warning" if share >= CACHE_SHARE_NOTABLE else "info"
    where = "" if r.cache_shares else " of its own file system"
    return _finding(
        "cache-reclaimable", severity,
        f"the cache holds {share:.0%} of the disk{where} ({human_bytes(r.cache.total)}); "
        f"{human_bytes(r.cache.reclaimable)} reclaimable now",
        "`novakeeper cache clean` (see `novakeeper cache plan` first)",
        share=round(share, 4), cache=r.cache.total, reclaimable=r.cache.reclaimable)


def deleted_folders(r: DiskReport) -> Finding | None:
    size = r.other.get(Other.DELETED, 0)
    if size < LEFTOVERS_NOTABLE:
        return None
    return _finding(
        "deleted-folders", "warning",
        f"`_del` folders hold {human_bytes(size)}: instances deleted while their files "
        "could not be removed",
        "nova-compute retries in its `_cleanup_running_deleted_instances` / "
        "`_run_pending_deletes` periodic tasks; check the compute log for why the delete "
        "failed, then remove the `<uuid>_del` folders of instances that no longer exist",
        bytes=size)


def resize_leftovers(r: DiskReport) -> Finding | None:
    size = r.other.get(Other.RESIZE, 0)
    if size < LEFTOVERS_NOTABLE:
        return None
    return _finding(
        "resize-folders", "warning",
        f"`_resize` folders hold {human_bytes(size)}: source disks of resizes or "
        "migrations not confirmed yet",
        "`openstack server resize confirm <server>` (or revert) for each; "
        "[DEFAULT] resize_confirm_window confirms them automatically",
        bytes=size)


def unknown_disks(r: DiskReport) -> Finding | None:
    count = r.unknown_disks
    if not count:
        return None
    return _finding(
        "unknown-disks", "warning",
        f"{count} disk(s) could not be read ({human_bytes(r.unknown_bytes)} allocated): "
        "their over-commit is unknown and not in the totals; nova counts their instance "
        "as 0 (or its periodic task fails on a corrupt header)",
        "`qemu-img check` / `ls -l` the disks listed with over-commit `?`; fix permissions "
        "(nova's user must read them) or restore the disk",
        disks=count, allocated=r.unknown_bytes)


def missing_disks(r: DiskReport) -> Finding | None:
    rows = [row for row in r.instances if row.missing]
    if not rows:
        return None
    names = ", ".join(f"{row.instance} ({', '.join(row.missing)})" for row in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return _finding(
        "missing-disks", "warning",
        f"{len(rows)} instance(s) lack a disk their libvirt domain names: {names}{more}; "
        "nova counts such an instance's over-commit as 0 (and the guest cannot start)",
        "check these instances (`openstack server show`, `virsh domblklist`); restore "
        "the disk or rebuild the instance",
        instances=len(rows))


def low_free_space(r: DiskReport) -> Finding | None:
    if not r.fs.total or r.fs.free / r.fs.total >= LOW_FREE:
        return None
    return _finding(
        "low-free-space", "warning",
        f"only {human_bytes(r.fs.free)} free under {r.instances_path} "
        f"({r.fs.free / r.fs.total:.0%} of {human_bytes(r.fs.total)})",
        "`novakeeper cache clean`; remove leftovers; move instances away",
        free=r.fs.free, size=r.fs.total)


def scheduler_disagrees(r: DiskReport) -> Finding | None:
    s = r.scheduler
    if s.flavor_gb is None or s.fits_placement is None or s.fits_disk_worst is None:
        return None
    if s.fits_placement <= s.fits_disk_worst:
        return None
    return _finding(
        "scheduler-overpromises", "warning",
        f"the scheduler would place {s.fits_placement} more instance(s) of "
        f"{s.flavor_gb} GiB here, but only {s.fits_disk_worst} fit if every disk fills",
        "lower [DEFAULT] disk_allocation_ratio or raise reserved_host_disk_mb on this "
        "host, then restart nova-compute",
        placement=s.fits_placement, disk_worst_case=s.fits_disk_worst)


def folders_without_domain(r: DiskReport) -> Finding | None:
    rows = [row for row in r.instances if not row.counted]
    if r.domains is None or not rows:
        return None
    size = sum(row.allocated for row in rows)
    names = ", ".join(row.instance for row in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return _finding(
        "folders-without-domain", "warning",
        f"{len(rows)} instance folder(s) have no libvirt domain here ({names}{more}; "
        f"{human_bytes(size)}): nova does not count their over-commit",
        "on shared storage they may be other hosts' instances; otherwise check with "
        "`openstack server show` and remove the leftovers of instances that are gone",
        folders=len(rows), allocated=size)


RULES: tuple[Callable[[DiskReport], Finding | None], ...] = (
    worst_case_past_the_disk, negative_available_least, low_free_space, unknown_disks,
    missing_disks, folders_without_domain, cache_reclaimable, deleted_folders,
    resize_leftovers, scheduler_disagrees,
)


def findings(report: DiskReport) -> Iterator[Finding]:
    for rule in RULES:
        found = rule(report)
        if found is not None:
            yield found
