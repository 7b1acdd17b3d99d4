"""Pins: images and files an operator wants kept whatever their age or the budget.

Two places hold pins: `[novakeeper] pinned_images` / `pinned_files` in the configuration
(for config management) and the state database (for `novakeeper cache pin`). Both are
merged into one Pins value the pure policy reads.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from novakeeper.cache.layout import BaseKind, classify, image_hash
from novakeeper.state.db import StateDB

_HASH = re.compile(r"[0-9a-f]{40}")
IMAGE_PIN_KINDS = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED})


def hash_for(image: str) -> str:
    """The cache name nova gives an image: sha1 of its id. A 40-hex string is taken as a
    cache name already (what `ls _base` shows), since Glance ids are never that."""
    lowered = image.strip().lower()
    return lowered if _HASH.fullmatch(lowered) else image_hash(image.strip())


def check_image_id(image: str) -> str | None:
    """Why `image` is not a usable image id, or None."""
    if not image.strip():
        return "an image id cannot be empty"
    if any(c.isspace() for c in image.strip()):
        return f"{image!r} is not an image id (it contains white space)"
    return None


def check_pattern(pattern: str) -> str | None:
    """Why `pattern` is not a usable file pattern, or None. Patterns name files inside the
    cache folder only, so they can never reach outside it."""
    if not pattern.strip():
        return "a file pattern cannot be empty"
    if "/" in pattern:
        return f"{pattern!r}: a pattern matches names inside the cache folder, without '/'"
    return None


@dataclass(frozen=True, slots=True)
class Pin:
    kind: str  # "image" or "file"
    value: str
    """The image id (or cache hash) or the glob pattern, as the operator wrote it."""
    source: str  # "config" or "state"
    note: str = ""
    created: float | None = None

    @property
    def hash(self) -> str | None:
        return hash_for(self.value) if self.kind == "image" else None

    def words(self) -> str:
        where = "nova.conf" if self.source == "config" else "cache pin"
        if self.kind == "image":
            return f"pinned: image {self.value} ({where})"
        return f"pinned: matches {self.value!r} ({where})"

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value, "source": self.source,
                "hash": self.hash, "note": self.note, "created": self.created}


@dataclass(frozen=True)
class Pins:
    pins: tuple[Pin, ...] = ()
    _by_hash: dict[str, Pin] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for pin in self.pins:
            if pin.kind == "image":
                self._by_hash.setdefault(hash_for(pin.value), pin)

    def match(self, name: str, kind: BaseKind, image_hash: str | None) -> Pin | None:
        """The pin that keeps the file called `name`, if any. An image pin keeps the
        image's base and resized copies, not its dead downloads."""
        if kind in IMAGE_PIN_KINDS and image_hash is not None:
            pin = self._by_hash.get(image_hash)
            if pin is not None:
                return pin
        for pin in self.pins:
            if pin.kind == "file" and fnmatch.fnmatchcase(name, pin.value):
                return pin
        return None

    def keeps(self, names: list[str]) -> list[str]:
        """Which of these cache file names a pin keeps."""
        out = []
        for name in names:
            c = classify(name)
            if self.match(name, c.kind, c.image_hash) is not None:
                out.append(name)
        return out

    def __len__(self) -> int:
        return len(self.pins)


def from_config(images: Iterable[str], patterns: Iterable[str]) -> list[Pin]:
    return ([Pin("image", i.strip(), "config") for i in images if i.strip()]
            + [Pin("file", p.strip(), "config") for p in patterns if p.strip()])


def load(db: StateDB) -> list[Pin]:
    rows = db.conn.execute("SELECT kind, value, note, created FROM pins ORDER BY created")
    return [Pin(r["kind"], r["value"], "state", r["note"], r["created"]) for r in rows]


def add(db: StateDB, kind: str, value: str, note: str, now: float) -> bool:
    """Pin; False when it was pinned already."""
    with db.write() as conn:
        cur = conn.execute(
            "INSERT OR IGNORE INTO pins (kind, value, hash, created, note) VALUES (?,?,?,?,?)",
            (kind, value, hash_for(value) if kind == "image" else None, now, note))
        return cur.rowcount == 1


def remove(db: StateDB, kind: str, value: str) -> bool:
    """Unpin; False when it was not pinned (in the database: config pins stay)."""
    with db.write() as conn:
        cur = conn.execute("DELETE FROM pins WHERE kind = ? AND value = ?", (kind, value))
        if cur.rowcount == 0 and kind == "image":
            cur = conn.execute("DELETE FROM pins WHERE kind = 'image' AND hash = ?",
                               (hash_for(value),))
        return cur.rowcount > 0
