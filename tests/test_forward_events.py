"""forward_events=True: a track's outbox row refers to its event row by message id; the
Segment message is built when it is delivered (issue 21), in order, with identify and group
still carried, wherever the user's rows moved meanwhile."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from pqlsdk.messages import event_message
from pqlsdk.outbox import Outbox

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def stored_payloads(client):
    with client.store.read() as tx:
        return [(row["kind"], row["format"], json.loads(row["payload"]))
                for row in tx.rows("outbox", "destination = 'segment'", [], order_by="id")]


def test_a_track_row_holds_a_reference_and_delivers_the_same_message(
        make_client, segment_server, segment_client):
    writer = make_client(None, segment=segment_client, forward_events=True, send=False)
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
    writer = make_client(None, segment=segment_client, forward_events=True, send=False,
                         retention="30d")
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


def test_a_row_delivers_after_its_user_moved_to_another_account(make_client, segment_server,
                                                                segment_client):
    """A move re-inserts a user's rows in the new account's tenant (under new row ids): the
    row finds its event there by message id."""
    writer = make_client(None, segment=segment_client, forward_events=True, send=False)
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
