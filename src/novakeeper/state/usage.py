"""Usage records: first seen, last seen in use, by how many disks, how big.

Kept as plain rows and sorted by the policy, as kubelet's image GC keeps (first detected,
last used) per image. Written after each scan, so the last-used time of a base is the last
scan that saw a disk on it.
"""

from __future__ import annotations

import os
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


def load(db: StateDB) -> dict[str, UsageRecord]:
    rows = db.conn.execute(
        "SELECT name, first_seen, last_seen, last_used, users, size, allocated FROM bases")
    return {r["name"]: UsageRecord(r["name"], r["first_seen"], r["last_seen"], r["last_used"],
                                   r["users"], r["size"], r["allocated"]) for r in rows}


def record(db: StateDB, inventory: Inventory, now: float) -> dict[str, UsageRecord]:
    """Fold one scan into the records and return them. A name no longer in the cache
    loses its row: if the image comes back it is a new download with a new history."""
    rows = []
    for base in inventory.bases:
        users = len(inventory.users_of(base.name))
        rows.append((storable(base.name), str(base.kind), base.image_hash, now, now,
                     now if users else None, users, base.size, base.allocated))
    with db.write() as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS seen (name TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM seen")
        conn.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((r[0],) for r in rows))
        conn.execute("DELETE FROM bases WHERE name NOT IN (SELECT name FROM seen)")
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
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def last_used_map(records: Mapping[str, UsageRecord]) -> dict[str, float]:
    """name -> last-used time, for the bases that were ever seen in use."""
    return {n: r.last_used for n, r in records.items() if r.last_used is not None}
