"""What each name in the cache folder means, by nova's naming rules (libvirt driver).

A name that matches no rule is *unknown*: reported, never removed. We are stricter than
nova, which takes any 40-character name for an image and ignores `<sha1>_<digit>`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum


class BaseKind(StrEnum):
    ORIGINAL = "original"  # <sha1 of image id>
    RESIZED = "resized"  # <sha1>_<size> or legacy <sha1>_sm
    SWAP = "swap"  # swap_<MB>
    EPHEMERAL = "ephemeral"  # ephemeral_<GB>_<7 hex of the mkfs command hash>
    PARTIAL = "partial"  # <name>.part: download in progress, or stale
    CONVERTED = "converted"  # <name>.converted: qcow2 -> raw intermediate
    INFO = "info"  # <sha1>.info: leftover of the checksum feature removed in Train
    UNKNOWN = "unknown"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    SPECIAL = "special"  # fifo, socket, device


# Kinds a disk can use as a backing file, by the disk's name in its instance folder. An
# unreadable disk holds every base of its class; an unnamed one holds every kind.
# novakeeper's own entries in the cache folder: dot names nova's manager never looks at,
# and never cache files to our scan.
RUN_LOCK_NAME = ".novakeeper-run.lock"
TRASH_NAME = ".novakeeper-trash"
QUARANTINE_NAME = ".novakeeper-quarantine"  # corrupt bases `cache verify` moved aside

ROOT_KINDS = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED})
TEMPLATE_KINDS = frozenset({BaseKind.SWAP, BaseKind.EPHEMERAL})
"""Swap and ephemeral templates: nova makes them itself, no image names them."""
ALL_KINDS = frozenset(BaseKind)
DELETABLE_KINDS = frozenset(
    {BaseKind.ORIGINAL, BaseKind.RESIZED, BaseKind.SWAP, BaseKind.EPHEMERAL,
     BaseKind.PARTIAL, BaseKind.CONVERTED, BaseKind.INFO}
)


def kinds_usable_by(disk_name: str) -> frozenset[BaseKind]:
    """Which kinds of base a disk with this file name could be backed by."""
    if disk_name in ("disk", "disk.rescue"):
        return ROOT_KINDS
    if disk_name == "disk.local" or disk_name.startswith("disk.eph"):
        return frozenset({BaseKind.EPHEMERAL})
    if disk_name == "disk.swap":
        return frozenset({BaseKind.SWAP})
    return ALL_KINDS


@dataclass(frozen=True, slots=True)
class CacheName:
    kind: BaseKind
    image_hash: str | None = None
    """sha1 hex of the Glance image id, for originals, resized copies and their partials."""
    variant: str | None = None
    """Resized size, swap MB, 'GB_hash' for ephemeral; None for originals."""


_SHA1 = r"[0-9a-f]{40}"
_ORIGINAL = re.compile(rf"({_SHA1})")
_RESIZED = re.compile(rf"({_SHA1})_([0-9]+|sm)")
_SWAP = re.compile(r"swap_([0-9]+)")
_EPHEMERAL = re.compile(r"ephemeral_([0-9]+_[0-9a-f]{7})")
_INFO = re.compile(rf"({_SHA1})\.info")


def _plain(name: str) -> CacheName | None:
    if m := _ORIGINAL.fullmatch(name):
        return CacheName(BaseKind.ORIGINAL, m.group(1))
    if m := _RESIZED.fullmatch(name):
        return CacheName(BaseKind.RESIZED, m.group(1), m.group(2))
    if m := _SWAP.fullmatch(name):
        return CacheName(BaseKind.SWAP, None, m.group(1))
    if m := _EPHEMERAL.fullmatch(name):
        return CacheName(BaseKind.EPHEMERAL, None, m.group(1))
    return None


def classify(name: str) -> CacheName:
    """Classify a regular file's name (directories and links are classified by the caller)."""
    plain = _plain(name)
    if plain is not None:
        return plain
    for suffix, kind in ((".part", BaseKind.PARTIAL), (".converted", BaseKind.CONVERTED)):
        if name.endswith(suffix):
            stem = _plain(name[: -len(suffix)])
            if stem is not None:
                return CacheName(kind, stem.image_hash, stem.variant)
    if m := _INFO.fullmatch(name):
        return CacheName(BaseKind.INFO, m.group(1))
    return CacheName(BaseKind.UNKNOWN)


def image_hash(image_id: str) -> str:
    """The cache name nova gives a Glance image: sha1 of its id."""
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()
