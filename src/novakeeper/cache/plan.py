"""The plan: one decision per cache entry, as data.

The same Decision feeds the table, the JSON, the log lines, the executor and the tests,
so what `plan` prints is exactly what `clean` does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from novakeeper.cache.budget import BudgetOutcome
from novakeeper.cache.inventory import Problem
from novakeeper.cache.layout import BaseKind
from novakeeper.cache.trash import TrashEntry
from novakeeper.images.catalog import ImageFacts


class Verdict(StrEnum):
    IN_USE = "in-use"
    REMOVE = "remove"  # unused and old enough: original, resized, swap, ephemeral
    TOO_YOUNG = "too-young"
    STALE_PARTIAL = "stale-partial"  # .part / .converted / .info nobody finished
    DOWNLOADING = "downloading"  # fresh .part / .converted: a fetch may be running
    HELD = "held"  # a disk that could use it could not be read
    UNKNOWN = "unknown"  # not a name nova uses: reported, kept
    KEPT_BY_CONFIG = "kept-by-config"  # remove_unused_base_images = False
    PINNED = "pinned"  # an operator's pin: never removed, by age or by budget
    EVICT = "evict"  # unused, and the least recently used while over budget
    LAST_COPY = "last-copy"  # image gone from Glance, still named by an instance: kept

    @property
    def removes(self) -> bool:
        return self in (Verdict.REMOVE, Verdict.STALE_PARTIAL, Verdict.EVICT)


@dataclass(frozen=True, slots=True)
class Decision:
    name: str
    path: str
    kind: BaseKind
    verdict: Verdict
    reason: str
    """Human words, the reason first: what an operator reads at 3 a.m."""
    age: float
    """Seconds since the file was last modified (nova marks in-use bases by touching them)."""
    min_age: float | None
    """The age threshold that applied, when one did."""
    size: int
    allocated: int
    frees: int
    """Allocated bytes a removal would give back (0 for a hard-linked file)."""
    users: tuple[str, ...] = ()
    """Instances whose disks use it."""
    disks: tuple[str, ...] = ()
    held_by: tuple[str, ...] = ()
    """Paths of the problems that hold it."""
    image_hash: str | None = None
    mtime: float = 0.0
    dev: int = 0
    ino: int = 0
    last_used: float | None = None
    """Last scan that saw a disk on it (state database); None: never seen in use."""
    sources: tuple[str, ...] = ()
    """Which usage sources saw it in use: "disks", "open-files", "libvirt", "nova-api"."""
    seen_by: tuple[str, ...] = ()
    """What the other sources saw, in words ("open-files: pid 4242 (qemu-kvm)")."""
    corrupt: str | None = None
    """`cache verify` found its content does not match its checksum: why."""
    by_name: tuple[str, ...] = ()
    """Backing paths outside the cache that use it by name ("<path> (of <disk>)")."""
    image: ImageFacts | None = None
    """Glance's word on the image it is a base of (images/catalog.py), when known."""
    named_by: tuple[str, ...] = ()
    """Instances that name its image (image_ref, kernel_id, ramdisk_id: the Nova API)
    while Glance no longer has it: the ones a last copy is kept for, or that are at risk."""

    @property
    def removes(self) -> bool:
        return self.verdict.removes

    @property
    def image_gone(self) -> bool:
        """Its image is deleted or deactivated in Glance."""
        return self.image is not None and self.image.gone

    def eviction_key(self) -> tuple[bool, float, str]:
        """Eviction order: bases of deleted or deactivated images first, then least
        recently used first."""
        return (not self.image_gone, self.idle_since(), self.name)

    def idle_since(self) -> float:
        """Last evidence of use: the later of the last scan that saw it in use and its
        mtime (nova touches in-use bases; a download sets it). Eviction order."""
        return max(self.mtime, self.last_used if self.last_used is not None else self.mtime)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "kind": str(self.kind),
            "verdict": str(self.verdict),
            "reason": self.reason,
            "age_seconds": round(self.age, 3),
            "min_age_seconds": self.min_age,
            "size": self.size,
            "allocated": self.allocated,
            "frees": self.frees,
            "users": list(self.users),
            "disks": list(self.disks),
            "held_by": list(self.held_by),
            "image_hash": self.image_hash,
            "mtime": self.mtime,
            "last_used": self.last_used,
            "sources": list(self.sources),
            "seen_by": list(self.seen_by),
            "corrupt": self.corrupt,
            "by_name": list(self.by_name),
            "image": self.image.to_dict() if self.image is not None else None,
            "named_by": list(self.named_by),
        }


@dataclass(frozen=True)
class Plan:
    instances_path: str
    cache_path: str
    now: float
    decisions: tuple[Decision, ...]
    problems: tuple[Problem, ...]
    disks_seen: int
    folders_seen: int
    policy: dict[str, Any] = field(default_factory=dict)
    budget: BudgetOutcome | None = None
    notes: tuple[str, ...] = ()
    """Things the operator should know about this plan (state database read-only, ...)."""
    trash: tuple[TrashEntry, ...] = ()
    trash_grace: float = 0.0

    def trash_due(self) -> tuple[TrashEntry, ...]:
        """Trashed bases whose grace period has ended: `clean` unlinks them."""
        return tuple(t for t in self.trash if t.purge_at(self.trash_grace) <= self.now)

    @property
    def shortfall(self) -> int:
        return self.budget.shortfall if self.budget is not None else 0

    @property
    def removals(self) -> tuple[Decision, ...]:
        """In the order `clean` carries them out: the age-based removals, then evictions
        least recently used first, so a run cut short has evicted the right ones."""
        return tuple(sorted((d for d in self.decisions if d.removes),
                            key=lambda d: (True, *d.eviction_key())
                            if d.verdict is Verdict.EVICT else (False, False, 0.0, d.name)))

    @property
    def frees(self) -> int:
        return sum(d.frees for d in self.decisions if d.removes)

    def by_verdict(self) -> Counter[Verdict]:
        return Counter(d.verdict for d in self.decisions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "instances_path": self.instances_path,
            "cache_path": self.cache_path,
            "now": self.now,
            "policy": self.policy,
            "budget": self.budget.to_dict() if self.budget is not None else None,
            "notes": list(self.notes),
            "trash": [t.to_dict(self.trash_grace) for t in self.trash],
            "summary": {
                "files": len(self.decisions),
                "removals": len(self.removals),
                "frees": self.frees,
                "disks_seen": self.disks_seen,
                "folders_seen": self.folders_seen,
                "problems": len(self.problems),
                "by_verdict": {str(k): v for k, v in sorted(self.by_verdict().items())},
            },
            "decisions": [d.to_dict() for d in self.decisions],
            "problems": [
                {
                    "code": str(p.code),
                    "path": p.path,
                    "detail": p.detail,
                    "instance": p.instance,
                    "holds_kinds": sorted(str(k) for k in p.holds_kinds),
                    "holds_names": sorted(p.holds_names),
                }
                for p in self.problems
            ],
        }
