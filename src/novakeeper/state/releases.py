"""Operators' releases of last copies (`novakeeper cache release IMAGE_ID`).

A base of an image deleted or deactivated in Glance that an instance still names is kept
as the last copy (verdict `last-copy`). A release records that the operator accepts that
those instances can no longer be rescued, rebuilt or block-migrated from it: from then on
the base is judged like any base of a deleted image (unused for
deleted_image_min_age_seconds: removed; first to go under a budget). A disk that uses it
still keeps it, whatever the release says. `cache release --undo` takes a release back.
"""

from __future__ import annotations

import time

from novakeeper.cache.layout import image_hash
from novakeeper.state.db import StateDB


def add(db: StateDB, image_id: str, note: str, now: float) -> bool:
    """True when added, False when it was already released."""
    with db.write() as conn:
        cur = conn.execute("INSERT OR IGNORE INTO releases (hash, image_id, released_at, note) "
                           "VALUES (?, ?, ?, ?)", (image_hash(image_id), image_id, now, note))
        return cur.rowcount > 0


def remove(db: StateDB, image_id: str) -> bool:
    with db.write() as conn:
        cur = conn.execute("DELETE FROM releases WHERE hash = ?", (image_hash(image_id),))
        return cur.rowcount > 0


def load(db: StateDB) -> dict[str, str]:
    """Image hash -> the release in words, for the plan's reason."""
    out = {}
    for r in db.conn.execute("SELECT hash, image_id, released_at, note FROM releases"):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["released_at"]))
        note = f": {r['note']}" if r["note"] else ""
        out[r["hash"]] = f"last copy released by an operator on {when}{note}"
    return out
