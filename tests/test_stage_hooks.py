"""Issue 20 item 2: ``on_stage_change`` delivers every move (rule, manual, import) through the
durable outbox as a StageChange; ``set_stage`` on an unknown subject raises UnknownSubject
unless ``create=True`` (SPEC §6)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

import pqlsdk
from pqlsdk import event
from pqlsdk.importer import import_jsonl

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("team", event("teammate_invited"), stage="pql"),
         pqlsdk.Rule("team_usage", event("report_generated", at_least=2), subject="account",
                     stage="mql")]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def moves(changes):
    return [(c.subject_type, c.subject_id, c.from_stage, c.to_stage, c.source, c.reason)
            for c in changes]


def test_set_stage_on_an_unknown_subject_raises_unless_create(make_client):
    client = make_client(RULES)
    with pytest.raises(pqlsdk.UnknownSubject, match="create=True"):
        client.set_stage("nobody", stage="sql")
    with pytest.raises(pqlsdk.UnknownSubject, match="account 'acme'"):
        client.set_stage(account_id="acme", stage="customer")
    assert client.history("nobody") == []  # nothing was recorded by the refusals
    with pytest.raises(pqlsdk.UnknownSubject):
        client.status(account_id="acme")
    change = client.set_stage(account_id="acme", stage="customer", reason="billing",
                              timestamp=at(0), create=True)
    assert (change.from_stage, change.to_stage) == ("lead", "customer")
    assert [(c.from_stage, c.to_stage, c.source) for c in
            client.history(account_id="acme")] == [(None, "lead", "first_seen"),
                                                   ("lead", "customer", "manual")]
    with pytest.raises(pqlsdk.ValidationError, match="create must be True or False"):
        client.set_stage("ada", stage="sql", create="yes")


def test_every_move_reaches_the_stage_hook(make_client):
    seen = []
    client = make_client(RULES, sync_mode=True)
    client.on_stage_change(seen.append, name="crm")
    client.group("ada", "acme", timestamp=at(0))
    client.track("ada", "teammate_invited", timestamp=at(1))        # rule: user to pql
    client.track("ada", "report_generated", timestamp=at(2))
    client.track("ada", "report_generated", timestamp=at(3))        # rule: account to mql
    client.set_stage("ada", stage="sql", reason="demo booked", timestamp=at(4))  # manual
    assert client.set_stage("ada", stage="sql", timestamp=at(5)) is None  # no move, no row
    assert moves(seen) == [
        ("user", "ada", "lead", "pql", "rule:team", None),
        ("account", "acme", "lead", "mql", "rule:team_usage", None),
        ("user", "ada", "pql", "sql", "manual", "demo booked"),
    ]
    assert [c.at for c in seen] == [at(1), at(3), at(4)]
    assert isinstance(seen[0], pqlsdk.StageChange)
    assert client.deliveries() == []


def test_imported_stage_lines_reach_the_hook_when_delivering(make_client, tmp_path):
    seen = []
    client = make_client(RULES, sync_mode=True)
    client.on_stage_change(seen.append, name="crm")
    path = tmp_path / "crm.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in [
        {"type": "track", "userId": "ada", "event": "signed_in", "messageId": "m1",
         "timestamp": at(0).isoformat()},
        {"type": "stage", "userId": "ada", "stage": "customer", "reason": "paid",
         "messageId": "m2", "timestamp": at(1).isoformat()},
    ]) + "\n")
    import_jsonl(client, str(path), deliver=True)
    assert moves(seen) == [("user", "ada", "lead", "customer", "import", "paid")]


def test_a_hook_that_raises_is_retried_and_loses_nothing(make_client):
    calls = []

    def flaky(change):
        calls.append(change.to_stage)
        if len(calls) <= 2:
            raise ConnectionError("CRM timeout")

    with freeze_time(T0) as frozen:
        client = make_client(RULES, sync_mode=True)
        client.on_stage_change(flaky, name="crm")
        client.track("ada", "teammate_invited", timestamp=at(1))
        client.set_stage("ada", stage="sql", timestamp=at(2))
        [waiting, behind] = client.deliveries()
        assert (waiting.destination, waiting.kind, waiting.attempts) == (
            "stage:crm", "stage_change", 1)
        assert behind.attempts == 0  # in order: it waits behind the failed one
        for _ in range(2):
            frozen.tick(timedelta(minutes=5))
            client.flush()
    assert calls == ["pql", "pql", "pql", "sql"]
    assert client.deliveries() == []


def test_rows_left_for_a_hook_wait_for_its_name_after_a_restart(make_client):
    with freeze_time(T0) as frozen:
        first = make_client(RULES, sync_mode=True)
        first.on_stage_change(lambda c: 1 / 0, name="crm")  # down: the row stays
        first.track("ada", "teammate_invited", timestamp=at(1))
        # (first stays open and idle: in sync mode it delivers only when called)
        second = make_client(RULES, sync_mode=True)
        [orphan] = second.deliveries(status="orphaned")
        assert orphan.destination == "stage:crm"
        got = []
        second.on_stage_change(got.append, name="crm")
        frozen.tick(timedelta(minutes=5))
        second.flush()
    assert moves(got) == [("user", "ada", "lead", "pql", "rule:team", None)]


def test_stage_hooks_and_on_qualified_are_separate_destinations(make_client):
    qualified, changed = [], []
    client = make_client(RULES, sync_mode=True, on_qualified={"crm": qualified.append})
    client.on_stage_change(changed.append, name="crm")  # the same name, its own lane
    [q] = client.track("ada", "teammate_invited", timestamp=at(1))
    assert qualified == [q] and moves(changed) == [
        ("user", "ada", "lead", "pql", "rule:team", None)]
    with pytest.raises(pqlsdk.ValidationError, match="already registered with on_stage"):
        client.on_stage_change(changed.append, name="crm")


def test_forget_removes_the_users_pending_stage_rows(make_client):
    client = make_client(RULES, sync_mode=True)
    client.on_stage_change(lambda c: 1 / 0, name="crm")
    client.track("ada", "teammate_invited", timestamp=at(1))
    assert len(client.deliveries()) == 1
    client.forget("ada")
    assert client.deliveries() == []
