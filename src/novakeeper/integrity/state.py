"""What `cache verify` keeps in the state database: checksums, the quarantine, image ids.

* `checksums`: one row per (cache file, algorithm). `value` is the reference digest (the
  first read of this very file, dev and inode, or Glance's); a later read that differs
  never overwrites it: it is kept in `observed` with status 'mismatch', so the evidence
  survives until the file is replaced, quarantined or gone. (ino, size, mtime_ns,
  ctime_ns) are the file's at the last read: a file whose four are unchanged is not read
  again by `cache verify` without --force. ctime is in the key because nobody can set it:
  a write that puts the mtime back (`touch -d`, os.utime) still moves it.
* `quarantine`: a row written before each move into `_base/.novakeeper-quarantine` and
  completed after it, as the removal journal does for unlinks.
* `image_ids`: sha1(image id) -> image id, learned from pins, from the servers of the
  Nova API and from `--image-id`. The cache knows only the hash; Glance only the id.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from novakeeper.state.db import StateDB
from novakeeper.state.usage import storable


class Status(StrEnum):
    OK = "ok"
    MISMATCH = "mismatch"


class Source(StrEnum):
    LOCAL = "local"  # the first read of this file
    GLANCE = "glance"  # confirmed equal to Glance's os_hash_value / checksum


@dataclass(frozen=True, slots=True)
class ChecksumRecord:
    name: str
    algo: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    value: str
    verified_at: float
    source: Source
    status: Status
    observed: str | None = None
    detail: str = ""
    users: tuple[str, ...] = ()
    """Instances at risk when the mismatch was found (empty for an unused base)."""

    def same_file(self, dev: int, ino: int) -> bool:
        return (self.dev, self.ino) == (dev, ino)

    def unchanged(self, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> bool:
        return self.same_file(dev, ino) and (self.size, self.mtime_ns, self.ctime_ns) == (
            size, mtime_ns, ctime_ns)


@dataclass(frozen=True, slots=True)
class CorruptBase:
    """A base whose content differs from its reference and that is still in the cache."""

    name: str
    algo: str
    expected: str
    observed: str | None
    detected_at: float
    detail: str
    users: tuple[str, ...]
    """Instances whose disks read it (at detection): empty when it was not in use."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "algorithm": self.algo, "expected": self.expected,
                "observed": self.observed, "detected_at": self.detected_at,
                "detail": self.detail, "users": list(self.users)}


def _record(r: Any) -> ChecksumRecord:
    try:
        users = tuple(str(u) for u in json.loads(r["users"] or "[]"))
    except ValueError:
        users = ()
    return ChecksumRecord(r["name"], r["algo"], r["dev"], r["ino"], r["size"], r["mtime_ns"],
                          r["ctime_ns"], r["value"], r["verified_at"], Source(r["source"]),
                          Status(r["status"]), r["observed"], r["detail"], users)


def load(db: StateDB) -> dict[tuple[str, str], ChecksumRecord]:
    """(name, algorithm) -> record."""
    rows = db.conn.execute("SELECT * FROM checksums")
    return {(r["name"], r["algo"]): _record(r) for r in rows}


def last_verified(db: StateDB) -> dict[str, float]:
    """name -> when it was last read (any algorithm)."""
    rows = db.conn.execute("SELECT name, max(verified_at) AS at FROM checksums GROUP BY name")
    return {r["name"]: float(r["at"]) for r in rows}


def save(db: StateDB, records: Iterable[ChecksumRecord]) -> None:
    """Insert or replace whole rows (a good read, or a new reference for a new file)."""
    rows = [(storable(r.name), r.algo, r.dev, r.ino, r.size, r.mtime_ns, r.ctime_ns, r.value,
             r.verified_at,
             str(r.source), str(r.status), r.observed, storable(r.detail),
             json.dumps(list(r.users)))
            for r in records]
    if not rows:
        return
    with db.write() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO checksums (name, algo, dev, ino, size, mtime_ns, ctime_ns, "
            "value, verified_at, source, status, observed, detail, users) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def forget(db: StateDB, names: Iterable[str]) -> None:
    """Drop the records of files that are gone (removed, quarantined) or replaced."""
    names = list(names)
    if names:
        with db.write() as conn:
            conn.executemany("DELETE FROM checksums WHERE name = ?",
                             ((storable(n),) for n in names))


def prune(db: StateDB, present: Iterable[str]) -> int:
    """Forget every file no longer in the cache; returns how many rows went."""
    with db.write() as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS verify_present (name TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM verify_present")
        conn.executemany("INSERT OR IGNORE INTO verify_present VALUES (?)",
                         ((storable(n),) for n in present))
        cur = conn.execute("DELETE FROM checksums WHERE name NOT IN "
                           "(SELECT name FROM verify_present)")
        return int(cur.rowcount)


def corrupt(db: StateDB, present: Container[str] | None = None) -> list[CorruptBase]:
    """Every base recorded as corrupt and not (yet) moved to the quarantine; only those
    still in the cache when `present` (names from a scan) is given, since a row outlives
    its file until the next verify prunes it."""
    rows = db.conn.execute("SELECT * FROM checksums WHERE status = ? ORDER BY name, algo",
                           (str(Status.MISMATCH),))
    seen: dict[str, CorruptBase] = {}
    for r in rows:
        rec = _record(r)
        if present is not None and rec.name not in present:
            continue
        if rec.name not in seen:
            seen[rec.name] = CorruptBase(rec.name, rec.algo, rec.value, rec.observed,
                                         rec.verified_at, rec.detail, rec.users)
    return list(seen.values())


def corrupt_in_use(db: StateDB, present: Container[str] | None = None) -> list[CorruptBase]:
    """Corrupt bases that instances were using when it was found: what the plan, the log
    and the metric novakeeper_cache_in_use_corrupt_bases must show until it is resolved (the
    instances are moved off it and the base is quarantined, or the file is replaced)."""
    return [c for c in corrupt(db, present) if c.users]


# -- quarantine ------------------------------------------------------------------------


class Moved(StrEnum):
    STARTED = "started"  # written before the rename; still so only after a crash
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"  # the re-check under nova's lock said no
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    id: int
    started: float
    finished: float | None
    name: str
    path: str
    target: str
    bytes: int
    reason: str
    outcome: Moved
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "started": self.started, "finished": self.finished,
                "name": self.name, "path": self.path, "target": self.target,
                "bytes": self.bytes, "reason": self.reason, "outcome": str(self.outcome),
                "detail": self.detail}


def begin_move(db: StateDB, name: str, path: str, target: str, dev: int, ino: int,
               size: int, reason: str, now: float) -> int:
    with db.write() as conn:
        cur = conn.execute(
            "INSERT INTO quarantine (started, name, path, target, dev, ino, bytes, reason, "
            "outcome) VALUES (?,?,?,?,?,?,?,?,?)",
            (now, storable(name), storable(path), storable(target), dev, ino, size,
             storable(reason), str(Moved.STARTED)))
        return int(cur.lastrowid or 0)


def end_move(db: StateDB, entry: int, outcome: Moved, detail: str, now: float) -> None:
    with db.write() as conn:
        conn.execute("UPDATE quarantine SET finished = ?, outcome = ?, detail = ? WHERE id = ?",
                     (now, str(outcome), storable(detail), entry))
        if outcome is Moved.QUARANTINED:
            conn.execute("DELETE FROM checksums WHERE name = (SELECT name FROM quarantine "
                         "WHERE id = ?)", (entry,))


def quarantined(db: StateDB, limit: int | None = None) -> list[QuarantineRecord]:
    """The quarantine journal, oldest first."""
    sql = "SELECT * FROM quarantine ORDER BY id DESC"
    args: tuple[Any, ...] = ()
    if limit is not None:
        sql += " LIMIT ?"
        args = (limit,)
    return [QuarantineRecord(r["id"], r["started"], r["finished"], r["name"], r["path"],
                             r["target"], r["bytes"], r["reason"], Moved(r["outcome"]),
                             r["detail"])
            for r in reversed(db.conn.execute(sql, args).fetchall())]


# -- image ids -------------------------------------------------------------------------


def image_ids(db: StateDB) -> dict[str, str]:
    """cache hash -> Glance image id, as learned so far."""
    return {r["hash"]: r["image_id"]
            for r in db.conn.execute("SELECT hash, image_id FROM image_ids")}


def learn_image_ids(db: StateDB, ids: Mapping[str, str], source: str, now: float) -> None:
    """Remember hash -> id pairs (sha1 is forever: a pair never needs updating)."""
    if ids:
        with db.write() as conn:
            conn.executemany("INSERT OR IGNORE INTO image_ids (hash, image_id, source, "
                             "learned_at) VALUES (?,?,?,?)",
                             ((h, i, source, now) for h, i in ids.items()))
