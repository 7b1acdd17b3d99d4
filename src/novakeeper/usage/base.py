"""The shape every usage source shares.

A source reports sightings: evidence that a cache file is in use, by file identity
(device, inode) when it found an open file or a disk path, or by cache name when it only
knows an image id (a server still building has no disk yet). A source that is configured
but fails reports an error instead, and the pass then keeps every file: a source that
cannot answer must never make novakeeper delete more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from novakeeper.cache.inventory import Inventory

FileId = tuple[int, int]
"""(st_dev, st_ino) of a cache file."""


@dataclass(frozen=True, slots=True)
class Sighting:
    source: str
    """"open-files", "libvirt", "nova-api"."""
    who: str
    """Human words: "pid 4242 (qemu-system-x86)", "domain instance-0000002a (uuid)"."""

    def words(self) -> str:
        return f"{self.source}: {self.who}"


@dataclass(frozen=True)
class SourceResult:
    source: str
    by_file: Mapping[FileId, tuple[Sighting, ...]] = field(default_factory=dict)
    by_name: Mapping[str, tuple[Sighting, ...]] = field(default_factory=dict)
    error: str | None = None
    """Set when the source is configured but could not answer: keep everything."""
    seen: int = 0
    """How many things it looked at (processes, domains, servers), for the log line."""
    building: frozenset[str] = frozenset()
    """Instances (uuid) the source knows are being built on these hosts: their spawn
    hold needs no blanket (the Nova API names their image)."""


class UsageSource(Protocol):
    name: str

    def collect(self, inventory: Inventory) -> SourceResult:
        """Never raises for an expected failure (unreachable API, permission denied on a
        process): it returns a SourceResult with `error` set instead."""
        ...
