"""``pqlsdk copy pql.db postgresql://...``: move an embedded file into PostgreSQL.

Copies the user directory, events, users, accounts (traits, stage, rounds), stage history,
qualifications, pruned-event rollups, the import bookkeeping, forgotten ids and the outbox
rows still pending or failed, each row with its tenant key as the file has it. Idempotent
and resumable: each table is copied in chunks in the file's id order, each chunk committed
with how far it got (table ``copy_progress``, per source file), so a stopped copy resumes
where it stopped and a second run adds nothing. Rows keyed by their own id (users,
accounts, qualifications, import ids) are inserted unless there.

    >>> copy_file("pql.db", "postgresql://app@db/app")
    CopyResult(copied={'events': 1200, ...})
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from typing import Any, NamedTuple

from .store.postgres import PostgresStore
from .store.sqlite import Store as SqliteStore

#: Rows per transaction.
CHUNK = 5_000

#: (table, columns, how a row is told apart on the server: "id" = resume by the file's id,
#: else the conflict clause that makes a second insert a no-op)
_TABLES: list[tuple[str, list[str], str]] = [
    ("user_directory", ["tenant_key", "account_id"], "ON CONFLICT DO NOTHING"),
    ("users", ["tenant_key", "user_id", "account_id", "traits", "first_seen", "stage",
               "round", "round_since", "first_lead", "first_mql", "first_pql", "first_sql",
               "first_opportunity", "first_customer"], "ON CONFLICT DO NOTHING"),
    ("accounts", ["tenant_key", "account_id", "traits", "first_seen", "stage", "round",
                  "round_since", "first_lead", "first_mql", "first_pql", "first_sql",
                  "first_opportunity", "first_customer"], "ON CONFLICT DO NOTHING"),
    ("events", ["tenant_key", "message_id", "user_id", "account_id", "event", "ts",
                "properties", "context", "integrations"], "id"),
    ("aliases", ["tenant_key", "user_id", "at"], "ON CONFLICT DO NOTHING"),
    ("stage_changes", ["tenant_key", "subject_type", "subject_id", "from_stage", "to_stage",
                       "at", "source", "reason", "criteria"], "id"),
    ("qualifications", ["tenant_key", "id", "rule", "stage", "subject_type", "subject_id",
                        "user_id", "account_id", "qualified_at", "evidence", "round",
                        "rule_version", "shadow", "firing"], "ON CONFLICT DO NOTHING"),
    ("trait_changes", ["tenant_key", "subject_type", "subject_id", "trait", "value", "at"],
     "id"),
    ("handoffs", ["tenant_key", "qualification_id", "subject_type", "subject_id", "rule",
                  "qualified_at", "notified_at"], "ON CONFLICT DO NOTHING"),
    ("event_rollups", ["tenant_key", "user_id", "account_id", "event", "properties", "n",
                       "first_ts", "last_ts"], "id"),
    ("import_done", ["tenant_key", "message_id", "user_id"], "ON CONFLICT DO NOTHING"),
    ("import_staging", ["tenant_key", "message_id", "ts", "line_no", "kind", "user_id",
                        "account_id", "event", "data"], "ON CONFLICT DO NOTHING"),
    ("forgotten", ["hash"], "ON CONFLICT DO NOTHING"),
    ("outbox", ["tenant_key", "destination", "kind", "user_id", "payload", "status",
                "attempts", "next_attempt_at", "last_error", "created_at", "format"], "id"),
]


class CopyResult(NamedTuple):
    """Rows copied per table by this run (0 everywhere on a second run)."""

    copied: dict[str, int]


def _source_key(conn: sqlite3.Connection) -> str:
    """The file's identity across renames: a hash of its random forget key."""
    key = conn.execute("SELECT value FROM pqlsdk_meta WHERE key = 'forget_key'").fetchone()[0]
    return hashlib.sha256(key).hexdigest()[:32]


def copy_file(path: str, database: Any, *, schema: str = "pqlsdk",
              progress: Callable[[int], None] | None = None) -> CopyResult:
    """Copy the SQLite file at ``path`` into the PostgreSQL ``database`` (a URL or a pool);
    ``progress(n)`` is called after each chunk with how many rows it moved."""
    SqliteStore(path).close()  # migrate the file to this release's schema first
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    target = PostgresStore(database, schema=schema)
    try:
        key = _source_key(source)
        forget_key = source.execute(
            "SELECT value FROM pqlsdk_meta WHERE key = 'forget_key'").fetchone()[0]

        def setup(tx: Any) -> None:
            raw = tx.conn.raw
            raw.execute("CREATE TABLE IF NOT EXISTS copy_progress (source TEXT, tbl TEXT, "
                        "last_id BIGINT NOT NULL, PRIMARY KEY (source, tbl))")
            # forgotten ids are keyed hashes: the server keeps the file's key, unless it
            # already has forgotten ids of its own
            if raw.execute("SELECT NOT EXISTS (SELECT 1 FROM forgotten)").fetchone()[0]:
                raw.execute("UPDATE pqlsdk_meta SET value = %s WHERE key = 'forget_key'",
                            (forget_key,))

        target.transact(setup)
        copied: dict[str, int] = {}
        for table, columns, mode in _TABLES:
            copied[table] = _copy_table(source, target, key, table, columns, mode, progress)
        return CopyResult(copied)
    finally:
        source.close()
        target.close()


def total_rows(path: str) -> int:
    """How many rows :func:`copy_file` reads from the file (for a progress bar)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                   for table, _, _ in _TABLES)


def _copy_table(source: sqlite3.Connection, target: PostgresStore, key: str, table: str,
                columns: list[str], mode: str, progress: Callable[[int], None] | None) -> int:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    copied = 0
    after = -(2**63)
    if mode == "id":
        found = target.transact(lambda tx: tx.conn.raw.execute(
            "SELECT last_id FROM copy_progress WHERE source = %s AND tbl = %s",
            (key, table)).fetchone())
        after = found[0] if found else after
    where = " AND status IN ('pending', 'failed')" if table == "outbox" else ""
    offset = 0
    while True:
        if mode == "id":  # resumable by the file's row id
            rows = source.execute(
                f"SELECT rowid, {names} FROM {table} WHERE rowid > ?{where} ORDER BY rowid "
                f"LIMIT ?", (after, CHUNK)).fetchall()
        else:  # keyed by their own id: a second insert is a no-op, so start again each run
            rows = source.execute(f"SELECT 0, {names} FROM {table} LIMIT ? OFFSET ?",
                                  (CHUNK, offset)).fetchall()
            offset += len(rows)
        if not rows:
            return copied
        last = rows[-1][0]
        values = [row[1:] for row in rows]

        def write(tx: Any, values: list[tuple[Any, ...]] = values, last: int = last) -> int:
            raw = tx.conn.raw
            with raw.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})"
                    + (" ON CONFLICT DO NOTHING" if table == "events" or mode != "id" else ""),
                    values)
                added = max(cursor.rowcount, 0)
            if mode == "id":
                raw.execute("INSERT INTO copy_progress VALUES (%s, %s, %s) ON CONFLICT "
                            "(source, tbl) DO UPDATE SET last_id = excluded.last_id",
                            (key, table, last))
            return added

        copied += target.transact(write)
        after = last
        if progress is not None:
            progress(len(rows))

