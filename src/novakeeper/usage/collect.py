"""Ask every configured usage source, and fold the answers into what the policy reads:
sightings by cache name, the errors of sources that could not answer (the pass then keeps
everything), and doubts (a domain disk that cannot be read) as problems that hold."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from novakeeper.cache.inventory import Inventory, Problem, ProblemCode
from novakeeper.cache.layout import BaseKind
from novakeeper.usage.base import Sighting, UsageSource
from novakeeper.usage.libvirt import Domain, DomainsResult
from novakeeper.usage.openfiles import OpenFilesResult

LOG = logging.getLogger("novakeeper.cache")

SOURCE_NAMES = ("open-files", "libvirt", "nova-api")
# What a domain disk nobody can read could be using: any base kind.
_ANY_BASE = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED, BaseKind.SWAP,
                       BaseKind.EPHEMERAL})
_IMAGE_KINDS = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED})


@dataclass
class Usage:
    sightings: dict[str, list[Sighting]] = field(default_factory=dict)
    """Cache name -> who else uses it."""
    errors: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    building: frozenset[str] = frozenset()
    """Instances a source says are being built here (see SourceResult.building)."""
    domains: tuple[Domain, ...] | None = None
    """libvirt's domains and their disks; None when that source is off or failed."""


def collect(sources: Sequence[UsageSource], inventory: Inventory) -> Usage:
    usage = Usage()
    by_id: dict[tuple[int, int], list[str]] = {}
    by_hash: dict[str, list[str]] = {}
    for b in inventory.bases:
        by_id.setdefault((b.dev, b.ino), []).append(b.name)
        if b.image_hash is not None and b.kind in _IMAGE_KINDS:
            by_hash.setdefault(b.image_hash, []).append(b.name)
    for source in sources:
        started = time.perf_counter()
        try:
            result = source.collect(inventory)
        except Exception as exc:  # a source must never make us delete more
            usage.errors.append(f"{source.name}: {type(exc).__name__}: {exc}")
            continue
        took = time.perf_counter() - started
        if result.error is not None:
            usage.errors.append(result.error)
            LOG.warning("Usage source %s failed: %s; keeping every base", source.name,
                        result.error)
            continue
        LOG.info("Usage source %s: looked at %d, saw %d cache files in use (%.0f ms)",
                 source.name, result.seen, len(result.by_file) + len(result.by_name),
                 took * 1e3)
        usage.building |= result.building
        for key, seen in result.by_file.items():
            for name in by_id.get(key, ()):
                usage.sightings.setdefault(name, []).extend(seen)
        for image_hash, seen in result.by_name.items():
            for name in by_hash.get(image_hash, ()):
                usage.sightings.setdefault(name, []).extend(seen)
        if isinstance(result, DomainsResult):
            usage.domains = result.domains
            for path, why in result.unreadable:
                usage.problems.append(Problem(ProblemCode.DOMAIN_DISK, path, why, None,
                                              _ANY_BASE))
        if isinstance(result, OpenFilesResult) and result.denied:
            note = (f"open-files: {result.denied} processes could not be looked at "
                    "(permission denied); files they hold open are not known")
            # as root that is a few special processes (a container's init); otherwise
            # most of the host's, and the operator must know the source is half blind
            LOG.log(logging.INFO if os.geteuid() == 0 else logging.WARNING, "%s", note)
            usage.notes.append(note)
    return usage
