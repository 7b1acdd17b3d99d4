"""The removal journal (novakeeper.state.journal): a row before each unlink, completed after
it; a crash between the two is visible and settled by the next pass from its scan.

The crash is real: `novakeeper cache clean --yes` runs in a child process that is
SIGKILLed while the unlink is held open (before it, or just after it), and the next
`cache plan` / `cache history` run as separate processes on the same state database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _cli_tree import make_base, run_cli
from _inventory_data import DAY, KiB, base_file, inventory, sha1
from novakeeper.cache.plan import Decision, Verdict
from novakeeper.cache.policy import PolicyConfig, decide
from novakeeper.state import journal, usage
from novakeeper.state.db import open_state
from novakeeper.state.journal import Entry, Journal
from novakeeper.units import human_bytes

NOW = 1_700_000_000.0
NAME = sha1("image-old")


@pytest.fixture
def db(tmp_path):
    state = open_state(str(tmp_path / "nk" / "state.db"), write=True)
    yield state
    state.close()


def removal(name: str = NAME, allocated: int = 64 * KiB, mtime: float = NOW - 3 * DAY,
            ino: int | None = None) -> Decision:
    """The plan's decision for an old unused base, as `decide` makes it."""
    inv = inventory([base_file(name, allocated, mtime, ino=ino)])
    [d] = decide(inv, PolicyConfig(), NOW).decisions
    assert d.verdict is Verdict.REMOVE
    return d


def rows(db) -> list[dict]:
    return [dict(r) for r in db.conn.execute("SELECT * FROM journal ORDER BY id")]


# -- begin and end ------------------------------------------------------------------------


def test_begin_writes_the_record_before_the_unlink(db):
    j = Journal(db, {"max_cache_size": 1 << 30, "remove_unused_base_images": True},
                run="run-1")
    d = removal()
    entry = j.begin(d, d.frees, NOW)
    [row] = rows(db)
    assert row["id"] == entry
    assert (row["run"], row["started"], row["finished"], row["outcome"]) == (
        "run-1", NOW, None, "started")
    assert (row["name"], row["path"], row["kind"], row["image_hash"]) == (
        NAME, d.path, "original", NAME)
    assert (row["dev"], row["ino"], row["bytes"]) == (d.dev, d.ino, 64 * KiB)
    assert (row["verdict"], row["reason"]) == ("remove", d.reason)
    assert json.loads(row["policy"]) == {"max_cache_size": 1 << 30,
                                         "remove_unused_base_images": True}
    assert [e.outcome for e in journal.unfinished(db)] == [Entry.STARTED]


def test_end_completes_it_and_forgets_the_usage_record(db):
    d = removal()
    usage.record(db, inventory([base_file(NAME, 64 * KiB, NOW - 3 * DAY)]), NOW)
    j = Journal(db, {})
    entry = j.begin(d, d.frees, NOW)
    j.end(entry, Entry.REMOVED, 60 * KiB, "", NOW + 1)
    [e] = journal.history(db)
    assert (e.outcome, e.finished, e.bytes, e.detail) == (Entry.REMOVED, NOW + 1, 60 * KiB, "")
    assert journal.unfinished(db) == []
    assert usage.load(db) == {}  # the base is gone; if it comes back, it is new


@pytest.mark.parametrize("outcome", [Entry.SKIPPED, Entry.FAILED])
def test_a_skipped_or_failed_removal_keeps_the_usage_record(db, outcome):
    d = removal()
    usage.record(db, inventory([base_file(NAME, 64 * KiB, NOW - 3 * DAY)]), NOW)
    j = Journal(db, {})
    j.end(j.begin(d, d.frees, NOW), outcome, 0, "now in use by /x/disk", NOW + 1)
    [e] = journal.history(db)
    assert (e.outcome, e.detail) == (outcome, "now in use by /x/disk")
    assert set(usage.load(db)) == {NAME}


def test_every_run_has_its_own_id(db):
    assert Journal(db, {}).run != Journal(db, {}).run


# -- history ------------------------------------------------------------------------------


def test_history_is_oldest_first_with_since_and_limit(db):
    j = Journal(db, {})
    for n in range(5):
        d = removal(sha1(f"image-{n}"))
        j.end(j.begin(d, d.frees, NOW + n * DAY), Entry.REMOVED, d.frees, "", NOW + n * DAY)
    names = [sha1(f"image-{n}") for n in range(5)]
    assert [e.name for e in journal.history(db)] == names
    assert [e.name for e in journal.history(db, since=NOW + 2 * DAY)] == names[2:]
    assert [e.name for e in journal.history(db, limit=2)] == names[3:]  # the newest two
    assert [e.name for e in journal.history(db, since=NOW + DAY, limit=10)] == names[1:]
    assert journal.history(db, since=NOW + 10 * DAY) == []


def test_history_survives_an_unreadable_policy(db):
    j = Journal(db, {})
    d = removal()
    j.begin(d, d.frees, NOW)
    with db.write() as conn:
        conn.execute("UPDATE journal SET policy = 'not json'")
    [e] = journal.history(db)
    assert e.policy == {}
    assert e.to_dict()["outcome"] == "started"


# -- reconcile ----------------------------------------------------------------------------


def test_reconcile_a_file_that_is_gone(db):
    d = removal()
    Journal(db, {}, run="crashed").begin(d, d.frees, NOW)
    [e] = journal.reconcile(db, inventory([]), NOW + 60)
    assert (e.outcome, e.finished, e.bytes, e.run) == (
        Entry.RECOVERED_REMOVED, NOW + 60, 64 * KiB, "crashed")
    assert "the file was gone at the next scan" in e.detail
    assert journal.history(db) == [e]


def test_reconcile_the_same_file_still_there(db):
    d = removal()
    Journal(db, {}).begin(d, d.frees, NOW)
    same = inventory([base_file(NAME, 64 * KiB, NOW - 3 * DAY)])
    [e] = journal.reconcile(db, same, NOW + 60)
    assert (e.outcome, e.bytes) == (Entry.RECOVERED_KEPT, 0)  # nothing was freed
    assert "the file was still there" in e.detail
    assert journal.history(db) == [e]


def test_reconcile_a_file_replaced_since_counts_as_removed(db):
    """Same name, another inode: the planned file went, nova downloaded it again."""
    d = removal()
    Journal(db, {}).begin(d, d.frees, NOW)
    again = inventory([base_file(NAME, 64 * KiB, NOW, ino=d.ino + 1)])
    [e] = journal.reconcile(db, again, NOW + 60)
    assert e.outcome is Entry.RECOVERED_REMOVED


def test_reconcile_settles_each_row_once_and_leaves_finished_rows_alone(db):
    j = Journal(db, {})
    done = removal(sha1("done"))
    j.end(j.begin(done, done.frees, NOW), Entry.REMOVED, done.frees, "", NOW)
    d = removal()
    j.begin(d, d.frees, NOW)
    assert len(journal.reconcile(db, inventory([]), NOW + 1)) == 1
    assert journal.reconcile(db, inventory([]), NOW + 2) == []
    assert [e.outcome for e in journal.history(db)] == [Entry.REMOVED,
                                                        Entry.RECOVERED_REMOVED]


# -- a real crash ---------------------------------------------------------------------------


CRASHING_CLEAN = textwrap.dedent("""
    import os, sys
    from novakeeper import cli

    target, when = sys.argv[1], sys.argv[2]
    real_unlink = os.unlink

    # the removal's decisive step
    def unlink(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) != target:
            return real_unlink(path, *args, **kwargs)
        if when == "after":
            real_unlink(path, *args, **kwargs)
        print("AT-UNLINK", flush=True)
        sys.stdin.read()  # held here until SIGKILL

    os.unlink = unlink
    cli.main(sys.argv[3:])
""")


@pytest.fixture
def node(tmp_path):
    """instances/_base with one unused base old enough for nova's age rule."""
    instances = tmp_path / "instances"
    (instances / "_base").mkdir(parents=True)
    make_base(str(instances / "_base" / NAME), size=1 << 20, age=3 * DAY)
    config = tmp_path / "nova.conf"
    config.write_text("[DEFAULT]\n")
    return ["--config-file", str(config), "--instances-path", str(instances)]


def crash_clean(cli_args: list[str], when: str) -> None:
    """`cache clean --yes` in a child, SIGKILLed with the unlink of NAME in progress."""
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CLEAN, NAME, when, *cli_args, "cache", "clean",
         "--yes"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        for line in child.stdout:  # the plan table, then our marker
            if line.strip() == "AT-UNLINK":
                break
        else:
            raise AssertionError(f"clean ended without reaching the unlink: "
                                 f"{child.stderr.read()}")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdin.close()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def history_json(cli_args: list[str], *extra: str) -> list[dict]:
    proc = run_cli(*cli_args, "cache", "history", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["entries"]


@pytest.mark.parametrize("when, outcome, gone", [
    ("before", "kept-after-crash", False),
    ("after", "removed-after-crash", True),
])
def test_sigkill_between_the_two_records_is_visible_then_settled(
        node, tmp_path, when, outcome, gone):
    base = tmp_path / "instances" / "_base" / NAME
    allocated = os.stat(base).st_blocks * 512
    crash_clean(node, when)
    assert base.exists() is not gone

    # visible: the row the crashed run left
    [entry] = history_json(node)
    assert (entry["name"], entry["outcome"], entry["finished"]) == (NAME, "started", None)
    assert entry["verdict"] == "remove" and entry["bytes"] == allocated
    assert entry["started"] <= time.time()

    # the next pass (a plan is enough) settles it from its scan, and says so
    proc = run_cli(*node, "cache", "plan")
    assert proc.returncode == 0, proc.stderr
    assert (f"WARNING novakeeper.cache [-] Journal: removal of {base} by run "
            f"{entry['run']} was interrupted; settled as {outcome}") in proc.stderr
    [settled] = history_json(node)
    assert settled["id"] == entry["id"]
    assert settled["outcome"] == outcome
    assert settled["finished"] is not None
    # unlinked before the crash: its bytes count as freed; kept: nothing freed
    assert settled["bytes"] == (allocated if gone else 0)
    text = run_cli(*node, "cache", "history")
    assert outcome in text.stdout
    assert text.stdout.rstrip().endswith(
        f"1 entries; {human_bytes(allocated) if gone else '0 B'} freed")
    if gone:  # unlinked once, never renamed aside: nothing is left for the next clean
        assert run_cli(*node, "cache", "clean", "--yes").returncode == 0
        rows = history_json(node)
        assert [(e["outcome"], e["bytes"]) for e in rows] == [(outcome, allocated)]


def test_after_a_crash_before_the_unlink_the_next_clean_removes_the_file(node, tmp_path):
    base = tmp_path / "instances" / "_base" / NAME
    crash_clean(node, "before")
    proc = run_cli(*node, "cache", "clean", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not base.exists()
    assert [e["outcome"] for e in history_json(node)] == ["kept-after-crash", "removed"]
