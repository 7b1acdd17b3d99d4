"""The space budget: how many bytes must go for the cache to be within its limits.

Pure arithmetic over numbers measured elsewhere (the cache's allocated bytes, one statvfs
of the file system that holds it), so the policy stays a pure function and a test can
replay any fill level. Each limit is evaluated on its own and the strictest one wins,
as kubelet's image GC and Glance's pruner do with their single limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from novakeeper.units import human_bytes


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """`[novakeeper]` budget options; None means not set."""

    max_cache_size: int | None = None
    """Allocated bytes the cache may hold."""
    high_watermark: float | None = None
    """Percent of the file system in use above which eviction starts."""
    low_watermark: float | None = None
    """Percent of the file system in use that eviction brings usage down to."""
    min_free_space: int | None = None
    """Bytes that must stay available on the file system."""
    min_free_percent: float | None = None
    """The same, as a percent of the file system (min_free_space = 10%)."""
    eviction_min_age_seconds: int = 3600
    """An unused base younger than this is never evicted for space."""

    @property
    def enabled(self) -> bool:
        return self.max_cache_size is not None or self.uses_file_system

    @property
    def uses_file_system(self) -> bool:
        return any(v is not None for v in (self.high_watermark, self.low_watermark,
                                           self.min_free_space, self.min_free_percent))


@dataclass(frozen=True, slots=True)
class FsUsage:
    """The file system that holds the cache, in df's terms: `size` is what users can
    fill (used + available), so 100 % means full for nova, whatever root reserves. On a
    ZFS dataset with a quota or an XFS project quota, statvfs reports the quota."""

    size: int
    used: int
    avail: int
    inodes: int = 0
    inodes_free: int = 0
    """Inodes a user may still take (f_favail)."""

    @classmethod
    def of(cls, path: str) -> FsUsage:
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return cls(size=used + avail, used=used, avail=avail, inodes=st.f_files,
                   inodes_free=st.f_favail)

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used / self.size if self.size else 0.0

    @property
    def free_percent(self) -> float:
        return 100.0 * self.avail / self.size if self.size else 100.0

    @property
    def inodes_free_percent(self) -> float:
        return 100.0 * self.inodes_free / self.inodes if self.inodes else 100.0


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit's view of the cache: its threshold, the current value, what it needs."""

    name: str
    threshold: int
    """Bytes: cache bytes allowed, file-system bytes used at the high watermark, or bytes
    that must stay free."""
    value: int
    need: int
    """Bytes to free for this limit to be met (0 when within it)."""
    headroom: int
    """Bytes that can still arrive before this limit starts eviction (negative: over)."""
    words: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "value": self.value,
                "need": self.need, "headroom": self.headroom, "words": self.words}


@dataclass(frozen=True, slots=True)
class BudgetState:
    """Where the cache stands against every limit that is set."""

    config: BudgetConfig
    cache_bytes: int
    fs: FsUsage | None
    limits: tuple[Limit, ...]
    unmeasured: str | None = None
    """Why file-system limits could not be evaluated (they then evict nothing)."""

    @property
    def need(self) -> int:
        return max((lim.need for lim in self.limits), default=0)

    @property
    def headroom(self) -> int | None:
        return min((lim.headroom for lim in self.limits), default=None)

    @property
    def binding(self) -> Limit | None:
        """The strictest limit: the one needing the most, or the one closest to firing."""
        if not self.limits:
            return None
        return max(self.limits, key=lambda lim: (lim.need, -lim.headroom))

    def to_dict(self) -> dict[str, Any]:
        fs = None
        if self.fs is not None:
            fs = {"size": self.fs.size, "used": self.fs.used, "avail": self.fs.avail,
                  "used_percent": round(self.fs.used_percent, 2)}
        binding = self.binding
        return {
            "cache_bytes": self.cache_bytes,
            "file_system": fs,
            "limits": [lim.to_dict() for lim in self.limits],
            "need": self.need,
            "headroom": self.headroom,
            "binding": binding.name if binding else None,
            "unmeasured": self.unmeasured,
        }


WATERMARK_GAP = 5.0
"""Percent between the watermarks when only the high one is set (kubelet's 85/80)."""


def watermarks(config: BudgetConfig) -> tuple[float | None, float | None]:
    """(high, low) in force. High alone frees down to 5 points below it, so one new image
    does not start eviction again at the next pass; low alone is both start and stop."""
    high, low = config.high_watermark, config.low_watermark
    if high is None:
        return low, low
    if low is None:
        return high, max(high - WATERMARK_GAP, high / 2)
    return high, low


def measure(config: BudgetConfig, cache_bytes: int, fs: FsUsage | None,
            unmeasured: str | None = None) -> BudgetState:
    """Evaluate every limit that is set. Without a file-system reading the watermarks and
    min_free_space evict nothing: in doubt, keep."""
    limits: list[Limit] = []
    if config.max_cache_size is not None:
        cap = config.max_cache_size
        limits.append(Limit(
            "max_cache_size", cap, cache_bytes, max(0, cache_bytes - cap), cap - cache_bytes,
            f"cache holds {human_bytes(cache_bytes)} of max_cache_size {human_bytes(cap)}"))
    if fs is not None and fs.size > 0:
        high, low = watermarks(config)
        if high is not None and low is not None:
            high_bytes = int(fs.size * high / 100)
            low_bytes = int(fs.size * low / 100)
            # hysteresis: start above high, then free down to low
            need = max(0, fs.used - low_bytes) if fs.used > high_bytes else 0
            limits.append(Limit(
                "high_watermark", high_bytes, fs.used, need, high_bytes - fs.used,
                f"file system {fs.used_percent:.1f}% used (high {high:g}%, low {low:g}%)"))
        floor = config.min_free_space
        if config.min_free_percent is not None:
            pct = int(fs.size * config.min_free_percent / 100)
            floor = pct if floor is None else max(floor, pct)
        if floor is not None:
            limits.append(Limit(
                "min_free_space", floor, fs.avail, max(0, floor - fs.avail), fs.avail - floor,
                f"{human_bytes(fs.avail)} free (min_free_space {human_bytes(floor)})"))
    return BudgetState(config, cache_bytes, fs, tuple(limits), unmeasured)


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    """What the plan does about the budget, with the numbers behind it."""

    state: BudgetState
    by_age: int
    """Bytes the age-based removals free (they count first)."""
    by_eviction: int
    evicted: int
    """Files chosen for eviction."""
    shortfall: int
    """Bytes still over after every eligible file; > 0 means the budget cannot be met."""
    kept: dict[str, int]
    """Bytes of unused-or-not files that eviction could not touch, by why (in-use,
    pinned, held, too-young-to-evict, ...): where the shortfall sits."""
    in_trash: int = 0
    """Bytes in the trash, freed when their grace period ends: counted as on their way."""

    @property
    def need(self) -> int:
        return self.state.need

    def words(self) -> str:
        if not self.state.config.enabled:
            return "no budget set"
        binding = self.state.binding
        if self.need == 0:
            head = "within budget"
            if binding is not None:
                head += f": {binding.words}; headroom {human_bytes(binding.headroom)}"
            if self.state.unmeasured:
                head += f" ({self.state.unmeasured})"
            return head
        assert binding is not None
        text = f"over budget by {human_bytes(self.need)} ({binding.words})"
        if self.in_trash:
            text += f"; the trash frees {human_bytes(self.in_trash)} when its grace ends"
        if self.by_age:
            text += f"; age-based removals free {human_bytes(self.by_age)}"
        if self.evicted:
            text += (f"; evicting {self.evicted} least recently used "
                     f"{'base' if self.evicted == 1 else 'bases'} frees "
                     f"{human_bytes(self.by_eviction)}")
        if self.shortfall:
            text += f"; CANNOT MEET BUDGET: {self.shortfall_words()}"
        return text

    def shortfall_words(self) -> str:
        """'3.1 GiB short (what remains is in-use 40.0 GiB, pinned 5.0 GiB)'."""
        where = ", ".join(f"{k} {human_bytes(v)}" for k, v in
                          sorted(self.kept.items(), key=lambda kv: -kv[1]) if v)
        return (f"{human_bytes(self.shortfall)} short"
                + (f" (what remains is {where})" if where else ""))

    def to_dict(self) -> dict[str, Any]:
        return {**self.state.to_dict(), "by_age": self.by_age, "by_eviction": self.by_eviction,
                "evicted": self.evicted, "shortfall": self.shortfall, "kept": self.kept,
                "in_trash": self.in_trash,
                "words": self.words()}
