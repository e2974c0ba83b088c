"""Qualification ids and the rules-met list: unambiguous whatever ids and names hold."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

import pqlsdk
from pqlsdk import store
from pqlsdk.ids import json_form_id, qualification_id

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("engaged", pqlsdk.event("report_generated", at_least=1))]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


class TestQualificationId:
    """The id is an unambiguous function of rule, subject, round, firing and shadow."""

    def test_ids_recorded_before_stay_the_same(self):
        # values computed by release 1 (the \x1f-joined formula)
        assert qualification_id("team_activation", "user", "ada") == (
            "3ed980f8-d6fa-53dc-adb8-c763b259e5a7")
        assert qualification_id("team_activation", "user", "ada", 1) == (
            "7088244a-92d5-5102-81cd-a12d9f058f91")

    def test_separator_in_subject_id_no_longer_collides_with_a_later_round(self):
        # release 1 gave both 3d7b973c-7313-5ca9-a4a6-f1ddbe5d3968
        assert qualification_id("r", "user", "u\x1f1") != qualification_id("r", "user", "u", 1)
        assert qualification_id("r", "user", "u", 1) == "3d7b973c-7313-5ca9-a4a6-f1ddbe5d3968"

    def test_separator_in_rule_name_no_longer_collides(self):
        assert qualification_id("a\x1fuser", "user", "x") != qualification_id(
            "a", "user", "user\x1fx")

    def test_firing_and_shadow_have_ids_of_their_own(self):
        ids = {qualification_id("r", "user", "u"),
               qualification_id("r", "user", "u", firing=1),
               qualification_id("r", "user", "u", shadow=True),
               qualification_id("r", "user", "u", firing=1, shadow=True),
               qualification_id("r", "user", "u", 1)}
        assert len(ids) == 5

    def test_nul_still_gives_an_id_for_subjects_stored_before_it_was_refused(self):
        # the edge refuses NUL now (test_nul_in_an_id_is_refused_and_writes_nothing), but a
        # release-1 file may hold such a subject: evaluate() must still qualify it
        assert qualification_id("r", "user", "u\x00") == qualification_id("r", "user", "u\x00")
        assert qualification_id("r", "user", "u\x00") != qualification_id("r", "user", "u")

    def test_non_bmp_characters_are_ids_like_any_other(self):
        assert qualification_id("r", "user", "😀") != qualification_id("r", "user", "😁")
        assert qualification_id("r", "user", "😀\x1f") != qualification_id("r", "user", "😀")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(
        st.text(alphabet="ab\x1f1😀[]\",\\", max_size=4),
        st.sampled_from(["user", "account"]),
        st.text(alphabet="ab\x1f1😀[]\",\\", max_size=4),
        st.integers(0, 3), st.integers(0, 2), st.booleans()), unique=True, max_size=20))
    def test_different_parts_never_share_an_id(self, parts):
        ids = {qualification_id(r, t, s, n, firing=f, shadow=sh) for r, t, s, n, f, sh in parts}
        assert len(ids) == len(parts)


def test_user_whose_id_holds_the_separator_qualifies_after_a_second_round_of_another(
        make_client):
    """The lost qualification of issue 15: ``u`` round 1 and ``u\\x1f1`` round 0."""
    client = make_client(RULES)
    [first] = client.track("u", "report_generated", timestamp=at(0))
    client.set_stage("u", stage="unqualified", reason="not now", timestamp=at(1))
    [second] = client.track("u", "report_generated", timestamp=at(2))
    [third] = client.track("u\x1f1", "report_generated", timestamp=at(3))
    assert len({first.id, second.id, third.id}) == 3
    assert [q.subject_id for q in client.qualifications()] == ["u", "u", "u\x1f1"]


def test_rule_name_holding_the_separator_counts_as_met_only_for_itself(make_client):
    """The rules met this round travel as one list; a name with ``\\x1f`` must not read as
    two other rules met."""
    rules = [pqlsdk.Rule("a\x1fb", pqlsdk.event("x")), pqlsdk.Rule("a", pqlsdk.event("y")),
             pqlsdk.Rule("b", pqlsdk.event("y"))]
    client = make_client(rules)
    assert [q.rule for q in client.track("u", "x", timestamp=at(0))] == ["a\x1fb"]
    assert sorted(q.rule for q in client.track("u", "y", timestamp=at(1))) == ["a", "b"]
    assert sorted(client.status("u").progress) == []


def test_non_bmp_ids_qualify_and_read_back(make_client):
    client = make_client(RULES)
    [q] = client.track("😀 ada", "report_generated", account_id="\U0001d538cme", timestamp=at(0))
    assert (q.subject_id, q.account_id) == ("😀 ada", "\U0001d538cme")
    assert client.qualifications()[0] == q


def test_nul_in_an_id_is_refused_and_writes_nothing(make_client, db_path):
    client = make_client(RULES)
    with pytest.raises(pqlsdk.ValidationError, match=r"user_id must not contain NUL"):
        client.track("u\x00", "report_generated", timestamp=at(0))
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0


def test_migration_gives_colliding_rows_their_unambiguous_id(db_path):
    """A file written by release 1 holding a qualification of ``u\\x1f1`` (with the legacy id
    that user ``u`` round 1 needs): the migration moves it, and its pending delivery, to
    the JSON-form id, and user ``u`` can then qualify in round 1."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for migration in store.MIGRATIONS[:4]:
        migration(db)
    conn.execute("PRAGMA user_version = 4")
    legacy = qualification_id("engaged", "user", "u", 1)  # what release 1 gave u\x1f1
    ts = 1_793_000_000_000_000
    conn.execute("INSERT INTO users (user_id, traits, first_seen) VALUES ('u\x1f1', '{}', ?)",
                 (ts,))
    conn.execute(
        "INSERT INTO qualifications (id, rule, stage, subject_type, subject_id, user_id, "
        "qualified_at, evidence, round) VALUES (?, 'engaged', 'pql', 'user', 'u\x1f1', "
        "'u\x1f1', ?, ?, 0)",
        (legacy, ts, json.dumps({"label": "x", "value": 1, "bound": "1", "met": True})))
    untouched = qualification_id("engaged", "user", "plain")
    conn.execute(
        "INSERT INTO qualifications (id, rule, stage, subject_type, subject_id, user_id, "
        "qualified_at, evidence, round) VALUES (?, 'engaged', 'pql', 'user', 'plain', "
        "'plain', ?, ?, 0)",
        (untouched, ts, json.dumps({"label": "x", "value": 1, "bound": "1", "met": True})))
    conn.execute(
        "INSERT INTO outbox (destination, kind, user_id, payload, next_attempt_at, "
        "created_at) VALUES ('segment', 'qualification', 'u\x1f1', ?, 0, 0)",
        (json.dumps({"qualification_id": legacy, "moved_to": None}),))
    conn.close()

    client = pqlsdk.Client(db_path, rules=RULES)
    try:
        with sqlite3.connect(db_path) as check:
            assert check.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
            moved = json_form_id("engaged", "user", "u\x1f1", 0)
            assert sorted(r[0] for r in check.execute("SELECT id FROM qualifications")) == (
                sorted([moved, untouched]))
            [(payload,)] = check.execute("SELECT payload FROM outbox").fetchall()
            assert json.loads(payload)["qualification_id"] == moved
        client.track("u", "report_generated", timestamp=at(0))
        client.set_stage("u", stage="unqualified", timestamp=at(1))
        [again] = client.track("u", "report_generated", timestamp=at(2))
        assert again.id == legacy
    finally:
        client.close(timeout=0)


def test_subject_stored_with_nul_before_it_was_refused_still_qualifies(make_client, db_path):
    """Release 1 stored NUL as given; refusing it now must not poison evaluate()."""
    client = make_client(RULES)
    client.track("seed", "signed_in", timestamp=at(0))
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO user_directory (tenant_key) VALUES (?)", ("u\x00",))
        conn.execute("INSERT INTO users (tenant_key, user_id, traits, first_seen) "
                     "VALUES (?1, ?1, '{}', 0)", ("u\x00",))
        conn.execute("INSERT INTO events (tenant_key, user_id, event, ts, properties) "
                     "VALUES (?1, ?1, 'report_generated', 0, '{}')", ("u\x00",))
    [q] = client.evaluate(as_of=at(1))
    assert q.subject_id == "u\x00"
    assert client.track("seed", "report_generated", timestamp=at(2))[0].subject_id == "seed"
