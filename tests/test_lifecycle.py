"""The lead lifecycle: forward-only automatic moves, manual moves, rounds, history, forget."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk import all_of, event, trait

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [
    pqlsdk.Rule("engaged", event("report_generated", at_least=2), stage="mql"),
    pqlsdk.Rule("team", event("teammate_invited"), stage="pql"),
    pqlsdk.Rule("demo_requested", event("demo_requested"), stage="sql"),
    pqlsdk.Rule("subscription_started", event("subscription_started"), stage="customer"),
]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def stages(client, **subject):
    return [(c.from_stage, c.to_stage, c.source) for c in client.history(**subject)]


def test_a_subject_first_seen_is_a_lead(make_client):
    client = make_client(RULES)
    client.track("ada", "signed_in", timestamp=T0)
    assert client.status("ada").stage == "lead"
    [first] = client.history("ada")
    assert (first.from_stage, first.to_stage, first.at, first.source) == (
        None, "lead", T0, "first_seen")


def test_qualifications_move_forward_only(make_client):
    client = make_client(RULES)
    client.track("ada", "demo_requested", timestamp=at(0))
    client.track("ada", "report_generated", timestamp=at(1))
    client.track("ada", "report_generated", timestamp=at(2))  # mql, but ada is sql already
    assert client.status("ada").stage == "sql"
    assert {q.rule for q in client.status("ada").qualifications} == {"demo_requested",
                                                                       "engaged"}
    client.track("ada", "subscription_started", timestamp=at(3))
    assert stages(client, user_id="ada") == [
        (None, "lead", "first_seen"),
        ("lead", "sql", "rule:demo_requested"),
        ("sql", "customer", "rule:subscription_started"),
    ]
    assert client.history("ada")[1].at == at(0)


def test_manual_moves_go_both_ways_with_reasons(make_client):
    client = make_client(RULES)
    client.track("ada", "teammate_invited", timestamp=at(0))
    change = client.set_stage("ada", stage="opportunity", reason="AE booked a call",
                              timestamp=at(5))
    assert (change.from_stage, change.to_stage, change.source, change.reason) == (
        "pql", "opportunity", "manual", "AE booked a call")
    client.set_stage("ada", stage="mql", reason="not ready", timestamp=at(6))
    assert client.status("ada").stage == "mql"
    assert client.set_stage("ada", stage="mql") is None  # already there: nothing recorded
    assert [(c.to_stage, c.reason) for c in client.history("ada")][-2:] == [
        ("opportunity", "AE booked a call"), ("mql", "not ready")]


def test_unqualified_subject_qualifies_again_on_what_it_does_afterwards(make_client):
    client = make_client(RULES)
    client.track("ada", "report_generated", timestamp=at(0))
    [first] = client.track("ada", "report_generated", timestamp=at(1))
    client.set_stage("ada", stage="unqualified", reason="no budget", timestamp=at(10))
    # the old reports do not count again; two new ones do
    assert client.track("ada", "report_generated", timestamp=at(11)) == []
    # status shows the rule as open again, counting only this round's event
    progress = client.status("ada", as_of=at(11)).progress["engaged"]
    assert (progress.value, progress.met) == (1, False)
    [second] = client.track("ada", "report_generated", timestamp=at(12))
    assert second.rule == first.rule and second.id != first.id
    assert client.status("ada").stage == "mql"
    assert stages(client, user_id="ada")[-2:] == [("mql", "unqualified", "manual"),
                                                  ("unqualified", "mql", "rule:engaged")]


def test_disqualified_subject_never_fires_but_its_events_are_kept(make_client, db_path):
    fired = []
    client = make_client(RULES, on_qualified=fired.append, sync_mode=True)
    client.set_stage("ada", stage="disqualified", reason="competitor", timestamp=at(0),
                     create=True)
    for minute in range(1, 4):
        assert client.track("ada", "report_generated", timestamp=at(minute)) == []
    assert client.evaluate(as_of=at(5)) == []
    assert fired == []
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    client.set_stage("ada", stage="lead", reason="new budget", timestamp=at(6))
    [q] = client.evaluate(as_of=at(7))  # events since the disqualification count again
    assert q.rule == "engaged" and fired == [q]


def test_account_stages(make_client):
    client = make_client([pqlsdk.Rule("team_usage", event("report_generated", at_least=2),
                                      subject="account", stage="pql")])
    client.group("ada", "acme", {"seats": 5}, timestamp=at(0))
    client.track("ada", "report_generated", timestamp=at(1))
    client.track("bob", "report_generated", account_id="acme", timestamp=at(2))
    assert client.status(account_id="acme").stage == "pql"
    assert client.status("ada").stage == "lead"
    client.set_stage(account_id="acme", stage="customer", reason="signed", timestamp=at(3))
    assert stages(client, account_id="acme") == [
        (None, "lead", "first_seen"), ("lead", "pql", "rule:team_usage"),
        ("pql", "customer", "manual")]


def test_manual_move_is_forwarded_to_segment(make_client, segment_server, segment_client):
    client = make_client(RULES, segment=segment_client, sync_mode=True)
    client.track("ada", "signed_in", timestamp=at(0))
    client.set_stage("ada", stage="sql", reason="inbound demo", timestamp=at(1))
    [identify] = segment_server.messages
    assert (identify["type"], identify["userId"], identify["traits"]) == (
        "identify", "ada", {"lifecycle_stage": "sql"})


def test_set_stage_refuses_unknown_stages(make_client):
    client = make_client(RULES)
    with pytest.raises(pqlsdk.ValidationError, match="stage must be one of subscriber"):
        client.set_stage("ada", stage="hot")


def test_forget_leaves_no_row_of_the_user(make_client, db_path, segment_server):
    from segment.analytics import Client as SegmentClient

    segment_server.fail_next = 100  # keep deliveries pending
    segment = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    rules = [*RULES, pqlsdk.Rule("busy_team", all_of(event("report_generated", at_least=3),
                                                     trait("seats", gte=2)),
                                 subject="account")]
    client = make_client(rules, segment=segment, sync_mode=True)
    client.group("ursula", "acme", {"seats": 3}, timestamp=at(0))
    client.identify("ursula", {"email": "ursula@acme.io"}, timestamp=at(0))
    client.track("bob", "report_generated", account_id="acme", timestamp=at(1))
    for minute in (2, 3):
        client.track("ursula", "report_generated", {"by": "ursula"}, timestamp=at(minute))
    client.set_stage("ursula", stage="sql", reason="ursula asked for a demo", timestamp=at(4))
    assert client.deliveries()

    client.forget("ursula")

    with sqlite3.connect(db_path) as conn:
        for table, in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                assert not any("ursula" in str(value) for value in row), (table, row)
    with sqlite3.connect(db_path) as conn:  # the account keeps bob's event only
        assert conn.execute("SELECT user_id FROM events WHERE account_id = 'acme'"
                            ).fetchall() == [("bob",)]
    [q] = client.qualifications(rule="busy_team")
    assert q.user_id == "(forgotten)"
    with pytest.raises(pqlsdk.UnknownSubject):
        client.status("ursula")


def test_a_release_1_file_gets_stages_and_history_from_its_qualifications(db_path):
    import sqlite_utils

    from pqlsdk import store

    old = sqlite_utils.Database(db_path)
    store.MIGRATIONS[0](old)  # release 1: no outbox, no lifecycle
    old.execute("PRAGMA user_version = 1")
    old["users"].insert({"user_id": "ada", "traits": "{}", "first_seen": 1_000_000})
    old["qualifications"].insert({
        "id": "q1", "rule": "team", "stage": "pql", "subject_type": "user",
        "subject_id": "ada", "user_id": "ada", "account_id": None,
        "qualified_at": 5_000_000, "evidence": '{"label": "x", "value": 1, "bound": "",'
                                              ' "met": true}'})
    old.close()

    client = pqlsdk.Client(db_path, rules=RULES)
    assert client.status("ada").stage == "pql"
    assert stages(client, user_id="ada") == [(None, "lead", "first_seen"),
                                             ("lead", "pql", "rule:team")]
    assert client.funnel().stage("lead").moved_on == 1
    assert client.track("ada", "teammate_invited") == []  # no second qualification
