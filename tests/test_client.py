"""The Client's contract: idempotence, validation, restart, callbacks, evaluate, explain."""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

import pqlsdk
from pqlsdk import all_of, event, not_, trait

from .conftest import count_rows

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
REPORTS = [pqlsdk.Rule("reports", event("report_generated", at_least=2))]


def test_same_message_id_is_stored_and_counted_once(make_client, db_path):
    client = make_client(REPORTS)
    client.track("u1", "report_generated", message_id="m-1")
    assert client.track("u1", "report_generated", message_id="m-1") == []
    assert count_rows(db_path, "events") == 1
    assert client.qualifications() == []
    assert client.track("u1", "report_generated", message_id="m-2") != []


def test_a_rule_qualifies_a_subject_once(make_client, db_path):
    client = make_client(REPORTS)
    created = [client.track("u1", "report_generated") for _ in range(5)]
    assert [len(c) for c in created] == [0, 1, 0, 0, 0]
    assert count_rows(db_path, "qualifications") == 1


def test_restart_does_not_refire(make_client, db_path):
    fired = []
    first = make_client(REPORTS, on_qualified=fired.append)
    first.track("u1", "report_generated")
    first.track("u1", "report_generated")
    first.close()
    second = make_client(REPORTS, on_qualified=fired.append)
    assert second.track("u1", "report_generated") == []
    assert second.evaluate() == []
    assert [q.subject_id for q in fired] == ["u1"]
    assert [q.rule for q in second.qualifications()] == ["reports"]


def test_qualification_id_is_stable_per_rule_and_subject(make_client, tmp_path):
    a = make_client(REPORTS, database=str(tmp_path / "a.db"))
    b = make_client(REPORTS, database=str(tmp_path / "b.db"))
    for client in (a, b):
        client.track("u1", "report_generated")
    [qa] = a.track("u1", "report_generated")
    [qb] = b.track("u1", "report_generated")
    assert qa.id == qb.id
    a.track("u2", "report_generated")
    [other] = a.track("u2", "report_generated")
    assert other.id != qa.id


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda c: c.track("", "e"), "user_id must be a non-empty string (got '')"),
        (lambda c: c.track(None, "e"), "user_id must be a non-empty string (got None)"),
        (lambda c: c.track("u1", ""), "event must be a non-empty string"),
        (lambda c: c.track("u1", "e", ["a"]), "properties must be a dict of JSON values (got list"),
        (lambda c: c.track("u1", "e", {"x": object()}), "properties must be a dict of JSON values"),
        (lambda c: c.track("u1", "e", {"x": float("nan")}), "properties must be a dict"),
        (lambda c: c.track("u1", "e", timestamp=1700000000),
         "timestamp must be a datetime or an ISO-8601 string (got 1700000000 of type int)"),
        (lambda c: c.track("u1", "e", timestamp="yesterday"), "timestamp must be a datetime"),
        (lambda c: c.track("u1", "e", account_id=""), "account_id must be a non-empty string"),
        (lambda c: c.track("u1", "e", message_id=""), "message_id must be a non-empty string"),
        (lambda c: c.identify("u1", "plan=free"), "traits must be a dict of JSON values"),
        (lambda c: c.group("u1", None), "account_id must be a non-empty string"),
        (lambda c: c.status(), "pass exactly one of user_id or account_id="),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(make_client, db_path, call, says):
    client = make_client(REPORTS)
    client.track("u0", "report_generated")
    with pytest.raises(pqlsdk.ValidationError) as caught:
        call(client)
    assert isinstance(caught.value, ValueError)
    assert says in str(caught.value)
    assert count_rows(db_path, "events") == 1
    assert count_rows(db_path, "users") == 1


def test_properties_may_hold_datetimes_and_integer_ids_are_accepted(make_client):
    client = make_client(REPORTS)
    client.track(42, "report_generated", {"at": T0})
    assert client.track(42, "report_generated")[0].subject_id == "42"


def test_callback_that_raises_is_logged_and_loses_nothing(make_client, caplog):
    calls = []

    def boom(q):
        raise RuntimeError("CRM down")

    client = make_client(REPORTS, on_qualified=[boom, calls.append], sync_mode=True)
    client.track("u1", "report_generated")
    with caplog.at_level(logging.WARNING, logger="pqlsdk"):
        [q] = client.track("u1", "report_generated")
    assert "CRM down" in caplog.text
    assert calls == [q]
    assert client.qualifications() == [q]


def test_decorator_registers_a_callback(make_client):
    client = make_client(REPORTS, sync_mode=True)
    seen = []

    @client.on_qualified
    def notify(q):
        seen.append(q.rule)

    assert callable(notify)
    client.track("u1", "report_generated")
    client.track("u1", "report_generated")
    assert seen == ["reports"]
    with pytest.raises(pqlsdk.ValidationError, match="needs a callable"):
        client.on_qualified("not callable")


def test_evaluate_catches_what_time_alone_makes_true(make_client):
    dormant = pqlsdk.Rule("gone_quiet", all_of(
        event("report_generated", at_least=3),
        not_(event("report_generated", within="7d")),
    ))
    client = make_client([dormant])
    for hours in range(3):
        assert client.track("u1", "report_generated",
                            timestamp=T0 + timedelta(hours=hours)) == []
    assert client.evaluate(as_of=T0 + timedelta(days=6)) == []
    [q] = client.evaluate(as_of=T0 + timedelta(days=8))
    assert q.qualified_at == T0 + timedelta(days=8)
    assert client.evaluate(as_of=T0 + timedelta(days=9)) == []


def test_evaluate_qualifies_accounts_with_their_latest_user(make_client):
    quiet = pqlsdk.Rule("quiet_team", all_of(event("e", at_least=2),
                                             event("e", at_most=0, within="1d")),
                        subject="account")
    client = make_client([quiet])
    client.track("u1", "e", account_id="acme", timestamp=T0)
    client.track("u2", "e", account_id="acme", timestamp=T0 + timedelta(hours=1))
    [q] = client.evaluate(as_of=T0 + timedelta(days=2))
    assert (q.subject_id, q.user_id, q.account_id) == ("acme", "u2", "acme")


def test_late_event_is_evaluated_as_of_its_own_time_and_evaluate_picks_up_the_rest(make_client):
    client = make_client([pqlsdk.Rule("r", event("e", at_least=3, within="1d"))])
    client.track("u1", "e", timestamp=T0 + timedelta(hours=10))
    client.track("u1", "e", timestamp=T0 + timedelta(hours=11))
    # arrives late: as of 09:00 only one event is in the window
    assert client.track("u1", "e", timestamp=T0) == []
    [q] = client.evaluate(as_of=T0 + timedelta(hours=12))
    assert q.evidence.value == 3


def test_qualifications_filters(make_client):
    client = make_client([pqlsdk.Rule("a", event("x")), pqlsdk.Rule("b", event("y"))])
    client.track("u1", "x", timestamp=T0)
    client.track("u1", "y", timestamp=T0 + timedelta(days=1))
    client.track("u2", "x", timestamp=T0 + timedelta(days=2))
    assert [(q.rule, q.subject_id) for q in client.qualifications()] == [
        ("a", "u1"), ("b", "u1"), ("a", "u2")]
    assert [q.subject_id for q in client.qualifications(rule="a")] == ["u1", "u2"]
    assert [q.rule for q in client.qualifications(since=T0 + timedelta(days=1))] == ["b", "a"]


@freeze_time("2026-11-20 12:00:00")
def test_status_and_explain_show_progress_per_condition(make_client):
    rules = [
        pqlsdk.Rule("team_activation", all_of(
            event("report_generated", at_least=5, within="14d"),
            event("teammate_invited", distinct="invitee_email", at_least=3),
            trait("plan", in_=["free", "trial"]),
        )),
        pqlsdk.Rule("slack", event("integration_connected", where={"provider": "slack"}),
                    stage="mql"),
        pqlsdk.Rule("team", event("report_generated", at_least=2), subject="account"),
    ]
    client = make_client(rules)
    client.identify("u1", {"plan": "trial"}, account_id="acme")
    for _ in range(3):
        client.track("u1", "report_generated")
    client.track("u1", "teammate_invited", {"invitee_email": "a@x.io"})
    client.track("u1", "integration_connected", {"provider": "slack"})

    status = client.status("u1")
    assert (status.subject_type, status.subject_id, status.stage) == ("user", "u1", "mql")
    assert [q.rule for q in status.qualifications] == ["slack"]
    progress = status.progress["team_activation"]
    assert [(p.value, p.met) for p in progress.parts] == [(3, False), (1, False),
                                                          ("trial", True)]
    assert client.status(account_id="acme").stage == "pql"

    text = client.explain("u1")
    assert "user u1: stage mql" in text
    assert "✗ report_generated in 14d: 3 of at least 5" in text
    assert "✗ teammate_invited (distinct invitee_email): 1 of at least 3" in text
    assert "✓ trait plan: 'trial' — wanted in ['free', 'trial']" in text
    assert "✓ slack: qualified 2026-11-20 12:00 UTC → mql" in text
    assert "account acme: stage pql" in text


def test_status_of_an_unknown_subject_raises(make_client):
    client = make_client(REPORTS)
    with pytest.raises(pqlsdk.UnknownSubject, match="no user 'ghost' has been seen"):
        client.status("ghost")


def test_context_manager_closes_and_a_closed_client_says_so(db_path):
    with pqlsdk.Client(db_path, rules=REPORTS) as client:
        client.track("u1", "report_generated")
    with pytest.raises(sqlite3.ProgrammingError):
        client.store.db.conn.execute("SELECT 1")
    with pytest.raises(pqlsdk.StoreClosed, match="this pqlsdk Client is closed"):
        client.track("u1", "report_generated")
    with pytest.raises(pqlsdk.StoreClosed):
        client.status("u1")


def test_memory_database_and_sqlite_utils_database_work(make_client, tmp_path):
    import sqlite_utils

    memory = make_client(REPORTS, database=":memory:")
    memory.track("u1", "report_generated")
    assert memory.track("u1", "report_generated") != []
    db = sqlite_utils.Database(str(tmp_path / "mine.db"))  # check_same_thread=True
    delivered = threading.Event()
    client = make_client(REPORTS, database=db, on_qualified=lambda q: delivered.set())
    client.track("u1", "report_generated")
    client.track("u1", "report_generated")
    assert delivered.wait(10), "the delivery thread could not use the database"
    assert db["qualifications"].count == 1
    assert db.journal_mode == "wal"


def test_newer_schema_is_refused_with_a_clear_error(db_path):
    pqlsdk.Client(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(pqlsdk.SchemaTooNew, match="schema version 999, newer than"):
        pqlsdk.Client(db_path)


def test_a_file_from_an_older_release_is_migrated_forward(db_path):
    import sqlite_utils

    from pqlsdk import store

    old = sqlite_utils.Database(db_path)
    store.MIGRATIONS[0](old)  # what release 1 wrote: no outbox yet
    old.execute("PRAGMA user_version = 1")
    old["events"].insert({"user_id": "u1", "event": "report_generated", "ts": 1,
                          "properties": "{}"})
    old["users"].insert({"user_id": "u1", "traits": "{}", "first_seen": 1})
    old.close()

    client = pqlsdk.Client(db_path, rules=REPORTS, on_qualified=lambda q: None)
    [q] = client.track("u1", "report_generated")
    assert q.evidence.value == 2  # the old event still counts
    client.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
