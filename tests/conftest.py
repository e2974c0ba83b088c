"""Shared fixtures: a real SQLite file per test, a real PostgreSQL server per session (a
fresh schema per test), and a factory of Clients that get closed.

A test that takes ``make_client`` (or ``database``) and not ``db_path`` runs on both engines
(``[sqlite]`` and ``[postgresql]``); one that takes ``db_path`` inspects the SQLite file
itself, or is marked ``sqlite_only``, and runs on SQLite only. With ``CI`` set, a missing
PostgreSQL server fails the run.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sqlite3
import uuid

import pytest

import pqlsdk

from .pgserver import NoServer, server_url

ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    if "engine" not in metafunc.fixturenames:
        return
    own = inspect.signature(metafunc.function).parameters
    sqlite_only = "db_path" in own or metafunc.definition.get_closest_marker("sqlite_only")
    metafunc.parametrize("engine", ["sqlite"] if sqlite_only else list(ENGINES),
                         scope="function")


@pytest.fixture(scope="session")
def pg_url():
    """The URL of a PostgreSQL server for this session (started here, or
    ``PQLSDK_TEST_POSTGRES``)."""
    try:
        url, server = server_url()
    except NoServer as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a PostgreSQL server: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield url
    if server is not None:
        server.stop()


@pytest.fixture
def pg_schema(request):
    """A fresh schema name on the session's server, dropped after the test."""
    url = request.getfixturevalue("pg_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield url, schema
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "pql.db")


@pytest.fixture
def database(engine, request, tmp_path):
    """What ``Client(**database)`` takes for this test's engine: a fresh SQLite file, or a
    fresh schema on the PostgreSQL server."""
    if engine == "sqlite":
        return {"database": str(tmp_path / "pql.db")}
    url, schema = request.getfixturevalue("pg_schema")
    return {"database": url, "schema": schema}


@pytest.fixture
def make_client(database):
    clients = []

    def make(rules=None, **options):
        for key, value in database.items():
            options.setdefault(key, value)
        client = pqlsdk.Client(rules=rules, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        with contextlib.suppress(sqlite3.ProgrammingError):  # the test closed it already
            client.close(timeout=0.5)


def count_rows(path: str, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def count_table(database: dict, table: str) -> int:
    """Rows in one of pqlsdk's tables, read directly from the store of either engine
    (``database`` as the fixture gives it)."""
    if "schema" not in database:
        return count_rows(database["database"], table)
    import psycopg

    with psycopg.connect(database["database"], autocommit=True) as conn:
        return conn.execute(f"SELECT count(*) FROM {database['schema']}.{table}").fetchone()[0]


@pytest.fixture
def segment_server():
    from .segment_server import SegmentServer

    server = SegmentServer()
    yield server
    server.close()


@pytest.fixture
def segment_client(segment_server):
    from segment.analytics import Client as SegmentClient

    client = SegmentClient(write_key="test-write-key", host=segment_server.url, sync_mode=True)
    yield client
