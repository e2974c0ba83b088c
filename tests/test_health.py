"""client.health(), Client(send=False) and async def callbacks on the sync Client."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

import pqlsdk
from pqlsdk import event

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
REPORTS = [pqlsdk.Rule("reports", event("report_generated", at_least=2), stage="mql")]


def qualify(client, user="ada", at=T0):
    client.track(user, "report_generated", timestamp=at)
    return client.track(user, "report_generated", timestamp=at + timedelta(minutes=1))


def test_send_false_records_and_runs_callbacks_but_never_contacts_segment(
        make_client, segment_server, segment_client):
    seen = []
    client = make_client(REPORTS, segment=segment_client, sync_mode=True, send=False,
                         forward_events=True)
    client.on_qualified(seen.append, name="crm")
    [q] = qualify(client)

    assert seen == [q]
    assert client.qualifications() == [q]
    assert segment_server.requests == 0
    assert client.flush(timeout=0.2) is True  # nothing this process delivers is left
    assert segment_server.requests == 0
    health = client.health()
    assert health.sending is False
    segment = health.destination("segment")
    assert segment.pending == 3  # two mirrored tracks and the qualification
    assert segment.active is False
    assert health.destination("callback:crm").pending == 0


def test_rows_left_by_send_false_go_out_when_a_sending_client_opens_the_file(
        make_client, segment_server, segment_client, db_path):
    quiet = make_client(REPORTS, segment=segment_client, sync_mode=True, send=False)
    [q] = qualify(quiet)
    quiet.close()
    assert segment_server.requests == 0
    loud = make_client(REPORTS, segment=segment_client, sync_mode=True)
    assert loud.flush(timeout=5) is True
    assert next(m["messageId"] for m in segment_server.messages) == q.id
    assert loud.health().pending == 0


def test_health_counts_pending_failed_age_and_last_error(make_client, db_path):
    calls = []

    def flaky(q):
        calls.append(q)
        raise RuntimeError(f"crm down for {q.subject_id}")

    with freeze_time(T0) as clock:
        client = make_client(REPORTS, sync_mode=True, max_retries=1)
        client.on_qualified(flaky, name="crm")
        qualify(client, "ada")
        clock.tick(30)
        client.track("bob", "report_generated", timestamp=T0)
        client.track("bob", "report_generated", timestamp=T0)
        clock.tick(60)
        health = client.health()
    name = "callback:crm"
    figures = health.destination(name)
    assert figures.failed == 2 and figures.pending == 0
    assert figures.active is True
    assert health.last_error == "RuntimeError: crm down for bob"
    assert figures.last_error == "RuntimeError: crm down for bob"
    assert health.failed == 2
    assert health.schema_version == sqlite3.connect(db_path).execute(
        "PRAGMA user_version").fetchone()[0]
    wal = db_path + "-wal"
    assert health.file_bytes == os.path.getsize(db_path) + (
        os.path.getsize(wal) if os.path.exists(wal) else 0)
    assert client.retry_failed() == 2  # tried again at once (sync mode); failed again
    assert client.health().destination(name).failed == 2
    assert len(calls) == 4


def test_oldest_pending_age_follows_the_clock(make_client):
    with freeze_time(T0) as clock:
        client = make_client(REPORTS, segment=_unreachable_segment(), send=False)
        qualify(client)
        clock.tick(90)
        health = client.health()
        assert health.destination("segment").oldest_pending_age == 90.0
        assert health.oldest_pending_age == 90.0
        assert health.to_dict()["pending"] == 1
        assert health.to_dict()["destinations"][0]["destination"] == "segment"


def _unreachable_segment():
    from segment.analytics import Client as SegmentClient

    return SegmentClient(write_key="k", host="http://127.0.0.1:9", sync_mode=True)


def test_health_of_an_in_memory_client_has_no_file_size():
    with pqlsdk.Client(":memory:", REPORTS) as client:
        health = client.health()
    assert health.file_bytes is None
    assert health.pending == 0 and health.failed == 0 and health.last_error is None
    assert health.destinations == ()


@pytest.mark.sqlite_only  # traces the SQLite connections' statements
def test_health_does_not_count_events(make_client):
    client = make_client(REPORTS)
    statements = []
    connections = {client.store.db.conn, client.store.read_db.conn}
    for conn in connections:
        conn.set_trace_callback(statements.append)
    client.health()
    for conn in connections:
        conn.set_trace_callback(None)
    assert statements and not any("events" in s for s in statements)


def test_an_async_def_callback_is_awaited_by_the_worker_thread(make_client):
    done = threading.Event()
    seen = []

    async def notify(q):
        await asyncio.sleep(0)
        seen.append((q.subject_id, threading.current_thread().name))
        done.set()

    client = make_client(REPORTS, on_qualified={"notify": notify})
    qualify(client)
    assert done.wait(10)
    assert seen == [("ada", "pqlsdk-delivery:callback:notify")]
    assert client.flush(timeout=5) is True


def test_an_async_def_callback_in_sync_mode_inside_a_running_loop(make_client):
    seen = []

    async def notify(q):
        await asyncio.sleep(0)
        seen.append(q.subject_id)

    client = make_client(REPORTS, on_qualified=notify, sync_mode=True)

    async def endpoint():  # a sync Client misused from async code still delivers
        return qualify(client)

    [_q] = asyncio.run(endpoint())
    assert seen == ["ada"]
    assert client.deliveries() == []


def test_an_async_def_callback_that_raises_is_retried(make_client):
    attempts = []

    async def flaky(q):
        attempts.append(q.id)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    client = make_client(REPORTS, on_qualified=flaky, sync_mode=True)
    [q] = qualify(client)
    [row] = client.deliveries()
    assert row.last_error == "RuntimeError: first try fails"
    with freeze_time(datetime.now(timezone.utc) + timedelta(seconds=5)):
        client.retry_failed() if row.status == "failed" else client.flush(timeout=3)
    assert attempts == [q.id, q.id]
    assert client.deliveries() == []


def test_log_lines_name_the_qualification_and_the_row(make_client, caplog):
    def refuse(q):
        raise RuntimeError("crm down")

    caplog.set_level("INFO", logger="pqlsdk")
    client = make_client(REPORTS, on_qualified=refuse, sync_mode=True)
    [q] = qualify(client)
    [row] = client.deliveries()
    records = [r for r in caplog.records if r.name == "pqlsdk"]
    assert any(q.id in r.getMessage() and "reports" in r.getMessage() for r in records)
    assert any(f"delivery {row.id} " in r.getMessage() and "crm down" in r.getMessage()
               for r in records)
