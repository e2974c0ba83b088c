"""Issue 20 item 9 (brief item 8): small edges: distinct counts values as text, forward_events
without segment= is refused, rules that hold on a new subject are checked when it is first
seen, and an import's summary never counts a line as both duplicate and applied."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk import event, trait
from pqlsdk.importer import import_jsonl

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_distinct_counts_1_and_the_text_1_as_one_value(make_client):
    rule = pqlsdk.Rule("three_seats", event("seat_added", distinct="seat", at_least=3))
    client = make_client([rule])
    for minute, seat in enumerate([1, "1", 1.0]):
        assert client.track("ada", "seat_added", {"seat": seat}, timestamp=at(minute)) == []
    assert client.status("ada").progress["three_seats"].value == 1  # one value so far
    client.track("ada", "seat_added", {"seat": True}, timestamp=at(3))
    client.track("ada", "seat_added", {"seat": "true"}, timestamp=at(4))
    assert client.status("ada").progress["three_seats"].value == 2
    [q] = client.track("ada", "seat_added", {"seat": {"a": 1}}, timestamp=at(5))
    assert q.evidence.value == 3


def test_forward_events_without_segment_is_refused(make_client):
    with pytest.raises(pqlsdk.ValidationError, match=r"forward_events=True .* needs segment="):
        make_client([], forward_events=True)


def test_a_rule_that_holds_on_a_new_subject_is_checked_when_it_is_first_seen(make_client):
    rule = pqlsdk.Rule("no_company_yet", trait("company", exists=False), stage="mql")
    accounts = pqlsdk.Rule("unnamed_account", trait("name", exists=False),
                           subject="account", stage="mql")
    client = make_client([rule, accounts])
    # the first call reads neither the rule's events nor its traits
    [user, account] = client.track("ada", "signed_in", account_id="acme", timestamp=at(0))
    assert (user.rule, user.subject_id, user.qualified_at) == ("no_company_yet", "ada", at(0))
    assert (account.rule, account.subject_id) == ("unnamed_account", "acme")
    assert client.track("ada", "signed_in", timestamp=at(1)) == []  # once
    assert client.track("bob", "signed_in", timestamp=at(2))[0].subject_id == "bob"


def test_an_interrupted_import_counts_each_line_once(tmp_path, monkeypatch):
    monkeypatch.setattr(pqlsdk.importer, "BATCH", 2000)  # five batches
    lines = [{"type": "track", "userId": f"u{n % 7}", "event": "e", "messageId": f"m{n}",
              "timestamp": at(n).isoformat()} for n in range(5000)]
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=[])

    def stop_after_one_batch(batches, total):
        for number, batch in enumerate(batches):
            if number == 1:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        import_jsonl(client, str(path), progress=stop_after_one_batch)
    with client.store.read() as tx:
        done_before = tx.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    waiting = 5000 - done_before
    assert done_before == 2000  # the first batch, committed with its checkpoint
    result = import_jsonl(client, str(path))
    # the rows the first run applied are duplicates; those it had not reached are applied now
    assert (result.applied, result.duplicates, result.resumed) == (waiting, done_before,
                                                                   waiting)
    assert result.applied + result.duplicates == result.read == 5000
    client.close()
