"""The removal journal: a row written before each unlink and completed after it.

A crash (SIGKILL, power loss) between the two leaves a row 'started'; the next run
reconciles it against the cache it scanned: the file is gone (removed) or still the same
file (not removed). `novakeeper cache history` reads it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from novakeeper.cache.inventory import Inventory
from novakeeper.cache.plan import Decision
from novakeeper.cache.trash import TrashEntry
from novakeeper.state.db import StateDB
from novakeeper.state.usage import storable


class Entry(StrEnum):
    STARTED = "started"  # written before the unlink; still so only after a crash
    REMOVED = "removed"
    TRASHED = "trashed"  # moved into the trash folder; its unlink is a later 'purged' row
    PURGED = "purged"  # unlinked from the trash after its grace period
    RESTORED = "restored"  # put back from the trash by `cache restore`
    SKIPPED = "skipped"  # the final check under lock said no
    FAILED = "failed"  # the unlink failed
    RECOVERED_REMOVED = "removed-after-crash"  # reconciled: the file is gone
    RECOVERED_KEPT = "kept-after-crash"  # reconciled: the file is still there


@dataclass(frozen=True, slots=True)
class JournalEntry:
    id: int
    run: str
    started: float
    finished: float | None
    name: str
    path: str
    kind: str
    image_hash: str | None
    dev: int
    ino: int
    bytes: int
    verdict: str
    reason: str
    policy: dict[str, Any]
    outcome: Entry
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run": self.run, "started": self.started,
                "finished": self.finished, "name": self.name, "path": self.path,
                "kind": self.kind, "image_hash": self.image_hash, "bytes": self.bytes,
                "verdict": self.verdict, "reason": self.reason, "policy": self.policy,
                "outcome": str(self.outcome), "detail": self.detail}


class Journal:
    """The journal of one run."""

    def __init__(self, db: StateDB, policy: Mapping[str, Any], run: str | None = None) -> None:
        self.db = db
        self.run = run or uuid.uuid4().hex[:12]
        self.policy = json.dumps(dict(policy), sort_keys=True, default=str)

    def begin_many(self, items: Sequence[tuple[Decision, int]], now: float) -> list[int]:
        """'Before' rows for a batch, in one transaction (one fsync for the batch)."""
        ids = []
        with self.db.write() as conn:
            for d, frees in items:
                cur = conn.execute(
                    """INSERT INTO journal (run, started, name, path, kind, image_hash, dev,
                           ino, bytes, verdict, reason, policy, outcome)
                       VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                    (self.run, now, storable(d.name), storable(d.path), str(d.kind),
                     d.image_hash, d.dev, d.ino,
                     frees, str(d.verdict), storable(d.reason), self.policy,
                     str(Entry.STARTED)))
                ids.append(int(cur.lastrowid or 0))
        return ids

    def begin(self, d: Decision, frees: int, now: float) -> int:
        return self.begin_many([(d, frees)], now)[0]

    def end_many(self, rows: Sequence[tuple[int, Entry, int, str]], now: float) -> None:
        """'After' rows for a batch: (entry, outcome, bytes freed, detail), one transaction."""
        with self.db.write() as conn:
            for entry_id, outcome, freed, detail in rows:
                conn.execute("UPDATE journal SET finished = ?, outcome = ?, bytes = ?, "
                             "detail = ? WHERE id = ?", (now, str(outcome), freed,
                                                        storable(detail), entry_id))
                if outcome is Entry.REMOVED:
                    conn.execute("DELETE FROM bases WHERE name = (SELECT name FROM journal "
                                 "WHERE id = ?)", (entry_id,))

    def end(self, entry_id: int, outcome: Entry, freed: int, detail: str, now: float) -> None:
        self.end_many([(entry_id, outcome, freed, detail)], now)


    def record_restore(self, entry: TrashEntry, now: float) -> None:
        """One finished row: what `cache restore` put back."""
        with self.db.write() as conn:
            conn.execute(
                """INSERT INTO journal (run, started, finished, name, path, kind, image_hash,
                       dev, ino, bytes, verdict, reason, policy, outcome)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (self.run, now, now, storable(entry.name), storable(entry.path),
                 str(entry.kind), None,
                 entry.dev, entry.ino, 0, "restore", "restored from the trash by an "
                 "operator", self.policy, str(Entry.RESTORED)))


def _entry(r: Any) -> JournalEntry:
    try:
        policy = json.loads(r["policy"])
    except ValueError:
        policy = {}
    return JournalEntry(r["id"], r["run"], r["started"], r["finished"], r["name"], r["path"],
                        r["kind"], r["image_hash"], r["dev"], r["ino"], r["bytes"],
                        r["verdict"], r["reason"],
                        policy, Entry(r["outcome"]), r["detail"])


def unfinished(db: StateDB) -> list[JournalEntry]:
    rows = db.conn.execute("SELECT * FROM journal WHERE outcome = ? ORDER BY id",
                           (str(Entry.STARTED),))
    return [_entry(r) for r in rows]


def reconcile(db: StateDB, inventory: Inventory, now: float) -> list[JournalEntry]:
    """Settle the rows a crash left 'started', from a scan made after the crash. The
    same (device, inode) still in the cache: not removed; otherwise: removed."""
    present = {b.name: (b.dev, b.ino) for b in inventory.bases}
    trashed = {(t.dev, t.ino) for t in inventory.trash}
    settled = []
    for e in unfinished(db):
        gone = present.get(e.name) != (e.dev, e.ino)
        aside = gone and (e.dev, e.ino) in trashed
        outcome = Entry.RECOVERED_REMOVED if gone else Entry.RECOVERED_KEPT
        if aside:  # its bytes are counted when the trash gives them back ('purged')
            detail = ("interrupted after renaming it into the trash; the next clean "
                      "unlinks it from there")
        elif gone:
            detail = ("interrupted after the journal's first record; the file was gone at "
                      "the next scan")
        else:
            detail = ("interrupted before the unlink; the file was still there at the next "
                      "scan")
        freed = e.bytes if gone and not aside else 0
        with db.write() as conn:
            cur = conn.execute("UPDATE journal SET finished = ?, outcome = ?, detail = ?, "
                               "bytes = ? WHERE id = ? AND outcome = ?",
                               (now, str(outcome), detail, freed, e.id, str(Entry.STARTED)))
        if cur.rowcount:
            settled.append(replace(e, finished=now, bytes=freed, outcome=outcome,
                                   detail=detail))
    return settled


def history(db: StateDB, since: float | None = None, limit: int | None = None
            ) -> list[JournalEntry]:
    """Oldest first, as a log reads."""
    sql = "SELECT * FROM journal"
    args: list[Any] = []
    if since is not None:
        sql += " WHERE started >= ?"
        args.append(since)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [_entry(r) for r in reversed(db.conn.execute(sql, args).fetchall())]
