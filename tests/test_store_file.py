"""The embedded file in production: storage errors as pqlsdk's own, corruption found and not
spread, a lock held elsewhere, a full disk, an old SQLite, synchronous=."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from datetime import datetime, timezone

import pytest

import pqlsdk
from pqlsdk import filecheck

from .conftest import count_rows

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("busy", pqlsdk.event("report_generated", at_least=101))]

#: the SQLite file itself (PRAGMAs, bytes, locks): not a contract of the PostgreSQL store
pytestmark = pytest.mark.sqlite_only


def build(path: str) -> None:
    """A file whose events_user index spans many leaves, ``m-ada`` (101 events) in the
    middle of it, between ``a-user`` and ``z-user``; checkpointed into the main file."""
    pqlsdk.Client(path, rules=RULES).close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO events (tenant_key, user_id, event, ts, properties) "
        "VALUES (?1, ?1, 'report_generated', ?2, '{}')",
        [(user, n) for user, count in (("a-user", 1500), ("m-ada", 101), ("z-user", 1500))
         for n in range(count)])
    users = [("a-user",), ("m-ada",), ("z-user",)]
    conn.executemany("INSERT INTO users (tenant_key, user_id, traits, first_seen) "
                     "VALUES (?1, ?1, '{}', 0)", users)
    conn.executemany("INSERT INTO user_directory (tenant_key) VALUES (?)", users)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def pages_holding(path: str, page_type: int, needle: bytes) -> tuple[int, list[int]]:
    """``(page size, numbers of the pages of that b-tree type holding needle)``."""
    with open(path, "rb") as handle:
        data = handle.read()
    size = int.from_bytes(data[16:18], "big")
    return size, [n for n in range(1, len(data) // size)
                  if data[n * size] == page_type and needle in data[n * size:(n + 1) * size]]


def damage(path: str, page: int, page_size: int) -> None:
    """Overwrite a page's cells with zeros (its b-tree header stays)."""
    with open(path, "r+b") as handle:
        handle.seek(page * page_size + 8)
        handle.write(bytes(page_size - 8))


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"name,email\nada,ada@example.com\n" * 100)
    before = path.read_bytes()
    with pytest.raises(pqlsdk.StoreCorrupt, match="not a SQLite database") as caught:
        pqlsdk.Client(str(path), rules=RULES)
    assert caught.value.path == str(path)
    assert path.read_bytes() == before
    assert not os.path.exists(str(path) + "-wal")


def test_a_truncated_file_is_refused(tmp_path):
    path = str(tmp_path / "pql.db")
    build(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(pqlsdk.StoreCorrupt, match="truncated") as caught:
        pqlsdk.Client(path, rules=RULES)
    assert ".recover" in str(caught.value)


def test_a_damaged_table_page_is_found_at_open(tmp_path):
    path = str(tmp_path / "pql.db")
    build(path)
    with sqlite3.connect(path) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'"
                            ).fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    damage(path, root - 1, page_size)
    with pytest.raises(pqlsdk.StoreCorrupt, match="pqlsdk writes nothing more"):
        pqlsdk.Client(path, rules=RULES)


def test_a_damaged_index_page_raises_instead_of_miscounting_and_stops_writes(tmp_path):
    path = str(tmp_path / "pql.db")
    build(path)
    page_size, leaves = pages_holding(path, 0x0A, b"m-ada")  # events_user index leaves
    assert len(leaves) >= 2
    damage(path, leaves[-1], page_size)  # a middle leaf: not one the check at open reads
    client = pqlsdk.Client(path, rules=RULES)
    with pytest.raises(pqlsdk.StoreCorrupt):
        client.status("m-ada")  # 101 events: never a silent smaller count
    with pytest.raises(pqlsdk.StoreCorrupt):
        client.track("new-user", "signed_up", timestamp=T0)  # no more writes to this file
    client.close()
    assert count_rows(path, "users") == 3


def test_the_full_check_finds_damage_sqlite_cannot_see_while_reading(tmp_path):
    path = str(tmp_path / "pql.db")
    build(path)
    page_size, leaves = pages_holding(path, 0x0A, b"m-ada")
    with open(path, "r+b") as handle:  # a leaf that claims 5 cells: a valid-looking page
        handle.seek(leaves[-1] * page_size + 3)
        handle.write((5).to_bytes(2, "big"))
    with sqlite3.connect(path) as conn:
        problems = filecheck.integrity_check(conn)
    assert problems and any("index" in p or "entries" in p or "missing" in p
                            for p in problems), problems


def test_a_full_disk_raises_store_full_and_keeps_what_was_acknowledged(make_client, db_path):
    client = make_client(RULES)
    client.track("warmup", "report_generated", timestamp=T0)
    pages = client.store.db.conn.execute("PRAGMA page_count").fetchone()[0]
    client.store.db.conn.execute(f"PRAGMA max_page_count = {pages + 20}")
    acknowledged = 1
    with pytest.raises(pqlsdk.StoreFull, match="disk or quota is full") as caught:
        for n in range(10_000):
            client.track(f"user-{n}", "report_generated", {"pad": "x" * 1000}, timestamp=T0)
            acknowledged += 1
    assert caught.value.path == db_path
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "cannot rollback" not in str(caught.value)
    assert not client.store.db.conn.in_transaction
    assert count_rows(db_path, "events") == acknowledged  # the failed call left nothing
    client.store.db.conn.execute("PRAGMA max_page_count = 1073741823")
    client.track("after", "report_generated", timestamp=T0)  # space again: it goes on
    assert count_rows(db_path, "events") == acknowledged + 1


@contextlib.contextmanager
def small_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs",
                               str(mount)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the max_page_count test covers "
                    "a full disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_really_full_disk_raises_store_full_with_the_real_cause(tmp_path):
    with small_tmpfs(tmp_path) as mount:
        path = str(mount / "pql.db")
        client = pqlsdk.Client(path, rules=RULES)
        acknowledged = 0
        with pytest.raises(pqlsdk.StoreFull) as caught:
            for n in range(10_000):
                client.track("u", "report_generated", {"pad": "x" * 2000, "n": n},
                             timestamp=T0)
                acknowledged += 1
        assert "cannot rollback" not in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        client.close()
        assert count_rows(path, "events") == acknowledged


def test_a_lock_held_elsewhere_raises_store_busy_and_opening_needs_no_lock(make_client,
                                                                          db_path):
    client = make_client(RULES)
    client.track("ada", "report_generated", timestamp=T0)
    client.close()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        reader = make_client(RULES, busy_timeout=0.2)  # a current file: opened read-only
        assert reader.status("ada").stage == "lead"
        with pytest.raises(pqlsdk.StoreBusy, match="--busy-timeout") as caught:
            reader.track("ada", "report_generated", timestamp=T0)
        assert caught.value.path == db_path
        assert "0.2 s" in str(caught.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    reader.track("ada", "report_generated", timestamp=T0)
    assert count_rows(db_path, "events") == 2


def test_an_old_sqlite_is_refused_before_any_file_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(filecheck, "MIN_SQLITE", (99, 0, 0))
    path = tmp_path / "pql.db"
    with pytest.raises(pqlsdk.StoreError, match=r"needs SQLite 99\.0\.0 or newer"):
        pqlsdk.Client(str(path), rules=RULES)
    assert not path.exists()
    with pytest.raises(pqlsdk.StoreError, match=r"needs SQLite 3\.35\.0"):
        monkeypatch.undo()
        filecheck.require_sqlite((3, 34, 1))


def test_store_errors_are_pqlsdk_errors_and_old_names_still_import():
    from pqlsdk.store import SchemaTooNew, StoreClosed

    for error in (pqlsdk.StoreBusy, pqlsdk.StoreFull, pqlsdk.StoreCorrupt, SchemaTooNew,
                  StoreClosed):
        assert issubclass(error, pqlsdk.StoreError)
        assert issubclass(error, pqlsdk.PqlError)


@pytest.mark.parametrize("mode", ["normal", "full"])
def test_synchronous_is_set_on_the_connection(make_client, mode):
    client = make_client(RULES, synchronous=mode)
    level = client.store.db.conn.execute("PRAGMA synchronous").fetchone()[0]
    assert level == {"normal": 1, "full": 2}[mode]


def test_a_bad_synchronous_is_refused(make_client):
    with pytest.raises(pqlsdk.ValidationError, match="synchronous must be one of normal, full"):
        make_client(RULES, synchronous="off")


def test_the_check_at_open_reads_every_table_and_index(tmp_path):
    path = str(tmp_path / "pql.db")
    pqlsdk.Client(path, rules=RULES).close()
    conn = sqlite3.connect(path)
    read: list[str] = []
    conn.set_trace_callback(read.append)
    filecheck.probe(conn)
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND rootpage > 0 "
        "AND name NOT LIKE 'sqlite_autoindex%'")]
    for name in names:
        assert any(f'"{name}"' in sql for sql in read), name
    conn.close()


def test_secure_delete_is_on_even_where_the_build_turns_it_off(make_client):
    client = make_client(RULES)
    assert client.store.db.conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
