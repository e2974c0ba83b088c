"""pqlsdk's stores: the embedded SQLite file (the default) and PostgreSQL for fleets.

:func:`open_store` picks one from what ``Client(database=...)`` was given. The names the
SQLite store always had (``Store``, ``Transaction``, ``MIGRATIONS``, ...) stay importable
from here; psycopg is imported only when a PostgreSQL store is opened.
"""

from __future__ import annotations

from typing import Any

from ..errors import SchemaTooNew, StoreBusy, StoreClosed, StoreCorrupt, StoreError
from .base import FunnelRows, StageCounts
from .sqlite import (
    EVENT_REF_FORMAT,
    MIGRATIONS,
    PAYLOAD_FORMAT,
    SYNCHRONOUS,
    Store,
    Transaction,
    connect,
    migrate,
)

__all__ = [
    "EVENT_REF_FORMAT",
    "MIGRATIONS",
    "PAYLOAD_FORMAT",
    "SYNCHRONOUS",
    "FunnelRows",
    "SchemaTooNew",
    "StageCounts",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "Transaction",
    "connect",
    "migrate",
    "open_store",
]


def is_postgres(database: object) -> bool:
    """Whether ``database`` names a PostgreSQL server (a URL or a psycopg_pool pool)."""
    if isinstance(database, str):
        return database.startswith(("postgresql://", "postgres://"))
    return type(database).__module__.startswith("psycopg_pool")


def open_store(database: Any, *, busy_timeout: float = 30.0, synchronous: str = "normal",
               schema: str = "pqlsdk", connect_timeout: float = 10.0,
               statement_timeout: float | None = None, lock_timeout: float | None = None
               ) -> Store:
    """The store for ``database``: a PostgreSQL URL or ``psycopg_pool.ConnectionPool`` opens
    the PostgreSQL store (psycopg is imported only then); anything else, the SQLite file."""
    if is_postgres(database):
        from .postgres import PostgresStore

        return PostgresStore(database, schema=schema,  # type: ignore[return-value]
                             connect_timeout=connect_timeout,
                             statement_timeout=statement_timeout, lock_timeout=lock_timeout)
    return Store(database, busy_timeout=busy_timeout, synchronous=synchronous)
