"""Shared fixtures: a real SQLite file per test and a factory of Clients that get closed."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

import pqlsdk


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "pql.db")


@pytest.fixture
def make_client(db_path):
    clients = []

    def make(rules=None, **options):
        options.setdefault("database", db_path)
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
