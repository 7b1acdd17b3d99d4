"""Usage records (novakeeper.state.usage): first seen, last seen in use, by how many disks,
sizes; folded in after every scan into a real SQLite state database, and rebuilt from the
next scan when the database is lost.

Most inventories are data (tests/_inventory_data.py); one is a real scan of qcow2 disks.
"""

from __future__ import annotations

import logging
import os

import pytest

from _inventory_data import DAY, KiB, base_file, inventory, sha1
from conftest import make_qcow2, make_raw
from novakeeper.cache.inventory import Scanner
from novakeeper.state import usage
from novakeeper.state.db import open_state
from novakeeper.state.usage import UsageRecord

T0 = 1_700_000_000.0
A, B, C = sha1("image-a"), sha1("image-b"), "swap_512"


@pytest.fixture
def db(tmp_path):
    state = open_state(str(tmp_path / "nk" / "state.db"), write=True)
    yield state
    state.close()


def bases(mtime: float = T0 - DAY):
    return [base_file(A, 64 * KiB, mtime, size=1 << 30), base_file(B, 128 * KiB, mtime),
            base_file(C, 4 * KiB, mtime)]


def test_first_scan_records_every_base(db):
    records = usage.record(db, inventory(bases(), {A: ["i-1", "i-2"], C: ["i-1"]}), T0)
    assert records == {
        A: UsageRecord(A, T0, T0, T0, 2, 1 << 30, 64 * KiB),
        B: UsageRecord(B, T0, T0, None, 0, 128 * KiB, 128 * KiB),
        C: UsageRecord(C, T0, T0, T0, 1, 4 * KiB, 4 * KiB),
    }
    assert usage.load(db) == records
    row = db.conn.execute("SELECT kind, image_hash FROM bases WHERE name = ?", (A,)).fetchone()
    assert tuple(row) == ("original", A)


def test_last_used_is_the_last_scan_that_saw_a_disk_on_it(db):
    usage.record(db, inventory(bases(), {A: ["i-1"]}), T0)
    usage.record(db, inventory(bases(), {A: ["i-1"], B: ["i-2"]}), T0 + DAY)
    records = usage.record(db, inventory(bases(), {B: ["i-2"]}), T0 + 2 * DAY)
    assert records[A].first_seen == T0
    assert records[A].last_seen == T0 + 2 * DAY
    assert records[A].last_used == T0 + DAY  # kept from the last scan that saw it in use
    assert records[A].users == 0
    assert records[B].last_used == T0 + 2 * DAY
    assert records[B].users == 1
    assert records[C].last_used is None
    assert usage.last_used_map(records) == {A: T0 + DAY, B: T0 + 2 * DAY}


def test_an_older_scan_recorded_late_never_moves_times_back(db):
    """Two runs at once: the slower one's scan started earlier but records last."""
    usage.record(db, inventory(bases(), {A: ["i-1"]}), T0 + DAY)
    records = usage.record(db, inventory(bases(), {A: ["i-1"]}), T0)
    assert records[A].last_seen == records[A].last_used == T0 + DAY


def test_sizes_and_user_counts_follow_the_latest_scan(db):
    usage.record(db, inventory(bases(), {A: ["i-1", "i-2", "i-3"]}), T0)
    grown = [base_file(A, 96 * KiB, T0, size=2 << 30), *bases()[1:]]
    records = usage.record(db, inventory(grown, {A: ["i-1"]}), T0 + 60)
    assert (records[A].size, records[A].allocated, records[A].users) == (2 << 30, 96 * KiB, 1)


def test_a_base_gone_from_the_cache_loses_its_row_and_comes_back_new(db):
    usage.record(db, inventory(bases(), {A: ["i-1"]}), T0)
    records = usage.record(db, inventory(bases()[1:]), T0 + DAY)
    assert A not in records
    records = usage.record(db, inventory(bases()), T0 + 2 * DAY)
    assert records[A] == UsageRecord(A, T0 + 2 * DAY, T0 + 2 * DAY, None, 0, 1 << 30,
                                     64 * KiB)


def test_an_empty_cache_empties_the_records(db):
    usage.record(db, inventory(bases(), {A: ["i-1"]}), T0)
    assert usage.record(db, inventory([]), T0 + 1) == {}


def test_recording_twice_in_one_connection_works(db):
    """The temporary table of seen names is per connection: reused, not re-created."""
    for n in range(5):
        records = usage.record(db, inventory(bases()[: 3 - n % 2]), T0 + n)
    assert set(records) == {A, B, C}


def test_a_lost_database_is_rebuilt_from_the_next_scan(tmp_path, caplog):
    path = tmp_path / "nk" / "state.db"
    db = open_state(str(path), write=True)
    usage.record(db, inventory(bases(), {A: ["i-1"]}), T0)
    db.close()
    for p in path.parent.iterdir():
        p.unlink()
    caplog.clear()
    db = open_state(str(path), write=True)
    try:
        assert usage.load(db) == {}
        records = usage.record(db, inventory(bases(), {B: ["i-2"]}), T0 + DAY)
    finally:
        db.close()
    assert {n: (r.first_seen, r.last_used) for n, r in records.items()} == {
        A: (T0 + DAY, None), B: (T0 + DAY, T0 + DAY), C: (T0 + DAY, None)}
    assert any(r.levelno == logging.WARNING and "No state database" in r.getMessage()
               for r in caplog.records)


def test_a_real_scan_counts_the_disks_on_each_base(db, tmp_path):
    """Through qcow2 chains: a disk directly on the base, and one over an intermediate."""
    instances = tmp_path / "instances"
    cache = instances / "_base"
    shared = make_raw(cache / A, 1 << 20, b"\xa5" * 65536)
    make_raw(cache / B, 1 << 20, b"\x5a" * 8192)
    make_qcow2(instances / "0a0a0a0a-0000-4000-8000-00000000000a" / "disk", shared)
    mid = make_qcow2(instances / "snapshots" / "mid.qcow2", shared)
    make_qcow2(instances / "0b0b0b0b-0000-4000-8000-00000000000b" / "disk", mid,
               backing_fmt="qcow2")
    inv = Scanner(str(instances), "_base").scan(now=T0)
    records = usage.record(db, inv, T0)
    assert records[A].users == 3  # two instance disks, and the intermediate qcow2 itself
    assert records[A].last_used == T0
    assert records[A].allocated == os.stat(shared).st_blocks * 512
    assert records[B].users == 0 and records[B].last_used is None
    assert records[B].size == 1 << 20
