"""Delivery against what production throws at it: bad rows, bad messages, Segment's status
table, hanging destinations, deadlines, expiring leases, a crashing sink."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from segment.analytics import Client as SegmentClient

import pqlsdk
from pqlsdk import event
from pqlsdk import outbox as outbox_module
from pqlsdk.sinks import StatusClass, retry_after, status_class

from .conftest import count_rows

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
ONE = [pqlsdk.Rule("one", event("report_generated", at_least=1), stage="mql")]


def insert_poison(path: str, destination: str, payload: str = "{not json",
                  kind: str = "qualification", fmt: int = 1) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO outbox (tenant_key, destination, kind, user_id, payload, "
            "next_attempt_at, created_at, format) VALUES ('x', ?, ?, 'x', ?, 0, 0, ?)",
            (destination, kind, payload, fmt))


def track_ids(server) -> list[str]:
    return [m["userId"] for m in server.messages if m["type"] == "track"]


# -- rows that fail alone ------------------------------------------------------------------

def test_a_poison_row_among_good_rows_fails_alone_for_two_destinations(
        make_client, db_path, segment_server, segment_client):
    got = []
    client = make_client(ONE, segment=segment_client, on_qualified={"crm": got.append},
                         sync_mode=True)
    client.track("a", "report_generated")
    insert_poison(db_path, "callback:crm")
    insert_poison(db_path, "segment", payload='{"moved_to": null}')  # names no qualification
    insert_poison(db_path, "segment", payload="[]", kind="track", fmt=0)  # an older format
    client.track("b", "report_generated")
    assert client.flush() is False  # returns: the poison rows failed, nothing spins
    assert [q.subject_id for q in got] == ["a", "b"]
    assert track_ids(segment_server) == ["a", "b"]
    failed = client.deliveries(status="failed")
    assert sorted(d.destination for d in failed) == ["callback:crm", "segment", "segment"]
    assert all("Undeliverable" in d.last_error and d.attempts == 1 for d in failed)
    assert {d.payload for d in failed if d.destination == "callback:crm"} == {"{not json"}
    assert any("format 0" in d.last_error for d in failed)
    assert client.retry_failed() == 3  # revived, and failing alone again
    assert len(client.deliveries(status="failed")) == 3
    client.track("c", "report_generated")
    assert [q.subject_id for q in got] == ["a", "b", "c"]


def test_a_sink_builder_that_raises_fails_its_row_and_the_worker_goes_on(
        make_client, segment_server, segment_client, monkeypatch):
    real = outbox_module.qualification_messages

    def builder(q):
        if q.subject_id == "bad":
            raise KeyError("rule")
        return real(q)

    monkeypatch.setattr(outbox_module, "qualification_messages", builder)
    client = make_client(ONE, segment=segment_client, poll_interval=0.05)
    for user in ("a", "bad", "c"):
        client.track(user, "report_generated")
    assert client.flush(timeout=10) is False
    assert track_ids(segment_server) == ["a", "c"]
    [failed] = client.deliveries(status="failed")
    assert "cannot be built: KeyError" in failed.last_error
    assert client._worker.running


def test_the_worker_logs_an_unexpected_error_and_keeps_going(make_client, monkeypatch, caplog):
    got, crashed = [], threading.Event()
    real = outbox_module.Outbox._settle

    def settle_once_broken(self, rows, results, token):
        if not crashed.is_set():
            crashed.set()
            raise sqlite3.ProgrammingError("a bug")  # not a closed store: keep going
        return real(self, rows, results, token)

    monkeypatch.setattr(outbox_module.Outbox, "_settle", settle_once_broken)
    client = make_client(ONE, on_qualified={"crm": got.append}, delivery_lease=0.3,
                         poll_interval=0.05)
    with caplog.at_level(logging.ERROR, logger="pqlsdk"):
        client.track("a", "report_generated")
        assert crashed.wait(10)
        assert client.flush(timeout=10) is True  # the lease ran out; delivered again
    assert "failed unexpectedly; going on" in caplog.text
    assert [q.subject_id for q in got] == ["a", "a"]  # at least once
    client.track("b", "report_generated")
    assert client.flush(timeout=10) is True
    assert [q.subject_id for q in got][-1] == "b"


# -- Segment: sizes, status classes, Retry-After -----------------------------------------

def test_an_oversized_message_fails_alone_and_its_batch_goes_out(
        make_client, segment_server, segment_client):
    client = make_client(None, segment=segment_client, forward_events=True)
    client._worker.stop(0)  # rows are written with no delivery; flush() sends one batch
    client.track("a", "report_generated")
    # properties may hold 32 KiB (the edge's limit); with the message around them, over it
    client.track("big", "report_generated", {"blob": "x" * 32_700})
    client.track("c", "report_generated")
    assert client.flush() is False
    assert segment_server.requests == 1
    assert track_ids(segment_server) == ["a", "c"]
    [failed] = client.deliveries(status="failed")
    assert failed.user_id == "big" and "32,768-byte limit" in failed.last_error


def test_a_final_400_fails_only_the_rows_it_concerns(make_client, segment_server,
                                                     segment_client):
    segment_server.reject = lambda m: m.get("userId") in ("bad1", "bad2")
    client = make_client(None, segment=segment_client, forward_events=True)
    client._worker.stop(0)  # rows are written with no delivery; flush() sends them
    users = [f"u{i}" for i in range(40)]
    users[3], users[27] = "bad1", "bad2"
    for user in users:
        client.track(user, "report_generated")
    assert client.flush() is False
    assert track_ids(segment_server) == [u for u in users if not u.startswith("bad")]
    failed = client.deliveries(status="failed")
    assert sorted(d.user_id for d in failed) == ["bad1", "bad2"]
    assert all("Fatal" in d.last_error and d.attempts == 1 for d in failed)
    assert segment_server.requests <= 25  # by halves, not one request per row


@pytest.mark.parametrize("status", [408, 410, 429, 460, 500, 502, 503, 504])
def test_retryable_statuses_honour_retry_after(make_client, segment_server, segment_client,
                                               status):
    segment_server.script = [(status, {"Retry-After": "120"})]
    errors = []
    with freeze_time(T0) as frozen:
        client = make_client(ONE, segment=segment_client, sync_mode=True,
                             on_error=lambda exc, d: errors.append(d))
        client.track("a", "report_generated")
        [row] = client.deliveries(status="pending")
        assert row.next_attempt_at == T0 + timedelta(seconds=120)
        assert str(status) in row.last_error
        assert [d.status for d in errors] == ["pending"]
        frozen.tick(timedelta(seconds=119))
        assert client.flush() is False  # not due: Segment asked for two minutes
        frozen.tick(timedelta(seconds=2))
        assert client.flush() is True
    assert track_ids(segment_server) == ["a"]
    assert segment_server.requests == 2


def test_500_then_200_is_delivered_once(make_client, segment_server, segment_client):
    segment_server.script = [(500, {})]
    with freeze_time(T0) as frozen:
        client = make_client(ONE, segment=segment_client, sync_mode=True)
        [q] = client.track("a", "report_generated")
        frozen.tick(timedelta(seconds=2))
        assert client.flush() is True
    assert [m["messageId"] for m in segment_server.messages if m["type"] == "track"] == [q.id]


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422, 501, 505])
def test_final_statuses_fail_the_row_and_on_error_sees_failed(make_client, segment_server,
                                                              segment_client, status):
    segment_server.script = [(status, {"Retry-After": "1"})]
    errors = []
    client = make_client(ONE, segment=segment_client, sync_mode=True,
                         on_error=lambda exc, d: errors.append(d))
    client.track("a", "report_generated")
    [failed] = client.deliveries(status="failed")
    assert failed.attempts == 1 and "Fatal" in failed.last_error
    assert [d.status for d in errors] == ["failed"]


def test_on_error_is_told_failed_on_the_last_attempt(make_client):
    statuses = []

    def down(q):
        raise RuntimeError("down")

    with freeze_time(T0) as frozen:
        client = make_client(ONE, on_qualified={"down": down}, sync_mode=True, max_retries=2,
                             on_error=lambda exc, d: statuses.append(d.status))
        client.track("a", "report_generated")
        frozen.tick(timedelta(minutes=5))
        client.flush()
    assert statuses == ["pending", "failed"]


def test_the_status_table():
    assert status_class(200) is StatusClass.DELIVERED
    retried = {s for s in range(300, 600) if status_class(s) is StatusClass.RETRY}
    assert retried == {408, 410, 429, 460} | (set(range(500, 600)) - {501, 505})
    assert status_class(404) is status_class(501) is status_class(304) is StatusClass.FINAL
    assert retry_after("7") == 7
    assert retry_after("100000") == 300
    assert retry_after("Wed, 02 Dec 2026 12:00:30 GMT",
                       now=datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc).timestamp()) == 30
    assert retry_after("soon") is None and retry_after(None) is None


def test_a_segment_client_with_send_false_keeps_rows_pending(make_client, segment_server,
                                                             caplog):
    quiet = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True, send=False)
    with caplog.at_level(logging.WARNING, logger="pqlsdk"):
        client = make_client(ONE, segment=quiet, sync_mode=True)
    assert "send=False" in caplog.text
    client.track("a", "report_generated")
    assert client.flush() is True  # nothing this Client sends is left: Segment is off
    [row] = client.deliveries(status="pending")
    assert (row.destination, row.attempts) == ("segment", 0)
    assert segment_server.requests == 0


def test_gzip_is_used_when_the_segment_client_asks(make_client, segment_server):
    zipped = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True, gzip=True)
    client = make_client(ONE, segment=zipped, sync_mode=True)
    client.track("a", "report_generated")
    [batch] = segment_server.batches
    assert batch["headers"]["Content-Encoding"] == "gzip"
    assert track_ids(segment_server) == ["a"]


# -- order ---------------------------------------------------------------------------------

def test_order_is_kept_when_the_head_row_fails(make_client):
    calls = []

    def flaky(q):
        calls.append(q.subject_id)
        if calls == ["a"]:
            raise ConnectionError("CRM timeout")

    with freeze_time(T0) as frozen:
        client = make_client(ONE, on_qualified={"crm": flaky}, sync_mode=True)
        client.track("a", "report_generated")
        client.track("b", "report_generated")  # waits behind a, not sent before it
        assert calls == ["a"]
        [a, b] = client.deliveries()
        assert (a.attempts, b.attempts) == (1, 0)
        frozen.tick(timedelta(minutes=1))
        assert client.flush() is True
    assert calls == ["a", "a", "b"]


def test_sync_mode_retries_a_failed_delivery_on_the_next_call(make_client, segment_server,
                                                              segment_client):
    segment_server.fail_next = 1
    with freeze_time(T0) as frozen:
        client = make_client(ONE, segment=segment_client, sync_mode=True)
        client.track("a", "report_generated")
        assert track_ids(segment_server) == []
        frozen.tick(timedelta(seconds=5))
        client.track("b", "report_generated")
    assert track_ids(segment_server) == ["a", "b"]


# -- isolated destinations -----------------------------------------------------------------

def test_a_hanging_callback_holds_only_its_own_rows(make_client, segment_server,
                                                    segment_client):
    release, stuck = threading.Event(), threading.Event()
    later, all_later = [], threading.Event()
    users = [f"u{i}" for i in range(150)]  # more than one claim

    def hangs(q):
        stuck.set()
        release.wait(30)

    def fine(q):
        later.append(q.subject_id)
        if len(later) == len(users) - 1:
            all_later.set()

    client = make_client(ONE, segment=segment_client, on_qualified={"hangs": hangs})
    client.track(users[0], "report_generated")
    assert stuck.wait(10)
    client.on_qualified(fine, name="fine")  # registered after the hang began
    for user in users[1:]:
        client.track(user, "report_generated")
    try:
        assert all_later.wait(20)  # u0's rows were written before "fine" was there
        assert client.flush(timeout=20) is False  # the hanging callback's rows wait
        assert later == users[1:]
        assert track_ids(segment_server) == users
        pending = {d.destination for d in client.deliveries(status="pending")}
        assert pending == {"callback:hangs"}
    finally:
        release.set()
    assert client.flush(timeout=20) is True


def test_flush_and_close_with_a_hanging_callback_keep_their_deadline(make_client):
    release = threading.Event()
    client = make_client(ONE, on_qualified={"hangs": lambda q: release.wait(30)})
    try:
        client.track("a", "report_generated")
        started = time.monotonic()
        assert client.flush(timeout=1) is False
        assert client.close(timeout=1) is False
        assert time.monotonic() - started < 4
    finally:
        release.set()


def test_sync_mode_flush_with_a_timeout_never_runs_a_sink_past_it(make_client, db_path):
    first = make_client(ONE, on_qualified={"crm": lambda q: 1 / 0}, sync_mode=True,
                        max_backoff=0.01)
    first.track("a", "report_generated")  # fails: left pending for "crm", due at once
    first.close(timeout=0)
    release, threads = threading.Event(), []

    def hangs(q):
        threads.append(threading.current_thread().name)
        release.wait(30)

    client = make_client(ONE, on_qualified={"crm": hangs}, sync_mode=True)
    try:
        started = time.monotonic()
        assert client.flush(timeout=1) is False
        assert time.monotonic() - started < 4
        assert threads and threading.current_thread().name not in threads
    finally:
        release.set()


def test_close_with_a_trickling_collector_keeps_its_deadline(make_client, segment_server):
    segment_server.trickle = 0.5
    slow = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True, timeout=2)
    client = make_client(ONE, segment=slow)
    client.track("a", "report_generated")
    assert segment_server.arrived.wait(10)
    started = time.monotonic()
    assert client.close(timeout=1) is False
    assert time.monotonic() - started < 4
    segment_server.release()


LOCKER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("pending", [False, True])
def test_close_while_another_process_holds_the_lock_keeps_its_deadline(make_client, db_path,
                                                                       pending):
    def crm(q):
        if pending:
            raise ConnectionError("down: retried at once, so the worker wants the lock")

    client = make_client(ONE, on_qualified={"crm": crm}, poll_interval=0.05,
                         max_backoff=0.01, max_retries=10_000)
    client.track("a", "report_generated")
    assert client.flush(timeout=10) is not pending
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, db_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        assert status_and_report_do_not_wait(client)
        assert client.close(timeout=1) is (not pending)
        assert time.monotonic() - started < 4
    finally:
        locker.stdin.close()
        locker.wait(10)
        locker.stdout.close()


def test_flush_and_close_keep_their_deadline_while_a_report_holds_the_read_connection(
        make_client):
    def crm(q):
        raise ConnectionError("down: the row stays pending, so flush keeps looking")

    client = make_client(ONE, on_qualified={"crm": crm}, max_backoff=0.01,
                         max_retries=10_000)
    client.track("a", "report_generated")
    held, release = threading.Event(), threading.Event()

    def long_report():  # what funnel(), backtest() or suggest() over a big file does
        with client.store.read():
            held.set()
            release.wait(30)

    report = threading.Thread(target=long_report)
    report.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        assert client.flush(timeout=0.5) is False
        assert client.close(timeout=1) is False
        assert time.monotonic() - started < 4
    finally:
        release.set()
        report.join(10)
    with pytest.raises(pqlsdk.StoreClosed):
        client.status("a")


def status_and_report_do_not_wait(client) -> bool:
    client.status("a")
    client.funnel()
    return client.deliveries(status="failed") == []


# -- leases --------------------------------------------------------------------------------

def test_a_slow_collector_past_the_lease_gets_each_message_once(make_client, db_path,
                                                                segment_server):
    segment_server.delay = 4.0
    slow = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True, timeout=10)
    client = make_client(ONE, segment=slow, delivery_lease=3)
    for user in ("a", "b", "c"):
        client.track(user, "report_generated")
    assert segment_server.arrived.wait(10)
    other = make_client(ONE, database=db_path, segment=slow, sync_mode=True,
                        delivery_lease=3)
    while not segment_server.answered.wait(0.2):  # throughout the request and past its lease
        other.flush()
    segment_server.delay = 0
    assert client.flush(timeout=15) is True
    ids = [m["messageId"] for m in segment_server.messages]
    assert len(ids) == len(set(ids)) == 6  # track + identify per user, each once


# -- names ---------------------------------------------------------------------------------

def named_hook(q):
    NAMED.append(q.subject_id)


def renamed_hook(q):
    NAMED.append(("renamed", q.subject_id))


NAMED: list = []


def test_registration_forms_and_warnings(make_client):
    client = make_client(ONE, on_qualified={"crm": named_hook})
    got = []

    @client.on_qualified
    def plain(q):
        got.append(("plain", q.subject_id))

    @client.on_qualified(name="slack")
    def named(q):
        got.append(("slack", q.subject_id))

    with pytest.warns(pqlsdk.DeliveryNameWarning, match="is a lambda"):
        client.on_qualified(lambda q: None)
    client.on_qualified(renamed_hook)
    with pytest.warns(pqlsdk.DeliveryNameWarning, match="second callable"):
        client.on_qualified(renamed_hook)
    with pytest.raises(pqlsdk.ValidationError, match="name 'crm' is already registered"):
        client.on_qualified(named_hook, name="crm")
    with pytest.raises(pqlsdk.ValidationError, match="name must be a non-empty string"):
        client.on_qualified(named_hook, name="")
    destinations = set(client._outbox.sinks)
    assert {"callback:crm", "callback:slack"} <= destinations
    assert any(d.endswith("<locals>.plain@" + d.rsplit("@", 1)[-1]) for d in destinations)
    client.track("a", "report_generated")
    assert client.flush(timeout=10) is True
    assert sorted(got) == [("plain", "a"), ("slack", "a")]


def test_two_lambdas_in_the_other_order_after_a_restart_get_nothing_of_each_other(
        make_client, db_path, caplog):
    with pytest.warns(pqlsdk.DeliveryNameWarning):
        first = make_client(ONE, on_qualified=[lambda q: 1 / 0, lambda q: 1 / 0],
                            sync_mode=True, max_retries=100)
    first.track("a", "report_generated")
    assert first.close(timeout=0) is False
    got = {"x": [], "y": []}
    with pytest.warns(pqlsdk.DeliveryNameWarning), \
            caplog.at_level(logging.WARNING, logger="pqlsdk"):
        second = make_client(ONE, on_qualified=[lambda q: got["y"].append(q),
                                                lambda q: got["x"].append(q)],
                             sync_mode=True)
        assert second.flush() is True  # nothing of its own
    assert got == {"x": [], "y": []}
    orphaned = second.deliveries(status="orphaned")
    assert len(orphaned) == 2 and all("<lambda>@" in d.destination for d in orphaned)
    assert caplog.text.count("which no callback of this Client is registered under") == 2


def test_a_renamed_callbacks_rows_are_reported_and_retargeted(make_client, caplog):
    NAMED.clear()
    with freeze_time(T0):
        first = make_client(ONE, on_qualified=named_hook, sync_mode=True)
        first._outbox.sinks["callback:tests.test_delivery_faults.named_hook"].callback = (
            lambda q: 1 / 0)  # down for now
        first.track("a", "report_generated")
        first.close(timeout=0)
    with caplog.at_level(logging.WARNING, logger="pqlsdk"):
        second = make_client(ONE, on_qualified=renamed_hook, sync_mode=True)
        second.flush()
    old = "callback:tests.test_delivery_faults.named_hook"
    assert [d.destination for d in second.deliveries(status="orphaned")] == [old]
    assert f"for {old!r}" in caplog.text and "retarget" in caplog.text
    with pytest.raises(pqlsdk.ValidationError, match="new_name must be a destination name"):
        second.retarget(old, "")
    assert second.retarget(old, "tests.test_delivery_faults.renamed_hook") == 1
    assert NAMED == [("renamed", "a")]
    assert second.deliveries() == []


# -- migration of old outbox rows ----------------------------------------------------------

@pytest.mark.parametrize("version", [2, 3])
def test_outbox_rows_of_an_older_file_are_converted_and_delivered(db_path, segment_server,
                                                                  version):
    import sqlite_utils

    from pqlsdk import store as store_module

    db = sqlite_utils.Database(db_path)
    for migration in store_module.MIGRATIONS[:version]:
        migration(db)
    db.execute(f"PRAGMA user_version = {version}")
    [made] = pqlsdk.Client(":memory:", rules=ONE).track("ada", "report_generated")
    qualification = {"id": made.id, "rule": "one", "stage": "mql", "subject_type": "user",
                     "subject_id": "ada", "user_id": "ada", "account_id": None,
                     "qualified_at": 1_700_000_000_000_000,
                     "evidence": json.dumps(made.evidence.to_dict())}
    db["qualifications"].insert(qualification)
    db["users"].insert({"user_id": "ada", "account_id": None, "traits": "{}",
                        "first_seen": 1_700_000_000_000_000})
    old_messages = [{"type": "track", "messageId": made.id, "userId": "ada"},
                    {"type": "identify", "traits": {"lifecycle_stage": "mql"}}]
    for destination, payload in (
            ("callback:tests.test_delivery_faults.named_hook", {"id": made.id, "rule": "one"}),
            ("segment", old_messages),
            ("segment", "not json at all")):
        db["outbox"].insert({"destination": destination, "kind": "qualification",
                             "user_id": "ada", "next_attempt_at": 0, "created_at": 0,
                             "payload": payload if isinstance(payload, str)
                             else json.dumps(payload)})
    db.conn.commit()
    db.close()
    NAMED.clear()
    segment = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    client = pqlsdk.Client(db_path, rules=ONE, segment=segment, on_qualified=named_hook,
                           sync_mode=True)
    try:
        version_now = client.store.db.execute("PRAGMA user_version").fetchone()[0]
        assert version_now == len(store_module.MIGRATIONS)
        assert client.flush() is False  # the unreadable row failed alone
        assert NAMED == ["ada"]
        track, identify = segment_server.messages
        assert (track["messageId"], track["event"]) == (made.id, "Lead Qualified")
        assert identify["traits"] == {"lifecycle_stage": "mql"}
        [failed] = client.deliveries(status="failed")
        assert failed.payload == "not json at all"
    finally:
        client.close()
    assert count_rows(db_path, "outbox") == 1



# -- a second connection in one process ----------------------------------------------------

def hammer_and_recount(path: str, worker: int, start, results) -> None:
    client = pqlsdk.Client(path, rules=ONE)  # a write and a read connection
    start.wait(60)
    for i in range(150):
        client.track(f"u{i % 3}", "report_generated", message_id=f"{worker}-{i}")
    client.close()
    with sqlite3.connect(path) as conn:
        results.put(conn.execute("SELECT count(*) FROM events WHERE message_id LIKE ?",
                                 (f"{worker}-%",)).fetchone()[0])


@pytest.mark.parametrize("round_", [1, 2])
def test_every_process_keeps_its_commits_with_a_read_connection_open(tmp_path, round_):
    """Opening the read connection must not drop the process's locks on the file (reading
    the header through a descriptor of its own did): another process could then reset the
    WAL under the open write connection, and commits were lost."""
    import multiprocessing

    path = str(tmp_path / "shared.db")
    pqlsdk.Client(path, rules=ONE).close()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=hammer_and_recount, args=(path, n, start, results))
               for n in range(4)]
    for process in workers:
        process.start()
    start.set()
    kept = [results.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(30)
    assert kept == [150] * 4
    assert count_rows(path, "events") == 600
