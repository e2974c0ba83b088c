"""Delivery from the durable outbox to callbacks and to a real Segment client + HTTP server."""

from __future__ import annotations

import base64
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from segment.analytics import Client as SegmentClient

import pqlsdk
from pqlsdk import event

from .conftest import count_rows

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
REPORTS = [pqlsdk.Rule("reports", event("report_generated", at_least=2), stage="mql")]
TEAM = [pqlsdk.Rule("team", event("report_generated", at_least=2), subject="account",
                    stage="sql")]


def qualify(client, user="ada", account=None, at=T0):
    client.track(user, "report_generated", account_id=account, timestamp=at)
    return client.track(user, "report_generated", account_id=account,
                        timestamp=at + timedelta(minutes=1))


def test_segment_receives_lead_qualified_and_lifecycle_identify(
        make_client, segment_server, segment_client):
    client = make_client(REPORTS, segment=segment_client, sync_mode=True)
    [q] = qualify(client, account="acme")

    [batch] = segment_server.batches
    assert batch["body"]["writeKey"] == "test-write-key"
    expected_auth = "Basic " + base64.b64encode(b"test-write-key:").decode()
    assert batch["headers"]["Authorization"] == expected_auth
    track, identify = batch["body"]["batch"]
    assert track["type"] == "track"
    assert track["event"] == "Lead Qualified"
    assert track["userId"] == "ada"
    assert track["messageId"] == q.id
    assert track["timestamp"] == "2026-11-02T09:01:00.000+00:00"
    assert track["context"]["groupId"] == "acme"
    assert track["context"]["library"]["name"] == "analytics-python"
    assert track["properties"] == {
        "rule": "reports",
        "stage": "mql",
        "subject_type": "user",
        "subject_id": "ada",
        "account_id": "acme",
        "qualification_id": q.id,
        "qualified_at": "2026-11-02T09:01:00+00:00",
    }
    assert identify["type"] == "identify"
    assert identify["userId"] == "ada"
    assert identify["traits"] == {"lifecycle_stage": "mql"}
    assert identify["messageId"] != q.id
    assert client.deliveries() == []


def test_account_qualification_also_sets_the_group_stage(
        make_client, segment_server, segment_client):
    client = make_client(TEAM, segment=segment_client, sync_mode=True)
    [q] = qualify(client, account="acme")
    track, identify, group = segment_server.messages
    assert (track["properties"]["subject_type"], track["properties"]["subject_id"]) == (
        "account", "acme")
    assert identify["traits"] == {"lifecycle_stage": "sql"}
    assert (group["type"], group["groupId"], group["traits"]) == (
        "group", "acme", {"lifecycle_stage": "sql"})
    assert len({m["messageId"] for m in (track, identify, group)}) == 3
    assert track["messageId"] == q.id


def test_forward_events_mirrors_every_call_with_its_own_message_id(
        make_client, segment_server, segment_client):
    client = make_client(None, segment=segment_client, forward_events=True, sync_mode=True)
    client.identify("ada", {"plan": "trial"}, timestamp=T0)
    client.group("ada", "acme", {"seats": 12}, timestamp=T0)
    client.track("ada", "report_generated", {"report": "pipeline"}, timestamp=T0,
                 message_id="evt-1")
    client.track("ada", "report_generated", {"report": "pipeline"}, message_id="evt-1")
    identify, group, track = segment_server.messages
    assert (identify["type"], identify["traits"]) == ("identify", {"plan": "trial"})
    assert (group["type"], group["groupId"], group["traits"]) == ("group", "acme",
                                                                  {"seats": 12})
    assert (track["type"], track["event"], track["properties"]) == (
        "track", "report_generated", {"report": "pipeline"})
    assert track["messageId"] == "evt-1"
    assert track["context"]["groupId"] == "acme"
    assert track["timestamp"] == "2026-11-02T09:00:00.000+00:00"
    assert len({identify["messageId"], group["messageId"]}) == 2


def test_segment_down_then_back_loses_nothing_and_sends_once(
        make_client, segment_server, segment_client):
    errors = []
    segment_server.fail_next = 3
    with freeze_time(T0) as frozen:
        client = make_client(REPORTS, segment=segment_client, sync_mode=True,
                             on_error=lambda exc, d: errors.append((exc, d)))
        [q] = qualify(client)
        assert segment_server.messages == []
        [pending] = client.deliveries(status="pending")
        assert (pending.destination, pending.kind, pending.attempts) == (
            "segment", "qualification", 1)
        assert "503" in pending.last_error
        assert pending.payload == {"qualification_id": q.id, "moved_to": "mql"}
        assert client.flush() is False  # not due yet: backing off
        for _ in range(3):
            frozen.tick(timedelta(minutes=10))
            client.flush()
    assert [m["messageId"] for m in segment_server.messages] == [
        q.id, segment_server.messages[1]["messageId"]]
    assert segment_server.requests == 4
    assert [d.attempts for _, d in errors] == [1, 2, 3]
    assert all(d.status == "pending" for _, d in errors)
    assert client.deliveries() == []


def test_backoff_grows_exponentially_with_jitter_up_to_max_backoff(make_client, segment_server,
                                                                   segment_client):
    segment_server.fail_next = 100
    with freeze_time(T0) as frozen:
        client = make_client(REPORTS, segment=segment_client, sync_mode=True, max_backoff=8)
        qualify(client)
        waits = []
        for _ in range(6):
            row = client.deliveries()[0]
            now = datetime.now(timezone.utc)
            waits.append((row.next_attempt_at - now).total_seconds())
            frozen.tick(timedelta(seconds=waits[-1] + 0.001))
            client.flush()
    bounds = [1, 2, 4, 8, 8, 8]
    assert all(b / 2 <= w <= b for w, b in zip(waits, bounds, strict=True)), waits


def test_callback_that_raises_twice_then_succeeds(make_client):
    calls, errors = [], []

    def flaky(q):
        calls.append(q.id)
        if len(calls) <= 2:
            raise ConnectionError("CRM timeout")

    with freeze_time(T0) as frozen:
        client = make_client(REPORTS, on_qualified=flaky, sync_mode=True,
                             on_error=lambda exc, d: errors.append((str(exc), d.attempts)))
        [q] = qualify(client)
        for _ in range(2):
            frozen.tick(timedelta(minutes=5))
            client.flush()
    assert calls == [q.id, q.id, q.id]
    assert errors == [("CRM timeout", 1), ("CRM timeout", 2)]
    assert client.deliveries() == []
    assert client.qualifications() == [q]


def test_after_max_retries_a_delivery_is_kept_as_failed_and_can_be_retried(make_client):
    attempts = []

    def down(q):
        attempts.append(q)
        if len(attempts) <= 3:
            raise RuntimeError("still down")

    with freeze_time(T0) as frozen:
        client = make_client(REPORTS, on_qualified=down, sync_mode=True, max_retries=3)
        qualify(client)
        for _ in range(5):
            frozen.tick(timedelta(minutes=10))
            client.flush()
        assert len(attempts) == 3
        [failed] = client.deliveries(status="failed")
        assert failed.attempts == 3 and "still down" in failed.last_error
        assert client.deliveries(status="pending") == []
        assert client.retry_failed() == 1
    assert len(attempts) == 4
    assert client.deliveries() == []


def test_segment_4xx_is_final_and_not_retried(make_client, segment_server, segment_client):
    segment_server.fail_next, segment_server.fail_status = 1, 400
    with freeze_time(T0) as frozen:
        client = make_client(REPORTS, segment=segment_client, sync_mode=True)
        qualify(client)
        frozen.tick(timedelta(hours=1))
        client.flush()
    [failed] = client.deliveries(status="failed")
    assert failed.attempts == 1 and "Fatal" in failed.last_error
    assert segment_server.requests == 1


def test_sync_mode_delivers_before_track_returns_in_the_calling_thread(make_client):
    threads = []
    client = make_client(REPORTS, on_qualified=lambda q: threads.append(
        threading.current_thread().name), sync_mode=True)
    qualify(client)
    assert threads == [threading.current_thread().name]
    assert not client._worker.running


def test_async_mode_delivers_from_the_worker_thread(make_client):
    threads = []
    started = threading.Event()
    proceed = threading.Event()

    def slow(q):
        started.set()
        proceed.wait(10)
        threads.append(threading.current_thread().name)

    client = make_client(REPORTS, on_qualified=slow)
    qualify(client)  # returns while the callback is still running
    assert started.wait(10)
    assert threads == []
    proceed.set()
    assert client.flush(timeout=10) is True
    assert threads[0].startswith("pqlsdk-delivery:callback:")


def test_one_row_per_destination_in_the_events_transaction(make_client, db_path,
                                                           segment_server, segment_client):
    def first(q):
        raise RuntimeError("no")

    def second(q):
        raise RuntimeError("no")

    segment_server.fail_next = 10
    with freeze_time(T0):
        client = make_client(REPORTS, on_qualified={"first": first, "second": second},
                             segment=segment_client, sync_mode=True)
        client.track("ada", "report_generated")
        assert count_rows(db_path, "outbox") == 0  # nothing qualified, nothing queued
        qualify(client, user="bob")
    rows = sorted((d.destination, d.kind) for d in client.deliveries())
    assert rows == [
        ("callback:first", "qualification"),
        ("callback:second", "qualification"),
        ("segment", "qualification"),  # Lead Qualified + the lifecycle stage it moved to
    ]
    assert count_rows(db_path, "outbox") == 3


def test_restart_delivers_what_was_pending(make_client, db_path, segment_server):
    segment_server.fail_next = 1000
    down = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    first = make_client(REPORTS, segment=down, sync_mode=True, max_backoff=0.05,
                        max_retries=1000)
    [q] = qualify(first)
    assert first.close(timeout=1) is False
    assert count_rows(db_path, "outbox") == 1

    segment_server.fail_next = 0
    up = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    second = make_client(REPORTS, segment=up, max_backoff=0.01)
    assert second.flush(timeout=10) is True
    assert [m["messageId"] for m in segment_server.messages][:1] == [q.id]
    assert count_rows(db_path, "outbox") == 0


def test_close_with_a_hanging_server_returns_within_its_bound(make_client, segment_server):
    segment_server.hold = True
    hanging = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True, timeout=30)
    client = make_client(REPORTS, segment=hanging)
    qualify(client)
    assert segment_server.arrived.wait(10)
    started = time.monotonic()
    assert client.close(timeout=1.0) is False
    assert time.monotonic() - started < 5
    segment_server.release()


def test_deliveries_refuses_an_unknown_status(make_client):
    client = make_client(REPORTS)
    with pytest.raises(pqlsdk.ValidationError, match="status must be 'pending', 'failed'"):
        client.deliveries(status="done")


def test_bad_delivery_options_are_refused(db_path):
    with pytest.raises(pqlsdk.ValidationError, match=r"segment must be a segment\.analytics"):
        pqlsdk.Client(db_path, segment="write-key")
    with pytest.raises(pqlsdk.ValidationError, match="max_retries must be"):
        pqlsdk.Client(db_path, max_retries=0)


CRM = {"down": True, "received": [], "arrived": threading.Event()}


def crm_hook(q):
    if CRM["down"]:
        raise ConnectionError("CRM down")
    CRM["received"].append(q.id)
    CRM["arrived"].set()


def test_a_callback_registered_after_a_restart_gets_what_was_left_for_it(make_client):
    CRM.update(down=True, received=[], arrived=threading.Event())  # once per engine
    first = make_client(REPORTS, on_qualified=crm_hook, sync_mode=True, max_backoff=0.01)
    [q] = qualify(first)
    assert first.close(timeout=0) is False
    CRM["down"] = False
    second = make_client(REPORTS)
    assert second.deliveries()[0].destination == "callback:tests.test_delivery.crm_hook"
    second.on_qualified(crm_hook)  # the decorator form, after the Client was made
    assert CRM["arrived"].wait(10), "the worker did not deliver the pending row"
    assert CRM["received"] == [q.id]
