"""The state database file itself (novakeeper.state.db): created with the right
permissions, schema versioned and migrated, a newer schema refused in one line, a corrupt
or lost file moved aside / started anew with a warning (never a crash), a read-only
fallback for unprivileged plans, and several runs writing at once.

Real SQLite files in tmp; the read-only cases run in a child process whose permission
bits really apply (tests run as root: see _cli_tree.permission_prefix).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _cli_tree import permission_prefix
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.state import db as db_mod
from novakeeper.state.db import MIGRATIONS, SCHEMA_VERSION, open_state

TESTS = Path(__file__).resolve().parent.parent
TABLES = {"bases", "pins", "journal", "checksums", "quarantine", "image_ids",
          "glance_images", "glance_refresh", "releases", "fetches"}


@pytest.fixture
def permissive_umask():
    """umask 0: the modes below must come from novakeeper, not from the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name NOT LIKE 'sqlite_%'").fetchall()
    return {r[0] for r in rows}


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def execute(path: Path, *statements: str) -> None:
    """Open (creating) the database, run `statements` in one transaction, close it."""
    db = open_state(str(path), write=True)
    try:
        with db.write() as conn:
            for sql in statements:
                conn.execute(sql)
    finally:
        db.close()


def messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "novakeeper.cache" and r.levelno == level]


# -- creation ---------------------------------------------------------------------------


def test_created_on_first_use_folder_0750_file_0640(tmp_path, permissive_umask, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "lib" / "novakeeper" / "state.db"
    db = open_state(str(path), write=True)
    try:
        assert db.writable
        assert db.path == str(path)
        assert db.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with db.write() as conn:  # the first write creates the WAL files
            conn.execute("INSERT INTO pins (kind, value, created) VALUES ('file', 'x', 0)")
        assert mode(path.parent) == 0o750
        assert mode(path) == 0o640
        for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode
            assert mode(Path(f"{path}{suffix}")) == 0o640
    finally:
        db.close()
    assert tables(path) >= TABLES
    assert f"State database {path} created" in messages(caplog, logging.INFO)
    assert messages(caplog, logging.WARNING) == []  # a first use is not a loss


def test_reopening_keeps_data_and_says_nothing(tmp_path, caplog):
    path = tmp_path / "nk" / "state.db"
    execute(path, "INSERT INTO pins (kind, value, created) VALUES ('image', 'abc', 1)")
    caplog.clear()
    caplog.set_level(logging.INFO)
    db = open_state(str(path), write=True)
    try:
        assert db.conn.execute("SELECT value FROM pins").fetchall()[0][0] == "abc"
    finally:
        db.close()
    assert messages(caplog, logging.INFO) == messages(caplog, logging.WARNING) == []


def test_write_outside_a_writable_database_is_refused_by_the_transaction_helper(tmp_path):
    path = tmp_path / "nk" / "state.db"
    open_state(str(path), write=True).close()
    db = db_mod.StateDB(str(path), db_mod._connect(str(path), readonly=True), writable=False)
    try:
        with pytest.raises(sqlite3.OperationalError, match="read-only"), db.write():
            pass
    finally:
        db.close()


def test_a_failed_transaction_rolls_back(tmp_path):
    db = open_state(str(tmp_path / "nk" / "state.db"), write=True)
    try:
        with pytest.raises(RuntimeError), db.write() as conn:
            conn.execute("INSERT INTO pins (kind, value, created) VALUES ('file', 'x', 0)")
            raise RuntimeError("boom")
        assert db.conn.execute("SELECT count(*) FROM pins").fetchone()[0] == 0
        assert not db.conn.in_transaction
    finally:
        db.close()


# -- schema versions --------------------------------------------------------------------


def test_version_0_database_is_migrated(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:  # an empty database at user_version 0
        conn.execute("CREATE TABLE operator_notes (text TEXT)")
        conn.execute("INSERT INTO operator_notes VALUES ('kept')")
    assert user_version(path) == 0
    open_state(str(path), write=True).close()
    assert user_version(path) == SCHEMA_VERSION
    assert tables(path) == TABLES | {"operator_notes"}  # nothing else touched
    assert (f"State database {path}: schema migrated to version 1"
            in messages(caplog, logging.INFO))
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_an_appended_migration_upgrades_an_older_database_keeping_its_rows(
        tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    execute(path, "INSERT INTO bases (name, kind, first_seen, last_seen) "
                  "VALUES ('n', 'original', 1, 2)")
    v2 = "ALTER TABLE bases ADD COLUMN label TEXT NOT NULL DEFAULT 'v2';" \
         "CREATE TABLE extra (x INTEGER)"
    monkeypatch.setattr(db_mod, "MIGRATIONS", (*MIGRATIONS, v2))
    monkeypatch.setattr(db_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    db = open_state(str(path), write=True)
    try:
        assert db.schema_version() == SCHEMA_VERSION + 1
        row = db.conn.execute("SELECT name, first_seen, label FROM bases").fetchone()
        assert tuple(row) == ("n", 1.0, "v2")
    finally:
        db.close()
    assert "extra" in tables(path)


@pytest.mark.parametrize("write", [True, False])
def test_a_newer_schema_is_a_one_line_error_and_the_file_is_left_alone(tmp_path, write):
    path = tmp_path / "state.db"
    open_state(str(path), write=True).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(NovakeeperError) as err:
        open_state(str(path), write=write)
    assert err.value.code == ExitCode.CONFIG
    assert err.value.message == (
        f"state database {path} has schema {SCHEMA_VERSION + 1}, newer than this "
        f"novakeeper knows ({SCHEMA_VERSION}); upgrade novakeeper or set [novakeeper] "
        "state_path")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []


# -- corrupt or lost ----------------------------------------------------------------------


CORRUPT_NAME = re.compile(r"state\.db\.corrupt-\d{8}T\d{6}$")


def test_garbage_file_is_moved_aside_and_rebuilt_with_a_warning(tmp_path, caplog):
    path = tmp_path / "state.db"
    garbage = b"this is not a database, it is an operator's notes\n" * 200
    path.write_bytes(garbage)
    caplog.clear()
    db = open_state(str(path), write=True)
    try:
        assert db.writable and db.schema_version() == SCHEMA_VERSION
        assert db.conn.execute("SELECT count(*) FROM bases").fetchone()[0] == 0
    finally:
        db.close()
    [aside] = [p for p in tmp_path.iterdir() if CORRUPT_NAME.match(p.name)]
    assert aside.read_bytes() == garbage  # kept for a post-mortem, never deleted
    [warning] = messages(caplog, logging.WARNING)
    assert warning.startswith(f"State database {path} is unusable (")
    assert f"moved to {aside} and rebuilt" in warning
    assert tables(path) >= TABLES


def test_damaged_pages_fail_the_integrity_check_and_are_rebuilt(tmp_path, caplog):
    path = tmp_path / "state.db"
    execute(path, *(f"INSERT INTO pins (kind, value, created, note) "
                    f"VALUES ('file', 'pattern-{i:05d}', {i}, '{'n' * 80}')"
                    for i in range(3000)))
    caplog.clear()
    assert path.stat().st_size > 8 * 4096
    with open(path, "r+b") as f:  # the header stays valid; the pages after it do not
        f.seek(3 * 4096)
        f.write(b"\xff" * (4 * 4096))
    db = open_state(str(path), write=True)
    try:
        assert db.conn.execute("SELECT count(*) FROM pins").fetchone()[0] == 0
    finally:
        db.close()
    assert len([p for p in tmp_path.iterdir() if CORRUPT_NAME.match(p.name)]) == 1
    [warning] = messages(caplog, logging.WARNING)
    assert "is unusable" in warning


def test_a_lost_database_is_started_anew_with_a_warning(tmp_path, caplog):
    path = tmp_path / "nk" / "state.db"
    execute(path, "INSERT INTO pins (kind, value, created) VALUES ('image', 'abc', 1)")
    for p in path.parent.iterdir():
        p.unlink()
    caplog.clear()
    db = open_state(str(path), write=True)
    try:
        assert db.conn.execute("SELECT count(*) FROM pins").fetchone()[0] == 0
    finally:
        db.close()
    [warning] = messages(caplog, logging.WARNING)
    assert warning.startswith(f"No state database at {path}: started a new one")


# -- not a usable path ------------------------------------------------------------------


@pytest.mark.parametrize("write", [True, False])
def test_a_directory_is_a_path_error(tmp_path, write):
    path = tmp_path / "state.db"
    path.mkdir()
    with pytest.raises(NovakeeperError) as err:
        open_state(str(path), write=write)
    assert err.value.code == ExitCode.PATH
    assert err.value.message == f"state database {path} is a directory"


def test_a_dangling_link_is_a_path_error(tmp_path):
    path = tmp_path / "state.db"
    path.symlink_to(tmp_path / "gone" / "state.db")
    with pytest.raises(NovakeeperError) as err:
        open_state(str(path), write=True)
    assert err.value.code == ExitCode.PATH
    assert "dangling link" in err.value.message
    assert not (tmp_path / "gone").exists()


def test_a_path_inside_a_regular_file_is_a_path_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    path = blocker / "state.db"
    with pytest.raises(NovakeeperError) as err:
        open_state(str(path), write=True)
    assert err.value.code == ExitCode.PATH
    assert err.value.message == f"state database {path}: Not a directory"
    with pytest.raises(NovakeeperError) as err:
        open_state(str(path), write=False)
    assert "\n" not in err.value.message
    assert blocker.read_text() == "x"


# -- read-only fallback (a child process that permission bits apply to) -----------------


def unprivileged() -> tuple[str, ...]:
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("running as root without a working setpriv: root ignores permission "
                    "bits, so a read-only database cannot be produced honestly")
    return prefix


CHILD_OPEN = textwrap.dedent("""
    import sys
    from novakeeper.errors import NovakeeperError
    from novakeeper.state.db import open_state
    try:
        db = open_state(sys.argv[1], write=sys.argv[2] == "write")
    except NovakeeperError as exc:
        print(f"error {int(exc.code)} {exc.message}")
        raise SystemExit(0)
    rows = db.conn.execute("SELECT value FROM pins ORDER BY value").fetchall()
    print("writable" if db.writable else "read-only", ",".join(r[0] for r in rows))
""")


def open_as_unprivileged(path: Path, write: bool) -> str:
    proc = subprocess.run([*unprivileged(), sys.executable, "-c", CHILD_OPEN, str(path),
                           "write" if write else "read"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def read_only_db(tmp_path):
    """A database with two pins, its file mode 0440 (read only, even for its owner)."""
    path = tmp_path / "nk" / "state.db"
    execute(path, "INSERT INTO pins (kind, value, created) VALUES ('file', 'a*', 1)",
            "INSERT INTO pins (kind, value, created) VALUES ('file', 'b*', 2)")
    assert not Path(f"{path}-wal").exists()  # checkpointed and removed at close
    path.chmod(0o440)
    yield path
    path.parent.chmod(0o750)
    path.chmod(0o640)


def test_read_only_file_plans_read_it_and_clean_is_refused(read_only_db):
    assert open_as_unprivileged(read_only_db, write=False) == "read-only a*,b*"
    assert open_as_unprivileged(read_only_db, write=True) == (
        f"error {int(ExitCode.PERMISSION)} state database {read_only_db}: permission denied "
        "(permission denied); run as the nova user or set [novakeeper] state_path")


def test_read_only_file_in_a_read_only_folder_can_still_be_read(read_only_db):
    """An operator in nova's group running `cache plan`: the folder (0750) and the file
    (0640) are readable, neither is writable, and no -shm file exists to share."""
    read_only_db.parent.chmod(0o550)
    assert open_as_unprivileged(read_only_db, write=False) == "read-only a*,b*"
    assert not Path(f"{read_only_db}-shm").exists()


def test_unreadable_database_is_an_error_even_for_a_plan(read_only_db):
    read_only_db.chmod(0)
    out = open_as_unprivileged(read_only_db, write=False)
    assert out.startswith(f"error {int(ExitCode.PERMISSION)} state database {read_only_db}: "
                          "cannot read it: ")


# -- several runs at once -----------------------------------------------------------------


CHILD_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from _inventory_data import base_file, inventory, sha1
    from novakeeper.cache.plan import Decision, Verdict
    from novakeeper.state import journal, pins, usage
    from novakeeper.state.db import open_state

    path, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[4])
    bases = [base_file(sha1(f"image-{i}"), 4096 * (i + 1), 1000.0) for i in range(20)]
    inv = inventory(bases, {bases[0].name: ["i-0"], bases[1].name: ["i-1", "i-2"]})
    sys.stdin.read(1)  # the start gate: every child waits until all are running
    db = open_state(path, write=True)  # racing each other to create the file, too
    j = journal.Journal(db, {"max_cache_size": 1}, run=me)
    for n in range(rounds):
        usage.record(db, inv, now=float(n))
        d = Decision(name=f"{me}-{n}", path=f"/x/{me}-{n}", kind=bases[2].kind,
                     verdict=Verdict.EVICT, reason="test", age=0.0, min_age=None, size=1,
                     allocated=1, frees=1)
        entry = j.begin(d, 1, float(n))
        j.end(entry, journal.Entry.REMOVED, 1, "", float(n))
        pins.add(db, "file", f"{me}-{n}", "", float(n))
        journal.history(db, limit=5)  # a reader among the writers
        with db.write() as conn:  # read, then write: a shared counter, never a lost update
            last = conn.execute("SELECT coalesce(max(created), 0) FROM pins "
                                "WHERE value LIKE 'counter-%'").fetchone()[0]
            conn.execute("INSERT INTO pins (kind, value, created) VALUES ('image', ?, ?)",
                         (f"counter-{int(last) + 1}", last + 1))
    db.close()
    print("done")
""")


def test_concurrent_runs_never_see_database_is_locked_and_lose_nothing(tmp_path):
    path = tmp_path / "nk" / "state.db"  # does not exist yet: creation races too
    runs, rounds = 3, 60
    children = [subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(path), f"run{k}",
                                  str(TESTS), str(rounds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for k in range(runs)]
    for child in children:  # open the gate once every child is started
        child.stdin.write("go")
        child.stdin.flush()
    results = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err
        assert out.strip() == "done"
        assert "locked" not in err and "Traceback" not in err
    db = open_state(str(path), write=False)
    try:
        rows = db.conn.execute("SELECT run, name, outcome FROM journal").fetchall()
        assert len(rows) == runs * rounds
        assert {r["outcome"] for r in rows} == {"removed"}
        assert {r["name"] for r in rows} == {f"run{k}-{n}" for k in range(runs)
                                             for n in range(rounds)}
        values = [r[0] for r in db.conn.execute("SELECT value FROM pins")]
        assert len([v for v in values if v.startswith("run")]) == runs * rounds
        assert sorted(v for v in values if v.startswith("counter-")) == sorted(
            f"counter-{n}" for n in range(1, runs * rounds + 1))
        used = dict(db.conn.execute("SELECT name, users FROM bases").fetchall())
        assert len(used) == 20
        assert sorted(used.values()) == [0] * 18 + [1, 2]
        assert db.schema_version() == SCHEMA_VERSION
    finally:
        db.close()
    assert not [p for p in path.parent.iterdir() if "corrupt" in p.name]
