"""The SQLite store: schema, migrations and every SQL statement pqlsdk runs.

One connection per Client, guarded by a lock; WAL, ``synchronous=NORMAL`` and a busy
timeout; every write is one short ``BEGIN IMMEDIATE`` transaction (:meth:`Store.write`),
so many processes can share one file without "database is locked" from a deferred
read-then-write. Times are stored as integer microseconds since the Unix epoch (UTC).

    >>> store = Store("pql.db")
    >>> with store.write() as tx:
    ...     tx.insert_event(None, "u1", None, "signup", 1_700_000_000_000_000, "{}")
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlite_utils

from . import ids
from .errors import PqlError
from .rules import EventCondition
from .stages import FIRST_STAGE, STAGES

_TABLES = {"user": ("users", "user_id"), "account": ("accounts", "account_id")}
#: Larger than any timestamp: stands for "never" inside min().
_NEVER = 2**62
#: A trait name a JSON path spells as it is, in every SQLite version.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")


def _v1(db: sqlite_utils.Database) -> None:
    db.table("events").create(
        {
            "id": int,
            "message_id": str,
            "user_id": str,
            "account_id": str,
            "event": str,
            "ts": int,
            "properties": str,
        },
        pk="id",
        not_null={"user_id", "event", "ts", "properties"},
    )
    # Threshold checks walk (subject, event, ts) and stop at the bound (LIMIT).
    db.execute("CREATE INDEX events_user ON events(user_id, event, ts)")
    db.execute(
        "CREATE INDEX events_account ON events(account_id, event, ts) "
        "WHERE account_id IS NOT NULL"
    )
    db.execute(
        "CREATE UNIQUE INDEX events_message_id ON events(message_id) "
        "WHERE message_id IS NOT NULL"
    )
    db.table("users").create(
        {"user_id": str, "account_id": str, "traits": str, "first_seen": int},
        pk="user_id",
        not_null={"traits", "first_seen"},
    )
    db.table("accounts").create(
        {"account_id": str, "traits": str, "first_seen": int},
        pk="account_id",
        not_null={"traits", "first_seen"},
    )
    db.execute(
        """CREATE TABLE qualifications (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            stage TEXT NOT NULL,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            account_id TEXT,
            qualified_at INTEGER NOT NULL,
            evidence TEXT NOT NULL,
            UNIQUE (subject_type, subject_id, rule)
        )"""
    )
    db.execute("CREATE INDEX qualifications_time ON qualifications(qualified_at)")


def _v2(db: sqlite_utils.Database) -> None:
    """The durable outbox: one row per (message, destination), deleted once acknowledged."""
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            destination TEXT NOT NULL,
            kind TEXT NOT NULL,
            user_id TEXT,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            lease_until INTEGER,
            last_error TEXT,
            created_at INTEGER NOT NULL
        )"""
    )
    # No index: acknowledged rows are deleted, so a claim's scan in id order finds its rows
    # at the head of a short table, and every track() that writes a row saves a page write.


def _v3(db: sqlite_utils.Database) -> None:
    """The lifecycle: a stage per subject, its history, and rounds.

    A manual move to ``unqualified`` or ``disqualified`` starts a new round: qualifications
    are unique per (subject, rule, round), and a round's rules count only events from its
    start, so a rejected lead qualifies again on what it does afterwards.
    """
    for table in ("users", "accounts"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN stage TEXT NOT NULL DEFAULT 'lead'")
        db.execute(f"ALTER TABLE {table} ADD COLUMN round INTEGER NOT NULL DEFAULT 0")
        db.execute(f"ALTER TABLE {table} ADD COLUMN round_since INTEGER")
        # when the subject first entered each ordered stage: the funnel reads these
        for stage in STAGES:
            db.execute(f"ALTER TABLE {table} ADD COLUMN first_{stage} INTEGER")
    db.execute("ALTER TABLE qualifications RENAME TO qualifications_v2")
    db.execute(
        """CREATE TABLE qualifications (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            stage TEXT NOT NULL,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            account_id TEXT,
            qualified_at INTEGER NOT NULL,
            evidence TEXT NOT NULL,
            round INTEGER NOT NULL DEFAULT 0,
            UNIQUE (subject_type, subject_id, round, rule)
        )"""
    )
    db.execute("INSERT INTO qualifications SELECT *, 0 FROM qualifications_v2")
    db.execute("DROP TABLE qualifications_v2")
    db.execute("CREATE INDEX qualifications_time ON qualifications(qualified_at)")
    db.execute(
        """CREATE TABLE stage_changes (
            id INTEGER PRIMARY KEY,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            from_stage TEXT,
            to_stage TEXT NOT NULL,
            at INTEGER NOT NULL,
            source TEXT NOT NULL,
            reason TEXT
        )"""
    )
    db.execute("CREATE INDEX stage_changes_subject ON stage_changes(subject_type, subject_id, "
               "to_stage, at)")
    # what release 2 knew: every subject entered 'lead' when first seen, and its
    # qualifications moved it forward
    for subject_type, table, key in (("user", "users", "user_id"),
                                     ("account", "accounts", "account_id")):
        db.execute(
            f"INSERT INTO stage_changes (subject_type, subject_id, from_stage, to_stage, at, "
            f"source) SELECT '{subject_type}', {key}, NULL, 'lead', first_seen, 'first_seen' "
            f"FROM {table}"
        )
    rows = db.execute(
        "SELECT subject_type, subject_id, rule, stage, qualified_at FROM qualifications "
        "ORDER BY qualified_at, rowid"
    ).fetchall()
    current: dict[tuple[str, str], str] = {}
    for subject_type, subject_id, rule, stage, at in rows:
        before = current.get((subject_type, subject_id), FIRST_STAGE)
        if STAGES.index(stage) > STAGES.index(before):
            current[(subject_type, subject_id)] = stage
            db.execute(
                "INSERT INTO stage_changes (subject_type, subject_id, from_stage, to_stage, "
                "at, source) VALUES (?, ?, ?, ?, ?, ?)",
                (subject_type, subject_id, before, stage, at, f"rule:{rule}"),
            )
    for (subject_type, subject_id), stage in current.items():
        table, key = _TABLES[subject_type]
        db.execute(f"UPDATE {table} SET stage = ? WHERE {key} = ?", (stage, subject_id))
    for subject_type, (table, key) in _TABLES.items():
        for stage in STAGES:
            db.execute(
                f"UPDATE {table} SET first_{stage} = (SELECT min(at) FROM stage_changes "
                f"WHERE subject_type = '{subject_type}' AND subject_id = {table}.{key} "
                f"AND to_stage = '{stage}')"
            )


def _v4(db: sqlite_utils.Database) -> None:
    """Import: messages staged for replay in time order, and the ids of those replayed
    (tracks are known by their events' message ids)."""
    db.execute(
        "CREATE TABLE import_staging (message_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, "
        "line_no INTEGER NOT NULL, kind TEXT NOT NULL, user_id TEXT NOT NULL, "
        "account_id TEXT, event TEXT, data TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX import_staging_order ON import_staging(ts, line_no)")
    db.execute("CREATE TABLE import_done (message_id TEXT PRIMARY KEY) WITHOUT ROWID")


def _v5_unambiguous_ids(db: sqlite_utils.Database) -> None:
    """Qualification ids from an unambiguous encoding (:mod:`pqlsdk.ids`): a stored
    qualification whose rule or subject holds ``\x1f`` takes its JSON-form id, so that its
    legacy id no longer blocks the different qualification it collided with. Every other id
    stays as it was; pending deliveries follow their qualification's new id."""
    rows = db.execute(
        "SELECT id, rule, subject_type, subject_id, round FROM qualifications "
        "WHERE instr(rule, char(31)) OR instr(subject_type, char(31)) "
        "OR instr(subject_id, char(31))"
    ).fetchall()
    for old, rule, subject_type, subject_id, round_ in rows:
        new = ids.json_form_id(rule, subject_type, subject_id, round_)
        db.execute("UPDATE qualifications SET id = ? WHERE id = ?", (new, old))
        db.execute("UPDATE outbox SET payload = replace(payload, ?1, ?2) "
                   "WHERE instr(payload, ?1)", (old, new))


#: Forward migrations; the file's ``PRAGMA user_version`` is how many have been applied.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4,
                                                             _v5_unambiguous_ids]


_MICROSECOND = timedelta(microseconds=1)


#: Connections inherited across fork(): kept alive so that they are never finalized.
_INHERITED: list[sqlite_utils.Database] = []


class SchemaTooNew(PqlError):
    """The database was written by a newer pqlsdk than this one."""


class StoreClosed(PqlError):
    """The Client (and its connection) was closed."""


def connect(database: str | os.PathLike[str] | sqlite_utils.Database, busy_timeout: float
            ) -> sqlite_utils.Database:
    """Open ``database`` (a path, ``":memory:"`` or a ``sqlite_utils.Database``) for pqlsdk.

    For a ``sqlite_utils.Database`` on a file, pqlsdk opens its own connection to that file:
    the delivery thread needs one it may use, and the application's stays its own. An
    in-memory ``Database`` can only be shared, so its connection is used as it is.
    """
    if isinstance(database, sqlite_utils.Database):
        files = [row[2] for row in database.conn.execute("PRAGMA database_list")
                 if row[1] == "main" and row[2]]
        if files:
            return connect(files[0], busy_timeout)
        db = database
        db.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    else:
        conn = sqlite3.connect(
            os.fspath(database),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        db = sqlite_utils.Database(conn, execute_plugins=False)
    try:
        db.conn.execute("SELECT power(2, 1)")
    except sqlite3.OperationalError:  # SQLite built without its math functions
        db.conn.create_function("power", 2, math.pow, deterministic=True)
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] != "memory":
        db.conn.execute("PRAGMA journal_mode = WAL")
    db.conn.execute("PRAGMA synchronous = NORMAL")
    return db


def migrate(db: sqlite_utils.Database) -> int:
    """Apply the migrations this file lacks, each in its own IMMEDIATE transaction."""
    while True:
        with _immediate(db.conn):
            version = db.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"the database has schema version {version}, newer than this pqlsdk "
                    f"understands ({len(MIGRATIONS)}); upgrade pqlsdk to open it"
                )
            if version == len(MIGRATIONS):
                return version
            MIGRATIONS[version](db)
            db.conn.execute(f"PRAGMA user_version = {version + 1}")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Store:
    """pqlsdk's SQLite file. Use :meth:`write` for changes and :meth:`read` for queries."""

    def __init__(
        self,
        database: str | os.PathLike[str] | sqlite_utils.Database = "pql.db",
        *,
        busy_timeout: float = 30.0,
    ) -> None:
        self.busy_timeout = busy_timeout
        self.closed = False
        self.db = connect(database, busy_timeout)
        #: The database file, or None for an in-memory database.
        self.path = self._file()
        self.lock = threading.RLock()
        migrate(self.db)
        self._tx = Transaction(self.db.conn)
        self._write = _Write(self)

    def _file(self) -> str | None:
        rows = self.db.conn.execute("PRAGMA database_list").fetchall()
        return next((row[2] or None for row in rows if row[1] == "main"), None)

    def reopen_after_fork(self) -> None:
        """In a forked child: leave the parent's connection alone and open a new one.

        A SQLite connection must not cross fork(); closing the inherited one could disturb
        the parent's locks, so it is kept referenced and never used again. An in-memory
        database is the child's own copy and is kept.
        """
        self.lock = threading.RLock()
        if self.path is not None:  # known from before the fork: the old connection is not used
            _INHERITED.append(self.db)
            self.db = connect(self.path, self.busy_timeout)
        self._tx = Transaction(self.db.conn)
        self._write = _Write(self)

    def write(self) -> _Write:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error::

            with store.write() as tx:
                tx.insert_event(...)
        """
        if self.closed:
            raise StoreClosed("this pqlsdk Client is closed; make a new one")
        return self._write

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        """Queries outside a write transaction (each sees the latest commit)."""
        if self.closed:
            raise StoreClosed("this pqlsdk Client is closed; make a new one")
        with self.lock:
            yield self._tx

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """For a long run of big transactions (an import): a 256 MiB page cache and a WAL
        checkpoint every 100,000 pages instead of 1,000; after it, the WAL is checkpointed
        and truncated and the previous settings come back. (Not for track(): there a larger
        cache measured slower.)"""
        conn = self.db.conn
        with self.lock:
            cache = conn.execute("PRAGMA cache_size").fetchone()[0]
            checkpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            conn.execute("PRAGMA cache_size = -262144")
            conn.execute("PRAGMA wal_autocheckpoint = 100000")
        try:
            yield
        finally:
            with self.lock:
                if not self.closed:
                    conn.execute(f"PRAGMA cache_size = {int(cache)}")
                    conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint)}")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the connection; later calls raise :class:`StoreClosed`."""
        with self.lock:
            self.closed = True
            self.db.conn.close()


class _Write:
    """The context manager behind :meth:`Store.write` (a class: it is on every track's path)."""

    __slots__ = ("conn", "lock", "tx")

    def __init__(self, store: Store) -> None:
        self.conn, self.lock, self.tx = store.db.conn, store.lock, store._tx

    def __enter__(self) -> Transaction:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.tx

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.lock.release()


def _row_dict(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}



def _subject_columns(alias: str, subject_type: str, key: str) -> str:
    return (
        f"{alias}.traits, {alias}.stage, {alias}.round, {alias}.round_since, "
        f"(SELECT json_group_array(rule) FROM qualifications q "
        f"WHERE q.subject_type = '{subject_type}' AND q.subject_id = {alias}.{key} "
        f"AND q.round = {alias}.round)"
    )


_USER_SNAPSHOT = (
    f"SELECT u.account_id, {_subject_columns('u', 'user', 'user_id')}, "
    f"{_subject_columns('a', 'account', 'account_id')} "
    "FROM users u LEFT JOIN accounts a ON a.account_id = u.account_id WHERE u.user_id = ?"
)
_SUBJECT_SNAPSHOT = {
    kind: f"SELECT {_subject_columns('s', kind, key)} FROM {table} s WHERE s.{key} = ?"
    for kind, (table, key) in _TABLES.items()
}


class Transaction:
    """The statements pqlsdk runs, on one connection; obtained from :meth:`Store.write`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- events, users, accounts ----------------------------------------------------------

    def insert_event(
        self,
        message_id: str | None,
        user_id: str,
        account_id: str | None,
        event: str,
        ts: int,
        properties: str,
    ) -> bool:
        """Store one event; False when ``message_id`` was already stored (nothing changes)."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO events (message_id, user_id, account_id, event, ts, "
            "properties) VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, user_id, account_id, event, ts, properties),
        )
        return cursor.rowcount == 1

    def user_snapshot(self, user_id: str) -> tuple[Any, ...] | None:
        """In one statement, what evaluating a user and its account needs: the user's
        account id, then for the user and for its account ``traits JSON, stage, round,
        round start, rules met this round`` (a JSON array). ``None`` for an unknown
        user."""
        return self.conn.execute(_USER_SNAPSHOT, (user_id,)).fetchone()

    def subject_snapshot(self, subject_type: str, subject_id: str) -> tuple[Any, ...] | None:
        """``traits JSON, stage, round, round start, rules met this round`` of one user or
        account, or ``None``."""
        return self.conn.execute(_SUBJECT_SNAPSHOT[subject_type], (subject_id,)).fetchone()

    def add_user(self, user_id: str, account_id: str | None, ts: int) -> None:
        """Record a user seen for the first time: a ``lead`` from ``ts``."""
        self.conn.execute(
            "INSERT INTO users (user_id, account_id, traits, first_seen, first_lead) "
            "VALUES (?, ?, '{}', ?, ?3)",
            (user_id, account_id, ts),
        )
        self.add_stage_change("user", user_id, None, FIRST_STAGE, ts, "first_seen", None)

    def move_user(self, user_id: str, account_id: str) -> None:
        """Tie the user to ``account_id`` from now on."""
        self.conn.execute(
            "UPDATE users SET account_id = ? WHERE user_id = ?", (account_id, user_id)
        )

    def add_account(self, account_id: str, ts: int) -> None:
        """Record an account (a ``lead`` from ``ts``), unless it is known already."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO accounts (account_id, traits, first_seen, first_lead) "
            "VALUES (?, '{}', ?, ?2)",
            (account_id, ts),
        )
        if cursor.rowcount:
            self.add_stage_change("account", account_id, None, FIRST_STAGE, ts, "first_seen",
                                  None)

    # -- lifecycle ------------------------------------------------------------------------

    def add_stage_change(self, subject_type: str, subject_id: str, from_stage: str | None,
                         to_stage: str, at: int, source: str, reason: str | None) -> None:
        """Append to the subject's history (:meth:`change_stage` also moves the subject)."""
        self.conn.execute(
            "INSERT INTO stage_changes (subject_type, subject_id, from_stage, to_stage, at, "
            "source, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (subject_type, subject_id, from_stage, to_stage, at, source, reason),
        )

    def change_stage(self, subject_type: str, subject_id: str, from_stage: str,
                     to_stage: str, at: int, source: str, reason: str | None) -> None:
        """Move a subject: its stage, its first entry into an ordered stage (what the funnel
        reads), a new round on a move to a side state, and its history row."""
        table, key = _TABLES[subject_type]
        if to_stage in STAGES:
            column = f"first_{to_stage}"
            sql = f"UPDATE {table} SET stage = :to, {column} = coalesce({column}, :at)"
        else:
            sql = f"UPDATE {table} SET stage = :to, round = round + 1, round_since = :at"
        self.conn.execute(f"{sql} WHERE {key} = :id",
                          {"to": to_stage, "at": at, "id": subject_id})
        self.add_stage_change(subject_type, subject_id, from_stage, to_stage, at, source,
                              reason)

    def history(self, subject_type: str, subject_id: str) -> list[dict[str, Any]]:
        """The subject's stage changes, oldest first."""
        cursor = self.conn.execute(
            "SELECT * FROM stage_changes WHERE subject_type = ? AND subject_id = ? "
            "ORDER BY at, id",
            (subject_type, subject_id),
        )
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def set_traits(self, subject_type: str, subject_id: str, traits_json: str) -> None:
        """Replace the stored traits (a JSON object) of an existing user or account."""
        sql = (
            "UPDATE users SET traits = ? WHERE user_id = ?"
            if subject_type == "user"
            else "UPDATE accounts SET traits = ? WHERE account_id = ?"
        )
        self.conn.execute(sql, (traits_json, subject_id))

    def account_of(self, user_id: str) -> str | None:
        """The account the user belongs to now, if any."""
        row = self.conn.execute(
            "SELECT account_id FROM users WHERE user_id = ?", (user_id,)
        ).fetchone()
        return row[0] if row else None

    def subjects(self) -> Iterator[tuple[str, str]]:
        """Every known ``(subject_type, subject_id)``: users, then accounts."""
        yield from self.conn.execute(
            "SELECT 'user', user_id FROM users UNION ALL SELECT 'account', account_id "
            "FROM accounts"
        ).fetchall()

    def latest_user(self, account_id: str, until: int) -> str | None:
        """The account's user with the latest event up to ``until`` (or any member)."""
        row = self.conn.execute(
            "SELECT user_id FROM events WHERE account_id = ? AND ts <= ? "
            "ORDER BY ts DESC LIMIT 1",
            (account_id, until),
        ).fetchone() or self.conn.execute(
            "SELECT user_id FROM users WHERE account_id = ? LIMIT 1", (account_id,)
        ).fetchone()
        return row[0] if row else None

    def forget_user(self, user_id: str) -> None:
        """Erase every row about a user (see ``Client.forget``)."""
        for sql in (
            "DELETE FROM events WHERE user_id = ?",
            "DELETE FROM qualifications WHERE subject_type = 'user' AND subject_id = ?",
            "UPDATE qualifications SET user_id = '(forgotten)' WHERE user_id = ?",
            "DELETE FROM stage_changes WHERE subject_type = 'user' AND subject_id = ?",
            "DELETE FROM outbox WHERE user_id = ?",
            "DELETE FROM users WHERE user_id = ?",
        ):
            self.conn.execute(sql, (user_id,))

    # -- qualifications -------------------------------------------------------------------

    def insert_qualification(self, row: dict[str, Any]) -> bool:
        """Record a qualification; False when the subject already had one for that rule."""
        cursor = self.conn.execute(
            "INSERT INTO qualifications (id, rule, stage, subject_type, subject_id, user_id, "
            "account_id, qualified_at, evidence, round) VALUES (:id, :rule, :stage, "
            ":subject_type, :subject_id, :user_id, :account_id, :qualified_at, :evidence, "
            ":round) ON CONFLICT DO NOTHING",
            row,
        )
        return cursor.rowcount == 1

    def qualifications_by_id(self, ids: set[str]) -> list[dict[str, Any]]:
        """The stored qualifications with these ids (those still there)."""
        marks = ",".join("?" * len(ids))
        cursor = self.conn.execute(f"SELECT * FROM qualifications WHERE id IN ({marks})",
                                   list(ids))
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def qualifications(
        self,
        *,
        since: int | None = None,
        rule: str | None = None,
        subject: tuple[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Stored qualifications in ``qualified_at`` order, optionally filtered."""
        sql = "SELECT * FROM qualifications WHERE 1"
        args: list[Any] = []
        if since is not None:
            sql += " AND qualified_at >= ?"
            args.append(since)
        if rule is not None:
            sql += " AND rule = ?"
            args.append(rule)
        if subject is not None:
            sql += " AND subject_type = ? AND subject_id = ?"
            args.extend(subject)
        cursor = self.conn.execute(sql + " ORDER BY qualified_at, rowid", args)
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    # -- outbox ---------------------------------------------------------------------------

    def enqueue(self, rows: list[tuple[str, str, str | None, str, int]]) -> None:
        """Add ``(destination, kind, user_id, payload JSON, now)`` rows, due at once."""
        self.conn.executemany(
            "INSERT INTO outbox (destination, kind, user_id, payload, next_attempt_at, "
            "created_at) VALUES (?, ?, ?, ?, ?5, ?5)",
            rows,
        )

    def claim(self, destination: str, now: int, lease_until: int, limit: int
              ) -> list[dict[str, Any]]:
        """Lease the oldest pending rows of ``destination``, in order, stopping at the first
        one that is not yet due or is leased by someone else (so delivery keeps its order)."""
        head = self.conn.execute(
            "SELECT id, next_attempt_at, lease_until FROM outbox "
            "WHERE destination = ? AND status = 'pending' ORDER BY id LIMIT ?",
            (destination, limit),
        ).fetchall()
        ids = []
        for row_id, due, lease in head:
            if due > now or (lease is not None and lease > now):
                break
            ids.append(row_id)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        self.conn.execute(
            f"UPDATE outbox SET lease_until = ?, attempts = attempts + 1 WHERE id IN ({marks})",
            (lease_until, *ids),
        )
        cursor = self.conn.execute(f"SELECT * FROM outbox WHERE id IN ({marks}) ORDER BY id",
                                   ids)
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def acknowledge(self, ids: list[int]) -> None:
        """The destination took these rows: they are done (and removed)."""
        self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def reschedule(self, ids: list[int], next_attempt_at: int, error: str, failed: bool
                   ) -> None:
        """A delivery failed: try again at ``next_attempt_at``, or keep the rows as failed."""
        self.conn.executemany(
            "UPDATE outbox SET lease_until = NULL, next_attempt_at = ?, last_error = ?, "
            "status = ? WHERE id = ?",
            [(next_attempt_at, error, "failed" if failed else "pending", i) for i in ids],
        )

    def outbox_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Rows still in the outbox (pending or failed), oldest first."""
        sql, args = "SELECT * FROM outbox", []
        if status is not None:
            sql, args = sql + " WHERE status = ?", [status]
        cursor = self.conn.execute(sql + " ORDER BY id", args)
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def retry_failed(self, now: int) -> int:
        """Make every failed row pending again, due now, with a fresh count of attempts."""
        return self.conn.execute(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?, "
            "lease_until = NULL WHERE status = 'failed'",
            (now,),
        ).rowcount

    def waiting(self, destinations: list[str], now: int) -> tuple[int, int, int | None, int]:
        """``(pending rows, of which due now, when the next one is due, failed rows)`` for
        ``destinations``."""
        if not destinations:
            return 0, 0, None, 0
        marks = ",".join("?" * len(destinations))
        pending = "status = 'pending'"
        row = self.conn.execute(
            f"SELECT coalesce(sum({pending}), 0), "
            f"coalesce(sum({pending} AND next_attempt_at <= ?), 0), "
            f"min(CASE WHEN {pending} THEN next_attempt_at END), "
            f"coalesce(sum(status = 'failed'), 0) "
            f"FROM outbox WHERE destination IN ({marks})",
            (now, *destinations),
        ).fetchone()
        return row[0], row[1], row[2], row[3]

    def event_rows(self, subject_type: str, subject_id: str, event: str, until: int,
                   since: int | None, limit: int | None) -> Iterator[tuple[int, str]]:
        """``(ts, properties)`` of the subject's ``event`` events in ``[since, until]``, newest
        first, at most ``limit``."""
        column = "user_id" if subject_type == "user" else "account_id"
        sql = f"SELECT ts, properties FROM events WHERE {column} = ? AND event = ? AND ts <= ?"
        args: list[Any] = [subject_id, event, until]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        args.append(-1 if limit is None else limit)
        return iter(self.conn.execute(sql + " ORDER BY ts DESC LIMIT ?", args).fetchall())

    def weighted_counts(self, subject_type: str, subject_id: str, until: int,
                        lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """For each ``(event, since, half_life, limit)``: how many of the subject's events of
        that name fall in ``[since, until]`` (the newest ``limit`` at most), each weighted
        ``0.5 ** (age / half_life)`` when a half-life is given. One statement for all."""
        column = "user_id" if subject_type == "user" else "account_id"
        parts, args = [], []
        for event, since, half_life, limit in lines:
            weight = "1" if half_life is None else "power(0.5, (? - ts) * 1.0 / ?)"
            inner = f"SELECT ts FROM events WHERE {column} = ? AND event = ? AND ts <= ?"
            inner_args: list[Any] = [subject_id, event, until]
            if since is not None:
                inner += " AND ts >= ?"
                inner_args.append(since)
            parts.append(f"(SELECT total({weight}) FROM ({inner} ORDER BY ts DESC LIMIT ?))")
            args += ([] if half_life is None else [until, half_life]) + inner_args
            args.append(-1 if limit is None else limit)
        return list(self.conn.execute("SELECT " + ", ".join(parts), args).fetchone())

    # -- import ---------------------------------------------------------------------------

    def stage_messages(self, rows: list[tuple[Any, ...]]) -> int:
        """Stage validated messages ``(message id, ts, line number, kind, user id, account
        id, event, data JSON)`` for replay, unless already staged or imported; return how
        many were new."""
        before = self.conn.total_changes
        self.conn.executemany(
            "INSERT OR IGNORE INTO import_staging (message_id, ts, line_no, kind, user_id, "
            "account_id, event, data) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 "
            "WHERE NOT EXISTS (SELECT 1 FROM import_done WHERE message_id = ?1) "
            "AND NOT EXISTS (SELECT 1 FROM events WHERE message_id = ?1)",
            rows,
        )
        return self.conn.total_changes - before

    def staged_count(self) -> int:
        """Messages waiting for replay."""
        return self.conn.execute("SELECT count(*) FROM import_staging").fetchone()[0]

    def staged_batch(self, limit: int) -> list[tuple[Any, ...]]:
        """The next staged messages to replay, in time order (columns as staged)."""
        return self.conn.execute(
            "SELECT message_id, ts, kind, user_id, account_id, event, data "
            "FROM import_staging ORDER BY ts, line_no LIMIT ?",
            (limit,),
        ).fetchall()

    def finish_staged(self, message_ids: list[str], remember: list[str]) -> None:
        """Replayed: unstage ``message_ids``; remember the ids of ``remember`` (identify and
        group: a track is remembered by its event's message id)."""
        self.conn.executemany("DELETE FROM import_staging WHERE message_id = ?",
                              [(m,) for m in message_ids])
        self.conn.executemany("INSERT OR IGNORE INTO import_done (message_id) VALUES (?)",
                              [(m,) for m in remember])

    # -- reports --------------------------------------------------------------------------

    def funnel_rows(self, subject_type: str, since: int | None, until: int | None,
                    by: str | None) -> list[tuple[Any, ...]]:
        """Per group (the ``by`` trait's value, or one group): for each ordered stage,
        ``entered, moved_on, JSON array of the movers' times in stage``.

        A subject entered a stage at its first move into it (in ``[since, until]``), and
        moved on if it later entered any later stage. It reads each subject's first entry
        per stage (kept on its row by :meth:`change_stage`), in one pass, all in SQL.
        """
        table, _ = _TABLES[subject_type]
        count = len(STAGES)
        firsts = ", ".join(
            f"first_{stage} AS s{k}" if until is None
            else f"CASE WHEN first_{stage} <= :until THEN first_{stage} END AS s{k}"
            for k, stage in enumerate(STAGES))
        if by is None:
            group = "NULL"
        elif _PLAIN_KEY.fullmatch(by):
            group = "json_extract(traits, :path)"
        else:  # any other trait name: a JSON path cannot spell every key, json_each can
            group = "(SELECT value FROM json_each(traits) WHERE key = :by)"
        nexts = []
        for k in range(count - 1):
            later = ", ".join(f"coalesce(CASE WHEN s{j} >= s{k} THEN s{j} END, {_NEVER})"
                              for j in range(k + 1, count))
            nexts.append(f"nullif(min({later}, {_NEVER}), {_NEVER}) AS n{k}")
        nexts.append(f"NULL AS n{count - 1}")
        entered = "s{k} IS NOT NULL" + ("" if since is None else " AND s{k} >= :since")
        columns = []
        for k in range(count):
            cond = entered.format(k=k)
            columns += [
                f"count(CASE WHEN {cond} THEN 1 END)",
                f"count(CASE WHEN {cond} AND n{k} IS NOT NULL THEN 1 END)",
                f"json_group_array(n{k} - s{k}) FILTER (WHERE {cond} AND n{k} IS NOT NULL)",
            ]
        sql = (
            f"WITH p AS (SELECT {group} AS grp, {firsts} FROM {table}), "
            f"q AS (SELECT p.*, {', '.join(nexts)} FROM p) "
            f"SELECT grp, {', '.join(columns)} FROM q GROUP BY grp"
        )
        return self.conn.execute(sql, {"until": until, "since": since, "by": by,
                                       "path": f'$."{by}"'}).fetchall()

    def rule_outcomes(self, since: int | None) -> list[tuple[Any, ...]]:
        """Each qualification (since ``since``) with every later move of its subject to sql,
        opportunity, customer, unqualified or disqualified that the rule itself did not
        cause: ``(rule, subject_type, subject_id, to_stage, reason)``."""
        return self.conn.execute(
            "SELECT q.rule, q.subject_type, q.subject_id, sc.to_stage, sc.reason "
            "FROM qualifications q LEFT JOIN stage_changes sc "
            "ON sc.subject_type = q.subject_type AND sc.subject_id = q.subject_id "
            "AND sc.at >= q.qualified_at AND sc.source != 'rule:' || q.rule "
            "AND sc.to_stage IN ('sql', 'opportunity', 'customer', 'unqualified', "
            "'disqualified') "
            "WHERE q.qualified_at >= ? ORDER BY q.rule",
            (since if since is not None else -(2**62),),
        ).fetchall()

    def all_subjects(self, subject_type: str) -> list[str]:
        """Every user (or account) id."""
        table, key = _TABLES[subject_type]
        return [row[0] for row in self.conn.execute(f"SELECT {key} FROM {table}")]

    # -- measuring ------------------------------------------------------------------------

    def measure(
        self,
        subject_type: str,
        subject_id: str,
        condition: EventCondition,
        until: int,
        limit: int | None,
        matches: Callable[[dict[str, Any]], bool] | None,
        since: int | None = None,
    ) -> float:
        """Count, distinct-count or sum the subject's matching events in ``[until - within,
        until]`` (and not before ``since``), stopping once ``limit`` is reached."""
        column = "user_id" if subject_type == "user" else "account_id"
        sql = f"FROM events WHERE {column} = ? AND event = ? AND ts <= ?"
        args: list[Any] = [subject_id, condition.event, until]
        if condition.within is not None:
            window_start = until - condition.within // _MICROSECOND
            since = window_start if since is None else max(since, window_start)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        if matches is None and condition.distinct is None and condition.sum is None:
            args.append(-1 if limit is None else limit)
            return self.conn.execute(
                f"SELECT count(*) FROM (SELECT 1 {sql} LIMIT ?)", args
            ).fetchone()[0]
        return _fold(self.conn.execute(f"SELECT properties {sql}", args), condition, limit,
                     matches)


def _fold(
    rows: sqlite3.Cursor,
    condition: EventCondition,
    limit: int | None,
    matches: Callable[[dict[str, Any]], bool] | None,
) -> float:
    count = 0
    total = 0.0
    seen: set[str] = set()
    for (text,) in rows:
        props = json.loads(text)
        if matches is not None and not matches(props):
            continue
        if condition.distinct is not None:
            if props.get(condition.distinct) is None:
                continue
            seen.add(json.dumps(props[condition.distinct], sort_keys=True))
            count = len(seen)
        elif condition.sum is not None:
            value = props.get(condition.sum)
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += value
            continue
        else:
            count += 1
        if limit is not None and count >= limit:
            break
    return total if condition.sum is not None else count
