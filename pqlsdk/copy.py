"""``pqlsdk copy pql.db postgresql://...``: move an embedded file into PostgreSQL.

Copies the user directory, events, users, accounts (traits, stage, rounds), stage history,
qualifications, pruned-event rollups, the import bookkeeping (with each file's checkpoint),
forgotten ids and the outbox rows still pending or failed, each row with its tenant key as
the file has it (a mirrored track's row refers to its event by message id, which the copy
keeps). Each chunk of a table travels by ``COPY ... FROM STDIN`` into a temporary staging
table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` moves it into the table, in one
transaction with how far the copy got (table ``copy_progress``, per source file). So it is
idempotent and resumable: a stopped copy resumes where it stopped and a second run adds
nothing. Rows keyed by their own id (users, accounts, qualifications, import ids and
checkpoints) are inserted unless there; the others resume by the file's row id.

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
CHUNK = 20_000


class Table(NamedTuple):
    """One table :func:`copy_file` moves: its columns (the same on both sides; adding a
    column to the copy is adding it to this list) and whether a chunk is told apart on the
    server by the file's row id (``resume``: for tables whose rows have no key of their
    own) or by the table's own keys (a second insert is a no-op)."""

    name: str
    columns: list[str]
    resume: bool = False


_STAGES = ["first_lead", "first_mql", "first_pql", "first_sql", "first_opportunity",
           "first_customer"]
TABLES: list[Table] = [
    Table("user_directory", ["tenant_key", "account_id"]),
    Table("users", ["tenant_key", "user_id", "account_id", "traits", "first_seen", "stage",
                    "round", "round_since", *_STAGES]),
    Table("accounts", ["tenant_key", "account_id", "traits", "first_seen", "stage", "round",
                       "round_since", *_STAGES]),
    Table("events", ["tenant_key", "message_id", "user_id", "account_id", "event", "ts",
                     "properties", "context", "integrations"], resume=True),
    Table("aliases", ["tenant_key", "user_id", "at"]),  # issue 20
    Table("stage_changes", ["tenant_key", "subject_type", "subject_id", "from_stage",
                            "to_stage", "at", "source", "reason", "criteria"], resume=True),
    Table("qualifications", ["tenant_key", "id", "rule", "stage", "subject_type",
                             "subject_id", "user_id", "account_id", "qualified_at",
                             "evidence", "round", "rule_version", "shadow", "firing"]),
    Table("trait_changes", ["tenant_key", "subject_type", "subject_id", "trait", "value",
                            "at"], resume=True),  # issue 20
    Table("handoffs", ["tenant_key", "qualification_id", "subject_type", "subject_id",
                       "rule", "qualified_at", "notified_at"]),  # issue 20
    Table("event_rollups", ["tenant_key", "user_id", "account_id", "event", "properties", "n",
                            "first_ts", "last_ts"], resume=True),
    Table("call_contexts", ["tenant_key", "kind", "user_id", "account_id", "message_id",
                            "at", "context", "integrations"], resume=True),  # issue 20b
    Table("import_done", ["tenant_key", "message_id", "user_id"]),
    Table("import_staging", ["tenant_key", "message_id", "ts", "line_no", "kind", "user_id",
                             "account_id", "event", "data"]),
    Table("import_checkpoints", ["source", "ts", "line_no", "applied", "updated_at"]),
    Table("forgotten", ["hash"]),
    Table("outbox", ["tenant_key", "destination", "kind", "user_id", "payload", "status",
                     "attempts", "next_attempt_at", "last_error", "created_at", "format"],
          resume=True),
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
        for table in TABLES:
            copied[table.name] = _copy_table(source, target, key, table, progress)
        return CopyResult(copied)
    finally:
        source.close()
        target.close()


def total_rows(path: str) -> int:
    """How many rows :func:`copy_file` reads from the file (for a progress bar)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
                   for table in TABLES)


def _copy_table(source: sqlite3.Connection, target: PostgresStore, key: str, table: Table,
                progress: Callable[[int], None] | None) -> int:
    names = ", ".join(table.columns)
    staging = f"copy_{table.name}"
    after = -(2**63)
    if table.resume:
        found = target.transact(lambda tx: tx.conn.execute(
            "SELECT last_id FROM copy_progress WHERE source = ? AND tbl = ?",
            (key, table.name)).fetchone())
        after = found[0] if found else after
    where = " AND status IN ('pending', 'failed')" if table.name == "outbox" else ""
    # resumable tables are read by the file's row id; the others start again each run
    # (their own keys make a second insert a no-op)
    rows = (source.execute(f"SELECT rowid, {names} FROM {table.name} WHERE rowid > ?{where} "
                           f"ORDER BY rowid", (after,)) if table.resume
            else source.execute(f"SELECT 0, {names} FROM {table.name}"))
    copied = 0
    while chunk := rows.fetchmany(CHUNK):
        last = chunk[-1][0]

        def write(tx: Any, chunk: list[tuple[Any, ...]] = chunk, last: int = last) -> int:
            raw = tx.conn.raw
            # a temporary table of this transaction's own (dropped at its end)
            raw.execute(f"CREATE TEMP TABLE {staging} ON COMMIT DROP AS SELECT {names} "
                        f"FROM {table.name} WITH NO DATA")
            with raw.cursor() as cursor:
                with cursor.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row[1:])
                cursor.execute(f"INSERT INTO {table.name} ({names}) SELECT {names} "
                               f"FROM {staging} ON CONFLICT DO NOTHING")
                added = max(cursor.rowcount, 0)
            if table.resume:
                raw.execute("INSERT INTO copy_progress VALUES (%s, %s, %s) ON CONFLICT "
                            "(source, tbl) DO UPDATE SET last_id = excluded.last_id",
                            (key, table.name, last))
            return added

        copied += target.transact(write, pipeline=False)
        if progress is not None:
            progress(len(chunk))
    return copied
