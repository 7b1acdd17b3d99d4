"""The state database: one SQLite file that outlives runs and restarts.

It holds what a scan cannot see: when a base was last in use (access times lie on noatime
mounts), the pins an operator set, and the removal journal. It is a cache of
observations, never a source of truth about the disk, so a lost or corrupt file is moved
aside and rebuilt from the next scan with a warning. WAL mode lets readers run while one
writer writes; every write is one short IMMEDIATE transaction that waits for the other
writer instead of failing.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from novakeeper.errors import ExitCode, NovakeeperError

LOG = logging.getLogger("novakeeper.cache")

DEFAULT_PATH = "/var/lib/novakeeper/state.db"
BUSY_TIMEOUT_SECONDS = 30.0

# Each entry upgrades the schema by one version; never edit a released one, append.
MIGRATIONS: tuple[str, ...] = (
    # 1: usage records, pins, removal journal
    """
    CREATE TABLE bases (
        name        TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        image_hash  TEXT,
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL,
        last_used   REAL,
        users       INTEGER NOT NULL DEFAULT 0,
        size        INTEGER NOT NULL DEFAULT 0,
        allocated   INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE pins (
        kind     TEXT NOT NULL CHECK (kind IN ('image', 'file')),
        value    TEXT NOT NULL,
        hash     TEXT,
        created  REAL NOT NULL,
        note     TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (kind, value)
    );
    CREATE TABLE journal (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        run         TEXT NOT NULL,
        started     REAL NOT NULL,
        finished    REAL,
        name        TEXT NOT NULL,
        path        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        image_hash  TEXT,
        dev         INTEGER NOT NULL,
        ino         INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        verdict     TEXT NOT NULL,
        reason      TEXT NOT NULL,
        policy      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX journal_started ON journal (started);
    CREATE INDEX journal_outcome ON journal (outcome);
    """,
    # 2: integrity (cache verify): checksums of base files, the quarantine, known image ids
    """
    CREATE TABLE checksums (
        name        TEXT NOT NULL,
        algo        TEXT NOT NULL,
        dev         INTEGER NOT NULL,
        ino         INTEGER NOT NULL,
        size        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        ctime_ns    INTEGER NOT NULL,
        value       TEXT NOT NULL,
        verified_at REAL NOT NULL,
        source      TEXT NOT NULL,
        status      TEXT NOT NULL,
        observed    TEXT,
        detail      TEXT NOT NULL DEFAULT '',
        users       TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (name, algo)
    );
    CREATE TABLE quarantine (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started     REAL NOT NULL,
        finished    REAL,
        name        TEXT NOT NULL,
        path        TEXT NOT NULL,
        target      TEXT NOT NULL,
        dev         INTEGER NOT NULL,
        ino         INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE image_ids (
        hash        TEXT PRIMARY KEY,
        image_id    TEXT NOT NULL,
        source      TEXT NOT NULL,
        learned_at  REAL NOT NULL
    );
    """,
    # 3: Glance's word on each image (images/catalog.py), operators' releases of last
    # copies, `cache fetch` outcomes
    """
    CREATE TABLE glance_images (
        hash             TEXT PRIMARY KEY,
        image_id         TEXT NOT NULL,
        name             TEXT,
        status           TEXT NOT NULL,
        visibility       TEXT,
        disk_format      TEXT,
        container_format TEXT,
        size             INTEGER,
        virtual_size     INTEGER,
        checksum         TEXT,
        hash_algo        TEXT,
        hash_value       TEXT,
        checked_at       REAL NOT NULL,
        gone_since       REAL
    );
    CREATE TABLE glance_refresh (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        at          REAL NOT NULL,
        ok          INTEGER NOT NULL,
        sees_all    INTEGER NOT NULL DEFAULT 0,
        listed      INTEGER NOT NULL DEFAULT 0,
        error       TEXT
    );
    CREATE TABLE releases (
        hash        TEXT PRIMARY KEY,
        image_id    TEXT NOT NULL,
        released_at REAL NOT NULL,
        note        TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE fetches (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          REAL NOT NULL,
        image_id    TEXT NOT NULL,
        name        TEXT NOT NULL,
        bytes       INTEGER NOT NULL DEFAULT 0,
        outcome     TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StateDB:
    """An open state database; `writable` tells whether this run may record."""

    def __init__(self, path: str, conn: sqlite3.Connection, writable: bool) -> None:
        self.path = path
        self.conn = conn
        self.writable = writable

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short transaction; waits for another writer rather than failing."""
        if not self.writable:
            raise sqlite3.OperationalError(f"{self.path} is open read-only")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])


def _connect(path: str, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    if readonly:
        uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                               isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def _prepare(conn: sqlite3.Connection, path: str, readonly: bool) -> None:
    """Check the file is a database we understand and bring its schema up to date.
    Raises sqlite3.DatabaseError for a file that is not a (sound) database."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise NovakeeperError(
            ExitCode.CONFIG,
            f"state database {path} has schema {version}, newer than this novakeeper "
            f"knows ({SCHEMA_VERSION}); upgrade novakeeper or set [novakeeper] state_path")
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise sqlite3.DatabaseError(f"integrity check failed: {check}")
    if readonly:
        if version < SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema {version} needs migrating; cannot read-only")
        return
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the journal's 'before unlink' record must be on disk before the unlink.
    conn.execute("PRAGMA synchronous=FULL")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])  # another run?
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            LOG.info("State database %s: schema migrated to version %d", path, number + 1)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_file(path: str) -> None:
    """Create the folder (0750) and an empty file (0640): the database holds no secrets,
    but nothing outside the nova group needs it."""
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, mode=0o750, exist_ok=True)
    except FileExistsError:  # a file where the folder should be (not another run's file)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder) from None
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o640)
    os.close(fd)


def _move_aside(path: str, why: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    LOG.warning("State database %s is unusable (%s): moved to %s and rebuilt; last-used "
                "times restart from this scan (unused bases are ordered by mtime until then)",
                path, why, target)


def open_state(path: str, write: bool) -> StateDB:
    """Open (creating or rebuilding as needed) the state database.

    write=True: the run must be able to record (clean, pin); any failure is an error.
    write=False: record if possible, otherwise open read-only; raises NovakeeperError only
    when the database cannot even be read, and the caller decides whether to go on.
    """
    try:
        return _open(path, readonly=False)
    except PermissionError as exc:
        if write:
            raise NovakeeperError(
                ExitCode.PERMISSION, f"state database {path}: permission denied "
                f"({exc.strerror}); run as the nova user or set [novakeeper] state_path"
            ) from None
    except sqlite3.OperationalError as exc:
        if write or ("readonly" not in str(exc) and "unable to open" not in str(exc)):
            raise NovakeeperError(ExitCode.PERMISSION,
                                  f"state database {path}: {exc}") from None
    except OSError as exc:
        if write:
            raise NovakeeperError(ExitCode.PATH,
                                  f"state database {path}: {exc.strerror}") from None
    # read-only fallback for plans run by an unprivileged operator
    try:
        return _open(path, readonly=True)
    except (OSError, sqlite3.Error) as exc:
        raise NovakeeperError(ExitCode.PERMISSION,
                              f"state database {path}: cannot read it: {exc}") from None


def _open(path: str, readonly: bool) -> StateDB:
    if not readonly and not os.path.exists(path):
        if os.path.lexists(path):
            raise NovakeeperError(ExitCode.PATH, f"state database {path} is a dangling link")
        # We make the folder on first use. A folder that is already there either lost its
        # database or was made for us (systemd's StateDirectory=, a package): we cannot
        # tell, and a loss must never pass silently.
        lost = os.path.isdir(os.path.dirname(path) or ".")
        try:
            _create_file(path)
        except FileExistsError:
            pass  # another run created it first
        else:
            if lost:
                LOG.warning("No state database at %s: started a new one (first run, or the "
                            "database was lost); last-used times restart from this scan "
                            "(until then unused bases are ordered by mtime)", path)
            else:
                LOG.info("State database %s created", path)
    if os.path.isdir(path):
        raise NovakeeperError(ExitCode.PATH, f"state database {path} is a directory")
    if not readonly and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, "permission denied", path)
    conn = _connect(path, readonly)
    try:
        _prepare(conn, path, readonly)
    except NovakeeperError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if readonly and isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
            # A WAL database with no -shm file (no connection has it open) in a folder we
            # cannot write: SQLite can only read it as immutable.
            conn = _connect(path, readonly, immutable=True)
            try:
                _prepare(conn, path, readonly)
            except BaseException:
                conn.close()
                raise
            return StateDB(path, conn, writable=False)
        if readonly or (isinstance(exc, sqlite3.OperationalError) and (
                "locked" in str(exc) or "readonly" in str(exc))):
            raise
        _move_aside(path, str(exc))
        _create_file(path)
        conn = _connect(path, readonly)
        _prepare(conn, path, readonly)
    return StateDB(path, conn, writable=not readonly)
