"""forward_events=True: a track's outbox row refers to its event row by message id; the
Segment message is built when it is delivered (issue 21), in order, with identify and group
still carried, wherever the user's rows moved meanwhile."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pqlsdk
from pqlsdk.messages import event_message
from pqlsdk.outbox import Outbox
from pqlsdk.store.postgres import EVENT_REF_GENERATION

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def upgraded(client):
    """``client``, its database marked as used by this release only (on PostgreSQL, what an
    operator records once no process of an older release runs): tracks by reference."""
    if client.store.engine == "postgresql":
        client.store.record_minimum(EVENT_REF_GENERATION)
    return client


def stored_payloads(client):
    with client.store.read() as tx:
        return [(row["kind"], row["format"], json.loads(row["payload"]))
                for row in tx.rows("outbox", "destination = 'segment'", [], order_by="id")]


def test_a_track_row_holds_a_reference_and_delivers_the_same_message(
        make_client, segment_server, segment_client):
    writer = upgraded(make_client(None, segment=segment_client, forward_events=True,
                                  send=False))
    writer.track("ada", "report_generated", {"report": "pipeline"}, account_id="acme",
                 timestamp=T0)
    writer.identify("ada", {"plan": "trial"}, timestamp=T0 + timedelta(seconds=1))
    writer.track("ada", "export", timestamp=T0 + timedelta(seconds=2), message_id="evt-9")
    first, identify, last = stored_payloads(writer)
    assert first[:2] == ("track", 2) and set(first[2]) == {"message_id"}
    assert last == ("track", 2, {"message_id": "evt-9"})
    with writer.store.read() as tx:  # the event row keeps the id generated for Segment
        stored = [row["message_id"] for row in tx.rows("events", "user_id = ?", ["ada"],
                                                       order_by="id")]
    assert stored == [first[2]["message_id"], "evt-9"]
    assert identify[:2] == ("identify", 1) and identify[2][0]["traits"] == {"plan": "trial"}
    writer.close()

    sender = make_client(None, segment=segment_client, forward_events=True, sync_mode=True)
    assert sender.flush()
    track, ident, export = segment_server.messages  # in the order of the calls
    assert (track["type"], track["userId"], track["event"], track["properties"]) == (
        "track", "ada", "report_generated", {"report": "pipeline"})
    assert track["messageId"] == first[2]["message_id"]
    assert track["timestamp"] == "2026-11-02T09:00:00.000+00:00"
    assert track["context"]["groupId"] == "acme"
    assert (ident["type"], ident["traits"]) == ("identify", {"plan": "trial"})
    assert (export["event"], export["messageId"], export["properties"]) == ("export", "evt-9",
                                                                            {})
    assert export["context"]["groupId"] == "acme"  # the user's account at the time
    assert sender.deliveries() == []


def test_a_row_of_the_earlier_format_still_delivers(make_client, segment_server,
                                                    segment_client):
    client = make_client(None, segment=segment_client, forward_events=True, sync_mode=True)
    message = event_message("track", "old", "2026-11-02T09:00:00.000+00:00", "old-1", None,
                            event="signup", properties={"plan": "free"})
    with client.store.write() as tx:  # what an earlier release wrote: the whole message
        tx.enqueue([Outbox.segment_row("track", "old", message, 0)])
    assert client.flush()
    [sent] = segment_server.messages
    assert (sent["messageId"], sent["event"], sent["properties"]) == ("old-1", "signup",
                                                                      {"plan": "free"})


def test_a_row_whose_event_was_pruned_fails_alone(make_client, segment_server,
                                                  segment_client):
    writer = upgraded(make_client(None, segment=segment_client, forward_events=True,
                                  send=False, retention="30d"))
    writer.track("ada", "signup", timestamp=T0)
    writer.track("bob", "signup", timestamp=T0 + timedelta(days=40))
    assert writer.prune(as_of=T0 + timedelta(days=45)) == 1  # ada's event is folded away
    writer.close()
    sender = make_client(None, segment=segment_client, forward_events=True, sync_mode=True)
    assert sender.flush() is False
    [sent] = segment_server.messages
    assert sent["userId"] == "bob"
    [failed] = sender.deliveries(status="failed")
    assert failed.user_id == "ada" and "no longer stored" in failed.last_error


def test_a_row_whose_event_is_damaged_fails_alone(db_path, segment_server, segment_client):
    """An event row whose stored properties are not JSON (a file damaged by hand): its
    mirrored track fails alone, the others of its batch are sent."""
    writer = pqlsdk.Client(db_path, segment=segment_client, forward_events=True, send=False)
    for n, user in enumerate(["ada", "bob", "cy"]):
        writer.track(user, "signup", {"n": n}, timestamp=T0 + timedelta(seconds=n),
                     message_id=f"m-{user}")
    writer.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("""UPDATE events SET properties = '{"n": }' WHERE message_id = 'm-bob'""")
    sender = pqlsdk.Client(db_path, segment=segment_client, forward_events=True,
                           sync_mode=True)
    assert sender.flush() is False
    assert [m["userId"] for m in segment_server.messages] == ["ada", "cy"]
    [failed] = sender.deliveries(status="failed")
    assert failed.user_id == "bob" and "cannot be read" in failed.last_error
    sender.close()


def test_a_row_delivers_after_its_user_moved_to_another_account(make_client, segment_server,
                                                                segment_client):
    """A move re-inserts a user's rows in the new account's tenant (under new row ids): the
    row finds its event there by message id."""
    writer = upgraded(make_client(None, segment=segment_client, forward_events=True,
                                  send=False))
    writer.track("ada", "signup", {"plan": "free"}, timestamp=T0)  # in its own tenant
    writer.track("ada", "invite", account_id="acme", timestamp=T0 + timedelta(seconds=1))
    writer.group("ada", "globex", timestamp=T0 + timedelta(seconds=2))  # moves again
    writer.close()
    sender = make_client(None, segment=segment_client, forward_events=True, sync_mode=True)
    assert sender.flush()
    sent = [(m["type"], m.get("event"), m.get("properties"), m["context"].get("groupId"))
            for m in segment_server.messages]
    assert sent == [("track", "signup", {"plan": "free"}, None),
                    ("track", "invite", {}, "acme"),
                    ("group", None, None, "globex")]
    assert sender.deliveries(status="failed") == []


def test_while_an_older_release_may_read_the_outbox_a_track_row_holds_its_message(
        make_client, segment_server, segment_client):
    """Rolling deploys: a row by reference is written only where no older release can
    claim it (a file of this schema version, which older releases refuse to open; on
    PostgreSQL, once the database needs this generation). Before that, the row holds the
    whole message, and Segment receives the same message either way."""
    writer = make_client(None, segment=segment_client, forward_events=True, send=False)
    writer.track("ada", "signup", {"plan": "free"}, timestamp=T0, message_id="m-1")
    [(kind, form, payload)] = stored_payloads(writer)
    if writer.store.engine == "sqlite":
        assert (kind, form, payload) == ("track", 2, {"message_id": "m-1"})
    else:
        assert (kind, form) == ("track", 1) and payload[0]["messageId"] == "m-1"
    writer.close()
    sender = make_client(None, segment=segment_client, forward_events=True, sync_mode=True)
    assert sender.flush()
    [sent] = segment_server.messages
    assert (sent["messageId"], sent["event"], sent["properties"], sent["timestamp"]) == (
        "m-1", "signup", {"plan": "free"}, "2026-11-02T09:00:00.000+00:00")


def test_a_claim_reads_its_events_in_two_statements_whatever_the_users(
        db_path, segment_server, segment_client):
    """The delivery thread builds a claim's messages with one read of the users' tenants
    and one of their events (per 100 rows), not a statement per user."""
    import pqlsdk

    writer = pqlsdk.Client(db_path, segment=segment_client, forward_events=True, send=False)
    for n in range(60):
        writer.track(f"u{n}", "signup", {"n": n}, account_id="acme" if n % 2 else None,
                     timestamp=T0 + timedelta(seconds=n))
    writer.close()
    sender = pqlsdk.Client(db_path, segment=segment_client, forward_events=True,
                           sync_mode=True)
    seen: list[str] = []
    sender.store.read_db.conn.set_trace_callback(seen.append)
    assert sender.flush()
    sender.store.read_db.conn.set_trace_callback(None)
    sender.close()
    assert [m["properties"]["n"] for m in segment_server.messages] == list(range(60))
    assert len([sql for sql in seen if "FROM events" in sql]) == 1
    assert len([sql for sql in seen if "FROM user_directory" in sql]) == 1


def test_a_process_killed_mid_delivery_of_mirrored_tracks_loses_none_and_sends_each_once(
        database, make_client, segment_server):
    """SIGKILL while the delivery thread's post is in flight: the rows stay (leased by the
    dead process), the next Client sends each track once, with the messageId its row
    held."""
    import signal
    import subprocess
    import sys
    import textwrap

    from segment.analytics import Client as SegmentClient

    import pqlsdk

    upgraded(make_client(None)).close()
    segment_server.hold = True  # the first delivery hangs until the process is gone
    script = textwrap.dedent(f"""
        import pqlsdk
        from segment.analytics import Client as SegmentClient
        segment = SegmentClient(write_key="k", host={segment_server.url!r}, sync_mode=True)
        client = pqlsdk.Client(**{database!r}, segment=segment, forward_events=True,
                               delivery_lease=0.5)
        for n in range(5):
            client.track("ada", "report_generated", {{"n": n}})
        print("written", flush=True)
        client.flush()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        assert segment_server.arrived.wait(30), "the child never started delivering"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        child.kill()
        child.stdout.close()
    segment_server.release()
    assert segment_server.messages == []
    segment = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    client = pqlsdk.Client(**database, segment=segment, forward_events=True)
    refs = [payload["message_id"] for kind, form, payload in stored_payloads(client)]
    assert len(refs) == 5 and len(set(refs)) == 5  # by reference, each its own messageId
    assert client.flush(timeout=20) is True  # waits out the dead process's lease
    client.close()
    sent = segment_server.messages
    assert [m["properties"]["n"] for m in sent] == [0, 1, 2, 3, 4]
    assert [m["messageId"] for m in sent] == refs


def test_a_batch_is_posted_as_segments_own_client_posts_it(segment_server):
    """pqlsdk sends each message's JSON text (encoded once, to be sized): the request is the
    one ``segment.analytics.request.post`` makes, with and without gzip."""
    from segment.analytics import Client as SegmentClient
    from segment.analytics.request import post

    from pqlsdk.sinks import SegmentSink

    message = event_message("track", "ada", "2026-11-02T09:00:00.000+00:00", "m-1", "acme",
                            event="signup", properties={"plan": "free", "seats": 3})
    for gzip in (False, True):
        segment_server.batches.clear()
        segment = SegmentClient(write_key="wk", host=segment_server.url + "/", gzip=gzip,
                                sync_mode=True)
        post("wk", segment_server.url + "/", gzip=gzip, batch=[message])
        assert SegmentSink(segment).deliver([[message]]) == [None]
        theirs, ours = segment_server.batches
        for request in (theirs, ours):
            request["body"].pop("sentAt")
            request["headers"].pop("Content-Length")
        assert ours == theirs
