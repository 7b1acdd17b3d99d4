"""Usage records: first seen, last seen in use, by how many disks, how big.

Kept as plain rows and sorted by the policy, as kubelet's image GC keeps (first detected,
last used) per image. Written after each scan, so the last-used time of a base is the last
scan that saw a disk on it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from novakeeper.cache.inventory import Inventory
from novakeeper.state.db import StateDB


@dataclass(frozen=True, slots=True)
class UsageRecord:
    name: str
    first_seen: float
    last_seen: float
    last_used: float | None
    """None: never seen in use since the record began."""
    users: int
    """Disks using it at the last scan."""
    size: int
    allocated: int


def _plain(db: StateDB) -> sqlite3.Cursor:
    """A cursor yielding plain tuples: sqlite3.Row costs a lookup per column, and a pass
    reads a row per cache file."""
    cursor = db.conn.cursor()
    cursor.row_factory = None
    return cursor


def load(db: StateDB) -> dict[str, UsageRecord]:
    rows = _plain(db).execute(
        "SELECT name, first_seen, last_seen, last_used, users, size, allocated FROM bases")
    return {r[0]: UsageRecord(*r) for r in rows}  # the columns in UsageRecord's order


def record(db: StateDB, inventory: Inventory, now: float) -> dict[str, UsageRecord]:
    """Fold one scan into the records and return them. A name no longer in the cache
    loses its row: if the image comes back it is a new download with a new history."""
    rows = []
    for base in inventory.bases:
        users = len(inventory.users_of(base.name))
        rows.append((storable(base.name), str(base.kind), base.image_hash, now, now,
                     now if users else None, users, base.size, base.allocated))
    seen = {r[0] for r in rows}
    with db.write() as conn:
        # inside the write transaction: nobody else changes the rows in between
        gone = [(name,) for (name,) in _plain(db).execute("SELECT name FROM bases")
                if name not in seen]
        conn.executemany("DELETE FROM bases WHERE name = ?", gone)
        conn.executemany(
            """INSERT INTO bases (name, kind, image_hash, first_seen, last_seen, last_used,
                                  users, size, allocated)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET
                   kind = excluded.kind, image_hash = excluded.image_hash,
                   last_seen = max(last_seen, excluded.last_seen),
                   last_used = CASE WHEN excluded.last_used IS NULL THEN last_used
                                    ELSE max(coalesce(last_used, 0), excluded.last_used) END,
                   users = excluded.users, size = excluded.size,
                   allocated = excluded.allocated""",
            rows)
    return load(db)


def storable(name: str) -> str:
    """A file name as SQLite can store it (UTF-8 text). A name with bytes that are not
    UTF-8 (decoded with surrogateescape) would make the driver raise UnicodeEncodeError
    and stop every run; its bytes are kept escaped (\\xff). Such a name is never one nova
    gives a cache file, so its record is never looked up by name."""
    if name.isascii():  # every name nova gives: it encodes and decodes to itself
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def last_used_map(records: Mapping[str, UsageRecord]) -> dict[str, float]:
    """name -> last-used time, for the bases that were ever seen in use."""
    return {n: r.last_used for n, r in records.items() if r.last_used is not None}
