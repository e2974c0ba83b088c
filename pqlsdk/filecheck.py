"""The SQLite file's health: its errors as pqlsdk's own, the cheap check at open, the full
check (``pqlsdk doctor``) and its size.

Every ``sqlite3`` error that crosses the store's boundary goes through :func:`translate`,
so an application sees :class:`~pqlsdk.StoreBusy`, :class:`~pqlsdk.StoreFull`,
:class:`~pqlsdk.StoreCorrupt` or another :class:`~pqlsdk.StoreError` naming the file and
what to do, with the SQLite error as ``__cause__``.

    >>> check_header(conn, "pql.db")    # raises StoreCorrupt for a file that is not SQLite
    >>> probe(conn)                     # touches both ends of every table and index
"""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta

import attrs

from .errors import StoreBusy, StoreCorrupt, StoreError, StoreFull, StoreRejected

#: UPDATE ... RETURNING and DROP COLUMN need 3.35.
MIN_SQLITE = (3, 35, 0)

# primary result codes (https://sqlite.org/rescode.html)
_BUSY, _LOCKED, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 11, 13, 14, 26
_PERM, _READONLY, _IOERR = 3, 8, 10
#: Rows read at each end of every table and index by :func:`probe`.
PROBE_ROWS = 4
RECOVER = ('recover it with: sqlite3 {path} ".recover" | sqlite3 recovered.db, then check '
           'recovered.db with: pqlsdk doctor --db recovered.db')


def require_sqlite(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    """Refuse a SQLite older than pqlsdk needs (``UPDATE ... RETURNING``: 3.35)."""
    if tuple(version) < MIN_SQLITE:
        raise StoreError(
            f"pqlsdk needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer, and this Python "
            f"uses {'.'.join(map(str, version))}; upgrade SQLite (or use a Python built with "
            f"a newer one, e.g. from python.org or pysqlite3-binary)")


def translate(exc: sqlite3.Error, path: str | None, busy_timeout: float) -> StoreError:
    """The pqlsdk error for a ``sqlite3`` error raised on ``path`` (raise it ``from exc``)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):  # the call's, not the file's
        return StoreRejected.refused(text, path=path)
    lowered = text.lower()
    if code in (_BUSY, _LOCKED) or "database is locked" in lowered:
        return StoreBusy(
            f"another connection held the write lock for more than {busy_timeout:g} s "
            f"({text}); nothing of this call was written: retry, or allow more time with "
            f"busy_timeout= (CLI: --busy-timeout)", path=path)
    if code == _FULL or "database or disk is full" in lowered:
        return StoreFull(
            f"the disk or quota is full ({text}); nothing of this call was written: free "
            f"space (or prune with retention=) and retry", path=path)
    if code in (_CORRUPT, _NOTADB) or "malformed" in lowered or "not a database" in lowered:
        return StoreCorrupt(
            f"the file is damaged or not a SQLite database ({text}); pqlsdk writes nothing "
            f"more to it: {RECOVER.format(path=path or 'pql.db')}", path=path)
    if code in (_CANTOPEN, _PERM, _READONLY):
        return StoreError(f"cannot open or write the file ({text}): check the path, its "
                          f"directory and their permissions", path=path)
    if code == _IOERR:
        return StoreError(f"the disk reported an I/O error ({text}); check the disk, then "
                          f"run: pqlsdk doctor --db {path}", path=path)
    return StoreError(text, path=path)


def check_header(conn: sqlite3.Connection, path: str) -> None:
    """Right after SQLite opened ``path`` on ``conn``: a file that is there and not empty
    must be a SQLite database and be at least as long as its header says (a truncated copy
    is not). A missing or empty file is left for SQLite to create.

    The header is read by SQLite, through ``conn``, never through a descriptor of our own:
    closing any descriptor of a database file drops every POSIX lock this process holds on
    it (SQLite's "How To Corrupt An SQLite Database File", 2.2), and another process could
    then checkpoint and reset the WAL under an open connection. ``os.stat`` opens nothing.
    """
    try:
        if os.path.getsize(path) == 0:
            return
    except OSError:
        return
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF != _NOTADB:
            raise
        raise StoreCorrupt("not a SQLite database (its first bytes are not SQLite's "
                           "header); give the path of a pqlsdk database", path=path) from exc
    # In this order: a WAL with frames holds pages the file may not have yet (nothing to
    # compare); one emptied since the count was taken was emptied by a checkpoint that
    # first copied every page into the file, so the size read after it is whole.
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        return
    size = os.path.getsize(path)
    if pages and size < pages * page_size:
        raise StoreCorrupt(
            f"the file is truncated: its header says {pages * page_size:,} bytes, it holds "
            f"{size:,}; {RECOVER.format(path=path)}", path=path)


def probe(conn: sqlite3.Connection) -> None:
    """A bounded check that reads the schema and a few rows at each end of every table and
    index (so the root page and the first and last leaves of each b-tree); raises the
    ``sqlite3`` error SQLite finds. Its cost does not grow with the file."""
    objects = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE type IN ('table', 'index') AND rootpage > 0").fetchall()
    for kind, name, table, sql in objects:
        if kind == "table":
            conn.execute(f'SELECT * FROM "{name}" LIMIT {PROBE_ROWS}').fetchall()
            without_rowid = sql is not None and "WITHOUT ROWID" in sql.upper()
            if not without_rowid:
                conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid DESC '
                             f"LIMIT {PROBE_ROWS}").fetchall()
            continue
        columns = [row[2] for row in conn.execute(f'PRAGMA index_info("{name}")')]
        if not columns or any(c is None for c in columns):
            continue  # an index on expressions: read by the full check only
        where = ""
        if sql is not None and " WHERE " in sql.upper():
            where = " WHERE " + sql[sql.upper().rindex(" WHERE ") + 7:]
        listed = ", ".join(f'"{c}"' for c in columns)
        for order in ("ASC", "DESC"):
            try:
                conn.execute(f'SELECT {listed} FROM "{table}" INDEXED BY "{name}"{where} '
                             f'ORDER BY "{columns[0]}" {order} LIMIT {PROBE_ROWS}').fetchall()
            except sqlite3.OperationalError as exc:
                if "no such index" in str(exc) or "no query solution" in str(exc):
                    break  # an automatic index SQLite will not name: the full check reads it
                raise


def integrity_check(conn: sqlite3.Connection, limit: int = 100) -> list[str]:
    """SQLite's full ``PRAGMA integrity_check``: ``[]`` when the file is sound, else up to
    ``limit`` problems. It reads every page (seconds on a large file)."""
    rows = [row[0] for row in conn.execute(f"PRAGMA integrity_check({int(limit)})")]
    return [] if rows == ["ok"] else rows


@attrs.frozen
class FileUsage:
    """How big the database is and how fast it grows (SQLite files only).

    ``bytes`` (the main file), ``wal_bytes``, ``free_bytes`` (free pages, reused before the
    file grows), ``events``, the oldest event's timestamp (µs, or None), ``events_last_week``
    and ``growth_per_day``: bytes a day at last week's pace (the file's bytes per event
    times last week's events per day).
    """

    path: str
    bytes: int
    wal_bytes: int
    free_bytes: int
    events: int
    oldest_event: int | None
    events_last_week: int
    growth_per_day: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return attrs.asdict(self)


_WEEK = timedelta(days=7) // timedelta(microseconds=1)


def usage(conn: sqlite3.Connection, path: str, now: int) -> FileUsage:
    """The :class:`FileUsage` of the database at ``path`` as of ``now`` (µs)."""
    size = os.path.getsize(path)
    wal = path + "-wal"
    wal_bytes = os.path.getsize(wal) if os.path.exists(wal) else 0
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size
    events, oldest = conn.execute("SELECT count(*), min(ts) FROM events").fetchone()
    week = conn.execute("SELECT count(*) FROM events WHERE ts > ? AND ts <= ?",
                        (now - _WEEK, now)).fetchone()[0]
    per_event = (size - free) / events if events else 0.0
    return FileUsage(path, size, wal_bytes, free, events, oldest, week,
                     round(per_event * week / 7, 1))


@attrs.frozen
class Diagnosis:
    """What ``pqlsdk doctor`` found: ``problems`` (empty when the file is sound), the
    schema version, and the file's :class:`FileUsage` (None when it could not be read)."""

    path: str
    problems: tuple[str, ...]
    schema_version: int | None
    usage: FileUsage | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"path": self.path, "ok": not self.problems, "problems": list(self.problems),
                "schema_version": self.schema_version,
                "usage": None if self.usage is None else self.usage.to_dict()}

    def text(self) -> str:
        """For people."""
        lines = [f"{self.path}: " + ("ok" if not self.problems else "DAMAGED")]
        lines += [f"  {problem}" for problem in self.problems]
        if self.problems:
            lines.append("  " + RECOVER.format(path=self.path))
        if self.schema_version is not None:
            lines.append(f"schema version: {self.schema_version}")
        if self.usage is not None:
            u = self.usage
            lines.append(f"size: {u.bytes:,} bytes (WAL {u.wal_bytes:,}, free pages "
                         f"{u.free_bytes:,})")
            lines.append(f"events: {u.events:,}; last 7 days: {u.events_last_week:,}; "
                         f"growth: about {u.growth_per_day:,.0f} bytes a day")
        return "\n".join(lines)


def diagnose(path: str, busy_timeout: float = 30.0) -> Diagnosis:
    """The full check of the file at ``path``, read-only (``pqlsdk doctor``)."""
    from .timestamps import now, to_micros

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout)
    try:
        check_header(conn, path)
    except StoreCorrupt as exc:
        conn.close()
        return Diagnosis(path, (str(exc),), None, None)
    try:
        problems = tuple(integrity_check(conn))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        found = None if problems else usage(conn, path, to_micros(now()))
    except sqlite3.DatabaseError as exc:
        error = translate(exc, path, busy_timeout)
        if not isinstance(error, StoreCorrupt):
            raise error from exc
        return Diagnosis(path, (str(exc),), None, None)
    finally:
        conn.close()
    return Diagnosis(path, problems, version, found)
