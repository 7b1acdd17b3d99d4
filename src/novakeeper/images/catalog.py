"""Glance's word on every image this node caches: name, status, visibility, hashes.

A base is named sha1(image id), which cannot be turned back into the id; so the catalog
lists the images the credentials can see (paginated, hidden ones too), hashes each id, and
keeps the answers in the state database (`glance_images`), refreshed at most every
`glance_refresh_seconds` so a pass does not hit Glance every time.

An image's status is Glance's own (active, deactivated, queued, ...), or:

* `deleted`: the image was known (listed before, or learned from a pin, the Nova API,
  `cache verify --image-id`, `cache fetch`), is no longer listed, and `GET /v2/images/{id}`
  answers 404 to credentials with the admin role (for which Glance lists every project's
  images). Without the admin role a 404 may be another project's private image: `unknown`.
* `unknown`: Glance could not answer this refresh (down, time-out, bad credentials).
  Statuses learned before are shown but not acted on: Glance down never means deleted.

A base whose hash no listing ever showed has no entry at all (another region's image, or
one deleted before novakeeper first listed): it is judged by nova's rules alone.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from novakeeper.cache.layout import image_hash

if TYPE_CHECKING:
    from novakeeper.integrity.glance import Glance, GlanceImage
    from novakeeper.state.db import StateDB

LOG = logging.getLogger("novakeeper.cache")

DELETED = "deleted"
DEACTIVATED = "deactivated"
ACTIVE = "active"
UNKNOWN = "unknown"
GONE = frozenset({DELETED, DEACTIVATED})
"""Statuses from which no new instance can be built: nova cannot fetch the image again."""


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What Glance said about one image, as the plan shows it."""

    image_id: str
    status: str
    name: str | None = None
    visibility: str | None = None
    hash_algo: str | None = None
    hash_value: str | None = None
    checksum: str | None = None
    size: int | None = None
    checked_at: float = 0.0
    """When Glance last answered about it."""
    gone_since: float | None = None
    """First refresh that found it deleted."""

    @property
    def gone(self) -> bool:
        """Deleted or deactivated in Glance: bases of it can never be fetched again."""
        return self.status in GONE

    def words(self) -> str:
        label = f"{self.name!r} ({self.image_id})" if self.name else self.image_id
        return f"image {label} is {self.status} in Glance"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.image_id, "name": self.name, "status": self.status,
                "visibility": self.visibility, "os_hash_algo": self.hash_algo,
                "os_hash_value": self.hash_value, "checksum": self.checksum,
                "size": self.size, "checked_at": self.checked_at,
                "gone_since": self.gone_since}


@dataclass(frozen=True)
class Catalog:
    """cache hash -> facts, with how fresh the answer is."""

    by_hash: Mapping[str, ImageFacts] = field(default_factory=dict)
    refreshed_at: float | None = None
    """When Glance last answered a full listing."""
    error: str | None = None
    """Why this pass's refresh failed: every status is then `unknown`."""
    sees_all: bool = False
    asked: bool = False
    """Whether this pass asked Glance (False: the stored answer was fresh enough)."""

    def notes(self) -> tuple[str, ...]:
        if self.error is None:
            return ()
        return (f"Glance: {self.error}; image statuses unknown this pass: no base is "
                "treated as the base of a deleted image",)


def _facts(image: GlanceImage, now: float) -> ImageFacts:
    return ImageFacts(image.id, (image.status or UNKNOWN).lower(), image.name,
                      image.visibility, image.hash_algo, image.hash_value, image.checksum,
                      image.size, now)


def _row_facts(r: sqlite3.Row) -> ImageFacts:
    return ImageFacts(r["image_id"], r["status"], r["name"], r["visibility"], r["hash_algo"],
                      r["hash_value"], r["checksum"], r["size"], r["checked_at"],
                      r["gone_since"])


def stored(state: StateDB) -> tuple[dict[str, ImageFacts], sqlite3.Row | None]:
    rows = state.conn.execute("SELECT * FROM glance_images").fetchall()
    meta = state.conn.execute("SELECT * FROM glance_refresh WHERE id = 1").fetchone()
    return {r["hash"]: _row_facts(r) for r in rows}, meta


def known_ids(state: StateDB) -> dict[str, str]:
    """hash -> id of every image id novakeeper learned some other way."""
    return {r["hash"]: r["image_id"]
            for r in state.conn.execute("SELECT hash, image_id FROM image_ids")}


def _unknown(by_hash: Mapping[str, ImageFacts]) -> dict[str, ImageFacts]:
    return {h: replace(f, status=UNKNOWN) for h, f in by_hash.items()}


def _fresh(state: StateDB, now: float, interval: float, extra_ids: Mapping[str, str],
           wanted: Collection[str] | None) -> Catalog | None:
    """The stored answer, when it is younger than `interval` and knows every image id
    novakeeper learned; only the images of `wanted` hashes (the cache's) are loaded."""
    meta = state.conn.execute("SELECT * FROM glance_refresh WHERE id = 1").fetchone()
    if meta is None or not meta["ok"] or not 0 <= now - meta["at"] < interval:
        return None
    unknown = state.conn.execute(
        "SELECT COUNT(*) FROM image_ids WHERE hash NOT IN (SELECT hash FROM glance_images)"
    ).fetchone()[0]
    if unknown:
        return None
    if extra_ids:
        have = {r[0] for r in state.conn.execute(
            "SELECT hash FROM glance_images WHERE hash IN (SELECT value FROM json_each(?))",
            (json.dumps(list(extra_ids)),))}
        if set(extra_ids) - have:
            return None
    if wanted is None:
        rows = state.conn.execute("SELECT * FROM glance_images").fetchall()
    else:
        rows = state.conn.execute(
            "SELECT * FROM glance_images WHERE hash IN (SELECT value FROM json_each(?))",
            (json.dumps(list(wanted)),)).fetchall()
    return Catalog({r["hash"]: _row_facts(r) for r in rows}, meta["at"], None,
                   bool(meta["sees_all"]))


def refresh(state: StateDB | None, glance: Callable[[], Glance], now: float,
            interval: float, extra_ids: Mapping[str, str] | None = None,
            force: bool = False, wanted: Collection[str] | None = None) -> Catalog:
    """The catalog for this pass: the stored one while it is younger than `interval`,
    else a new listing (stored when the database is writable). Never raises for Glance:
    a failed refresh is a catalog whose statuses are all `unknown`, with the reason.
    `wanted`: the image hashes the pass needs (the stored answer is read for those only)."""
    old: dict[str, ImageFacts] = {}
    meta = None
    ids: dict[str, str] = dict(extra_ids or {})
    if state is not None:
        try:
            if not force:
                fresh = _fresh(state, now, interval, ids, wanted)
                if fresh is not None:
                    return fresh
            old, meta = stored(state)
            ids.update(known_ids(state))
        except sqlite3.Error as exc:
            LOG.warning("State database %s: %s; asking Glance", state.path, exc)
    from novakeeper.integrity.glance import GlanceError

    client = glance()
    try:
        listed = {image_hash(img.id): _facts(img, now) for img in client.images()}
        sees_all = client.sees_all()
        found = dict(listed)
        missing = {h: f.image_id for h, f in old.items() if h not in listed}
        missing.update({h: i for h, i in ids.items() if h not in listed})
        for h, image_id in missing.items():
            image = client.image(image_id)
            prior = old.get(h)
            if image is not None:
                found[h] = _facts(image, now)
            elif sees_all:
                since = prior.gone_since if prior is not None and prior.gone_since else now
                base = prior if prior is not None else ImageFacts(image_id, DELETED)
                found[h] = replace(base, status=DELETED, checked_at=now, gone_since=since)
            else:
                base = prior if prior is not None else ImageFacts(image_id, UNKNOWN)
                found[h] = replace(base, status=UNKNOWN, checked_at=now)
    except GlanceError as exc:
        error = str(exc)
        LOG.warning("Glance: %s; image statuses unknown this pass", error)
        _store_failure(state, now, error)
        last = meta["at"] if meta is not None and meta["ok"] else None
        return Catalog(_unknown(old), last, error, False, asked=True)
    finally:
        client.close()
    _store(state, found, now, sees_all)
    LOG.info("Glance: %d images listed, %d known images not listed (%d deleted)",
             len(listed), len(missing), sum(1 for f in found.values() if f.status == DELETED))
    return Catalog(found, now, None, sees_all, asked=True)


def _store(state: StateDB | None, found: Mapping[str, ImageFacts], now: float,
           sees_all: bool) -> None:
    if state is None or not state.writable:
        return
    try:
        with state.write() as conn:
            conn.execute("DELETE FROM glance_images")
            conn.executemany(
                "INSERT INTO glance_images (hash, image_id, name, status, visibility, "
                "disk_format, container_format, size, virtual_size, checksum, hash_algo, "
                "hash_value, checked_at, gone_since) VALUES (?,?,?,?,?,NULL,NULL,?,NULL,?,?,?,?,?)",
                [(h, f.image_id, f.name, f.status, f.visibility, f.size, f.checksum,
                  f.hash_algo, f.hash_value, f.checked_at, f.gone_since)
                 for h, f in found.items()])
            conn.execute("INSERT OR REPLACE INTO glance_refresh (id, at, ok, sees_all, listed,"
                         " error) VALUES (1, ?, 1, ?, ?, NULL)", (now, int(sees_all), len(found)))
    except sqlite3.Error as exc:
        LOG.warning("State database %s: %s; Glance's answer not stored", state.path, exc)


def _store_failure(state: StateDB | None, now: float, error: str) -> None:
    if state is None or not state.writable:
        return
    try:
        with state.write() as conn:
            conn.execute("INSERT INTO glance_refresh (id, at, ok, error) VALUES (1, ?, 0, ?) "
                         "ON CONFLICT (id) DO UPDATE SET at = excluded.at, ok = 0, "
                         "error = excluded.error", (now, error))
    except sqlite3.Error as exc:
        LOG.warning("State database %s: %s", state.path, exc)
