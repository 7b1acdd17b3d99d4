"""The disk report's findings as rules over the report's data: each fires on the numbers
it names, with them in its words, and stays quiet below its threshold."""

from __future__ import annotations

from typing import Any

import pytest

from novakeeper.disk.accounting import (
    CacheBytes,
    DiskReport,
    DiskRow,
    InstanceRow,
    scheduler_view,
)
from novakeeper.disk.findings import findings
from novakeeper.disk.survey import FileSystem, Other

GIB = 1024**3


def report(free: int = 400 * GIB, other: dict[str, int] | None = None,
           rows: tuple[InstanceRow, ...] = (), cache: CacheBytes | None = None,
           domains: int | None = None, **sched: Any) -> DiskReport:
    fs = FileSystem("/srv/instances", 1, 1000 * GIB, free, 1000 * GIB - free)
    view = scheduler_view(rows, fs, 0, 0, sched.get("ratio", 1.0), 0, sched.get("flavor"))
    return DiskReport("/srv/instances", "/srv/instances/_base", 0.0, fs, fs,
                      cache or CacheBytes(0, 0, 0, 0, 0), rows,
                      {**dict.fromkeys(Other.ALL, 0), **(other or {})}, view,
                      domains=domains)


def codes(r: DiskReport) -> dict[str, Any]:
    return {f.code: f for f in findings(r)}


def qcow2(name: str, virtual: int, allocated: int) -> DiskRow:
    return DiskRow(name, f"/x/{name}", "qcow2", virtual, allocated, allocated,
                   max(0, virtual - allocated))


def test_leftover_folders_are_named_with_their_bytes() -> None:
    found = codes(report(other={Other.DELETED: 12 * GIB, Other.RESIZE: 3 * GIB}))
    assert "`_del` folders hold 12.0 GiB" in found["deleted-folders"].message
    assert found["deleted-folders"].numbers["bytes"] == 12 * GIB
    assert "resize confirm" in found["resize-folders"].action
    assert not codes(report(other={Other.DELETED: GIB // 2})).keys() & {"deleted-folders"}


def test_the_worst_case_and_a_negative_available_least() -> None:
    rows = (InstanceRow.of("a", "/x/a", (qcow2("disk", 500 * GIB, GIB),)),)
    found = codes(report(free=288 * GIB, rows=rows))
    worst = found["worst-case-shortfall"]
    assert "needs 211.0 GiB more than it has" in worst.message
    least = found["disk-available-least-negative"]
    assert "-211.00 GiB; nova stores -211" in least.message
    assert not codes(report(free=600 * GIB, rows=rows)).keys() & {
        "worst-case-shortfall", "disk-available-least-negative"}


def test_the_cache_share_and_what_is_reclaimable() -> None:
    cache = CacheBytes(380 * GIB, 41 * GIB, 300 * GIB, 39 * GIB, 120)
    found = codes(report(cache=cache))["cache-reclaimable"]
    assert "the cache holds 38% of the disk" in found.message
    assert "41.0 GiB reclaimable now" in found.message and found.severity == "warning"
    assert "cache-reclaimable" not in codes(report(cache=CacheBytes(GIB, 0, GIB, 0, 1)))


@pytest.mark.parametrize("domains", [None, 3])
def test_folders_without_a_domain_only_when_domains_are_known(domains: int | None) -> None:
    orphan = InstanceRow.of("b", "/x/b", (qcow2("disk", GIB, GIB // 2),), counted=False)
    found = codes(report(rows=(orphan,), domains=domains))
    assert ("folders-without-domain" in found) is (domains is not None)
