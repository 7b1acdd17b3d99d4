"""The disk report as data: every instance's disks with nova's over-commit, the node's
totals, nova's `disk_available_least`, the worst case and the scheduler's view.

Pure: it reads a cache pass (inventory and plan) and a Survey; the same DiskReport feeds
the table, the JSON, the HTML page, the metrics and the tests.

Nova's arithmetic, from nova 34.0.0 `nova/virt/libvirt/driver.py`:

* `_get_instance_disk_info_from_config`: a qcow2 file disk counts
  `max(0, virtual size − qemu-img's actual-size)` (actual-size is st_blocks × 512);
  any other file disk (raw, the config drive) `st_size − st_blocks × 512`, not clamped;
  block devices count 0.
* `_get_disk_over_committed_size_total`: the sum over every defined domain; a domain
  whose disk is missing (ENOENT) or unreadable (EACCES) adds nothing at all.
* `get_available_resource`: `free / Gi * Gi − over-commit`, then `/ Gi`: a float the
  ComputeNode object stores as an integer (int(): truncated toward zero).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from novakeeper.cache.inventory import FolderScan, Inventory
from novakeeper.cache.plan import Plan, Verdict
from novakeeper.disk.survey import (
    INSTANCE_KINDS,
    DiskFacts,
    FileSystem,
    Survey,
    counted_disk,
)
from novakeeper.usage.libvirt import Domain

GIB = 1024**3
QCOW2 = "qcow2"
DEVICE = "device"


def nova_over_commit(fmt: str, virtual_size: int, size: int, allocated: int) -> int:
    """One disk's over-commit exactly as nova's `_get_instance_disk_info_from_config`."""
    if fmt == QCOW2:
        return max(0, virtual_size - allocated)
    if fmt == DEVICE:
        return 0
    return size - allocated


def disk_available_least(free: int, over_commit: int) -> float:
    """nova's float, computed in nova's order: `free` is turned into GiB first."""
    free_gb = free / GIB
    return (free_gb * GIB - over_commit) / GIB


@dataclass(frozen=True, slots=True)
class DiskRow:
    name: str
    path: str
    format: str
    virtual_size: int
    size: int
    """Apparent size (st_size)."""
    allocated: int
    """st_blocks × 512."""
    over_commit: int | None
    """nova's figure; None: the disk could not be read (unknown)."""
    base: str | None = None
    """The cache file its chain stands on."""
    base_shared: bool = False
    """Another instance's disk stands on the same base."""
    chain: tuple[str, ...] = ()
    note: str = ""
    declared: str = ""
    """The format its libvirt domain declares, when the libvirt source is on: nova's
    formula follows it, not the file's header."""
    counted: bool = True
    """False for a disk in an instance folder that its domain does not attach."""

    @property
    def growth(self) -> int:
        """How much more the disk can take before it is full: nova's figure, never
        below 0."""
        return max(0, self.over_commit or 0)

    def to_dict(self) -> dict[str, Any]:
        """Compact: the path is the row's folder and the name; `chain` only when it holds
        more than the base; `note` only when there is one."""
        out: dict[str, Any] = {
            "name": self.name, "format": self.format, "virtual_size": self.virtual_size,
            "size": self.size, "allocated": self.allocated, "over_commit": self.over_commit,
            "base": self.base, "base_shared": self.base_shared}
        if len(self.chain) > 1 or (self.chain and self.base is None):
            out["chain"] = list(self.chain)
        if self.note:
            out["note"] = self.note
        if self.declared and self.declared != self.format:
            out["declared_format"] = self.declared
        if not self.counted:
            out["counted_by_nova"] = False
        return out


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """One instance folder's disks; the sums are computed once, by `of`."""

    instance: str
    folder: str
    disks: tuple[DiskRow, ...]
    missing: tuple[str, ...] = ()
    """Disks its libvirt domain names that do not exist (libvirt source on): nova counts
    the instance as 0."""
    unknown: int = 0
    over_commit: int = 0
    """What nova adds for this instance: 0 when a disk is missing or unreadable (nova's
    OSError handler drops the whole domain)."""
    allocated: int = 0
    virtual_size: int = 0
    growth: int = 0
    flavor_gb: float = 0.0
    """DISK_GB its flavor most likely allocates in placement: root, ephemeral and swap
    disks rounded up to whole GiB each (nova's `resources_from_flavor` rounds swap MiB up
    to GiB); a boot-from-volume instance has no root here."""
    domain: str | None = None
    """Its libvirt domain's name, when the libvirt source is on and one is defined."""
    counted: bool = True
    """Whether nova counts it: False for a folder without a domain on this host (libvirt
    source on). Without the libvirt source every instance folder is taken to have one."""

    @classmethod
    def of(cls, instance: str, folder: str, disks: tuple[DiskRow, ...],
           missing: tuple[str, ...] = (), domain: str | None = None,
           counted: bool = True) -> InstanceRow:
        unknown = over = allocated = virtual = grown = flavor = 0
        for d in disks:
            allocated += d.allocated
            virtual += d.virtual_size
            if not d.counted:
                continue
            if d.over_commit is None:
                unknown += 1
                continue
            over += d.over_commit
            grown += d.growth
            name = d.name
            if name in ("disk", "disk.local", "disk.swap") or name.startswith("disk.eph"):
                flavor += -(-d.virtual_size // GIB)
        if not counted:
            over = grown = flavor = 0
        return cls(instance, folder, disks, missing, unknown,
                   0 if missing or unknown else over, allocated, virtual, grown,
                   float(flavor), domain, counted)

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "domain": self.domain,
                "counted_by_nova": self.counted, "over_commit": self.over_commit,
                "allocated": self.allocated,
                "virtual_size": self.virtual_size, "growth": self.growth,
                "unknown_disks": self.unknown, "missing_disks": list(self.missing),
                "disks": [d.to_dict() for d in self.disks]}


@dataclass(frozen=True, slots=True)
class CacheBytes:
    total: int
    reclaimable: int
    """What `cache clean` would free now (the plan's removals)."""
    in_use: int
    """Bases a disk, domain, process or build uses."""
    kept: int
    """Neither: too young, pinned, held by doubt, being downloaded, unknown names."""
    files: int

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "reclaimable": self.reclaimable, "in_use": self.in_use,
                "kept": self.kept, "files": self.files}


@dataclass(frozen=True, slots=True)
class SchedulerView:
    """How nova's scheduler sees this node's disk, and how many more root disks of
    `flavor_gb` fit by its arithmetic and by the real disk."""

    allocation_ratio: float
    reserved_mb: int
    local_gb: int
    """DISK_GB total in placement: int(total / Gi)."""
    reserved_gb: int
    """ceil(reserved_host_disk_mb / 1024), nova's convert_mb_to_ceil_gb."""
    used_gb: float
    """DISK_GB the instances here allocate, estimated from their disks' virtual sizes."""
    capacity_gb: float
    """(local_gb − reserved_gb) × allocation_ratio: placement's capacity."""
    free_disk_gb: int
    """ComputeNode.free_disk_gb: local_gb − local_gb_used (reserved included)."""
    host_free_gb: int
    """min(disk_available_least, free_disk_gb): the scheduler's host state."""
    flavor_gb: int | None = None
    fits_placement: int | None = None
    fits_host_state: int | None = None
    fits_disk_now: int | None = None
    """New disks of flavor_gb the real free space takes if each one fills."""
    fits_disk_worst: int | None = None
    """The same after every existing disk has grown to its virtual size."""

    @property
    def placement_free_gb(self) -> float:
        return self.capacity_gb - self.used_gb

    def to_dict(self) -> dict[str, Any]:
        return {"disk_allocation_ratio": self.allocation_ratio,
                "reserved_host_disk_mb": self.reserved_mb, "local_gb": self.local_gb,
                "reserved_gb": self.reserved_gb, "used_gb": self.used_gb,
                "capacity_gb": self.capacity_gb, "placement_free_gb": self.placement_free_gb,
                "free_disk_gb": self.free_disk_gb, "host_free_gb": self.host_free_gb,
                "flavor_disk_gb": self.flavor_gb,
                "fits": None if self.flavor_gb is None else {
                    "placement": self.fits_placement, "host_state": self.fits_host_state,
                    "disk_now": self.fits_disk_now, "disk_worst_case": self.fits_disk_worst}}


@dataclass(frozen=True, slots=True)
class Finding:
    """One plain-words observation with the numbers behind it and what to do."""

    code: str
    severity: str
    """"critical", "warning" or "info"."""
    message: str
    action: str
    numbers: Mapping[str, float | int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "action": self.action, "numbers": dict(self.numbers)}


@dataclass(frozen=True)
class DiskReport:
    instances_path: str
    cache_path: str
    generated_at: float
    fs: FileSystem
    cache_fs: FileSystem
    cache: CacheBytes
    instances: tuple[InstanceRow, ...]
    other: Mapping[str, int]
    """Category -> bytes (Other.ALL)."""
    scheduler: SchedulerView
    findings: tuple[Finding, ...] = ()
    unknown_bytes: int = 0
    """Allocated bytes of disks that could not be read."""
    domains: int | None = None
    """libvirt domains defined here (None: the libvirt source is off or failed, and
    every instance folder is taken to have one)."""

    @property
    def cache_shares(self) -> bool:
        return self.fs.dev == self.cache_fs.dev

    @cached_property
    def over_commit(self) -> int:
        return sum(row.over_commit for row in self.instances)

    @cached_property
    def unknown_disks(self) -> int:
        return sum(row.unknown for row in self.instances)

    @cached_property
    def instance_bytes(self) -> int:
        return sum(row.allocated for row in self.instances)

    @cached_property
    def other_bytes(self) -> int:
        return sum(self.other.values())

    @property
    def outside_bytes(self) -> int:
        """Used bytes of the file system that are not under instances_path (the OS on
        `/`, other tenants of a shared volume); never negative."""
        counted = self.instance_bytes + self.other_bytes
        if self.cache_shares:
            counted += self.cache.total
        return max(0, self.fs.used - counted)

    @property
    def disk_available_least(self) -> float:
        return disk_available_least(self.fs.free, self.over_commit)

    @property
    def disk_available_least_reported(self) -> int:
        """As the ComputeNode object stores it (IntegerField: int(), toward zero)."""
        return int(self.disk_available_least)

    @cached_property
    def growth(self) -> int:
        return sum(row.growth for row in self.instances)

    @property
    def worst_case_free(self) -> int:
        """Free space once every disk has grown to its virtual size (may be negative)."""
        return self.fs.free - self.growth

    @property
    def worst_case_shortfall(self) -> int:
        return max(0, -self.worst_case_free)

    def sorted_rows(self, key: str = "over-commit", top: int | None = None
                    ) -> list[InstanceRow]:
        keys = {"over-commit": lambda r: r.over_commit, "allocated": lambda r: r.allocated,
                "virtual": lambda r: r.virtual_size}
        rows = sorted(self.instances, key=lambda r: (-keys[key](r), r.instance))
        return rows if top is None else rows[:top]

    def to_dict(self, sort: str = "over-commit", top: int | None = None) -> dict[str, Any]:
        return {
            "instances_path": self.instances_path,
            "cache_path": self.cache_path,
            "generated_at": self.generated_at,
            "file_system": {"path": self.fs.path, "size": self.fs.total,
                            "used": self.fs.used, "free": self.fs.free,
                            "reserved": self.fs.reserved,
                            "cache_shares": self.cache_shares,
                            "cache_file_system": None if self.cache_shares else {
                                "path": self.cache_fs.path, "size": self.cache_fs.total,
                                "used": self.cache_fs.used, "free": self.cache_fs.free}},
            "bytes": {"cache": self.cache.to_dict(), "instance_disks": self.instance_bytes,
                      "other": {"total": self.other_bytes, **dict(self.other)},
                      "unknown_disks": self.unknown_bytes,
                      "outside_instances_path": self.outside_bytes},
            "over_commit": {"total": self.over_commit, "unknown_disks": self.unknown_disks,
                            "instances": len(self.instances),
                            "disks": sum(len(r.disks) for r in self.instances)},
            "nova": {"free_gb": self.fs.free / GIB, "local_gb": self.scheduler.local_gb,
                     "disk_available_least": self.disk_available_least,
                     "disk_available_least_reported": self.disk_available_least_reported},
            "worst_case": {"growth": self.growth, "free": self.worst_case_free,
                           "shortfall": self.worst_case_shortfall},
            "scheduler": self.scheduler.to_dict(),
            "domains": None if self.domains is None else {
                "defined": self.domains,
                "folders_without_domain": sum(
                    1 for r in self.instances if not r.counted),
                "without_folder": sum(1 for r in self.instances if not r.folder)},
            "findings": [f.to_dict() for f in self.findings],
            "instances": [r.to_dict() for r in self.sorted_rows(sort, top)],
        }


# -- assembly ----------------------------------------------------------------------------


def instance_rows(inventory: Inventory, folders: Mapping[str, FolderScan],
                  survey: Survey) -> list[InstanceRow]:
    """One row per instance folder (uuid or instance-%08x) with at least one disk named
    as nova names the disks it attaches; other folders are other files."""
    users_by_base: dict[str, int] = {}
    for name, disks in inventory.users.items():
        users_by_base[name] = len({d.instance for d in disks if d.folder_kind in
                                   INSTANCE_KINDS})
    cache_prefix = inventory.cache_path + "/"
    rows = []
    for path, (_names, bad) in survey.counted.items():
        scan = folders[path]
        cut = len(path) + 1
        disk_rows = []
        for disk in scan.disks:
            name = disk.path[cut:]
            if not counted_disk(name):
                continue
            base = next((p[len(cache_prefix):] for p in disk.chain
                         if p.startswith(cache_prefix) and "/" not in p[len(cache_prefix):]),
                        None)
            disk_rows.append(DiskRow(
                name, disk.path, disk.format, disk.virtual_size, disk.size, disk.allocated,
                nova_over_commit(disk.format, disk.virtual_size, disk.size, disk.allocated),
                base, base is not None and users_by_base.get(base, 0) > 1, disk.chain))
        for name, problem in bad.items():
            disk_rows.append(DiskRow(name, problem.path, "unknown", 0, 0,
                                     survey.unreadable.get(problem.path, 0), None,
                                     note=problem.detail))
        disk_rows.sort(key=lambda d: d.name)
        rows.append(InstanceRow.of(scan.instance, path, tuple(disk_rows)))
    return rows


def _nova_format(declared: str) -> str:
    """nova's branch for a file disk: qcow2 only when the domain says so."""
    return QCOW2 if declared == QCOW2 else "raw"


def apply_domains(rows: Sequence[InstanceRow], domains: Sequence[Domain],
                  outside: Mapping[str, DiskFacts | str | None]) -> list[InstanceRow]:
    """The rows as nova counts them when libvirt's domains are known: an instance's disks
    are its domain's file and block disks (with the format the domain declares), found in
    its folder or, for a disk elsewhere, in `outside` (facts, a reason it could not be
    read, or None: missing); a folder without a domain is not counted; a domain without
    a folder gets a row of its own."""
    by_uuid = {r.instance.lower(): r for r in rows}
    out: list[InstanceRow] = []
    for dom in domains:
        row = by_uuid.pop(dom.uuid.lower(), None)
        mine = {d.path: d for d in row.disks} if row is not None else {}
        missing = list(row.missing) if row is not None else []
        disks: list[DiskRow] = []
        for dd in dom.disks:
            if dd.kind not in ("file", "block") or not dd.path:
                continue  # network disks, volumes by pool, an empty cdrom: nova skips them
            name = os.path.basename(dd.path)
            if dd.kind == "block":
                disks.append(DiskRow(name, dd.path, DEVICE, 0, 0, 0, 0, declared=dd.format))
                continue
            d = mine.pop(dd.path, None)
            if d is None:
                facts = outside.get(dd.path)
                if facts is None:
                    missing.append(name)
                    continue
                if isinstance(facts, str):
                    disks.append(DiskRow(name, dd.path, "unknown", 0, 0, 0, None, note=facts))
                    continue
                d = DiskRow(name, dd.path, facts.format, facts.virtual_size, facts.size,
                            facts.allocated, 0)
            oc = None if d.over_commit is None else nova_over_commit(
                _nova_format(dd.format), d.virtual_size, d.size, d.allocated)
            disks.append(replace(d, over_commit=oc, declared=dd.format))
        for d in mine.values():  # in the folder, not attached: nova does not count it
            disks.append(replace(d, counted=False,
                                 note=d.note or f"not attached to domain {dom.name}"))
        disks.sort(key=lambda d: d.name)
        out.append(InstanceRow.of(
            row.instance if row is not None else dom.uuid,
            row.folder if row is not None else "", tuple(disks), tuple(sorted(missing)),
            dom.name))
    for row in by_uuid.values():
        out.append(InstanceRow.of(row.instance, row.folder, row.disks, row.missing,
                                  None, counted=False))
    return out


def cache_bytes(plan: Plan) -> CacheBytes:
    total = reclaimable = in_use = 0
    for d in plan.decisions:
        total += d.allocated
        if d.removes:
            reclaimable += d.allocated
        elif d.verdict is Verdict.IN_USE:
            in_use += d.allocated
    trash = sum(t.allocated for t in plan.trash)
    return CacheBytes(total + trash, reclaimable, in_use,
                      total + trash - reclaimable - in_use, len(plan.decisions))


def scheduler_view(rows: Sequence[InstanceRow], fs: FileSystem, least_reported: int,
                   growth: int, ratio: float, reserved_mb: int,
                   flavor_gb: int | None) -> SchedulerView:
    local_gb = int(fs.total / GIB)
    reserved_gb = math.ceil(reserved_mb / 1024.0) if reserved_mb else 0
    used_gb = sum(r.flavor_gb for r in rows)
    capacity = (local_gb - reserved_gb) * ratio
    free_disk_gb = int(local_gb - int(reserved_mb / 1024 + used_gb))
    host_free_gb = min(least_reported, free_disk_gb)
    view = SchedulerView(ratio, reserved_mb, local_gb, reserved_gb, used_gb, capacity,
                         free_disk_gb, host_free_gb)
    if flavor_gb is None:
        return view
    fits_placement = 0 if flavor_gb > local_gb else max(
        0, math.floor((capacity - used_gb) / flavor_gb))
    # the DiskFilter's arithmetic on the host state (nova before Stein; the weigher now)
    total_mb = local_gb * 1024
    usable_mb = total_mb * ratio - (total_mb - host_free_gb * 1024)
    fits_host = max(0, math.floor(usable_mb / (flavor_gb * 1024)))
    reserved = reserved_mb * 1024 * 1024
    need = flavor_gb * GIB
    fits_now = max(0, (fs.free - reserved) // need)
    fits_worst = max(0, (fs.free - growth - reserved) // need)
    return SchedulerView(ratio, reserved_mb, local_gb, reserved_gb, used_gb, capacity,
                         free_disk_gb, host_free_gb, flavor_gb, fits_placement, fits_host,
                         fits_now, fits_worst)


def account(inventory: Inventory, folders: Mapping[str, FolderScan], plan: Plan,
            survey: Survey, ratio: float = 1.0, reserved_mb: int = 0,
            flavor_gb: int | None = None, now: float = 0.0) -> DiskReport:
    """The whole report, findings included."""
    from novakeeper.disk.findings import findings

    rows = instance_rows(inventory, folders, survey)
    if survey.domains is not None:
        rows = apply_domains(rows, survey.domains, survey.outside)
    over = sum(r.over_commit for r in rows)
    least = int(disk_available_least(survey.fs.free, over))
    grown = sum(r.growth for r in rows)
    sched = scheduler_view(rows, survey.fs, least, grown, ratio, reserved_mb, flavor_gb)
    report = DiskReport(
        inventory.instances_path, inventory.cache_path, now or inventory.scanned_at,
        survey.fs, survey.cache_fs, cache_bytes(plan), tuple(rows),
        dict(survey.other), sched,
        unknown_bytes=sum(d.allocated for r in rows for d in r.disks if d.over_commit is None),
        domains=None if survey.domains is None else len(survey.domains))
    return replace(report, findings=tuple(findings(report)))
