"""The tenant key (issue 19, SPEC §13), on both engines: every row of a call is in one
tenant (the account the user belongs to at the time of the call, else the user); ``group``
into another account is the named call that moves a user's history to the new tenant, and
the account it left keeps counting what the user did there; migrations fill the key in rows
written before it (and, on PostgreSQL, in rows the previous release writes during a rolling
deploy)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

import pqlsdk
from pqlsdk.store import postgres as pg
from pqlsdk.store import sqlite as sqlite_store

AT = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = {"rules": [
    {"name": "reporter", "all": [{"event": "report_generated", "at_least": 4}]},
    {"name": "team", "subject": "account", "all": [{"event": "report_generated",
                                                     "at_least": 3}]},
]}


EVIDENCE = '{"label": "x", "value": 1, "bound": "", "met": true, "parts": []}'


def _tenants(client: pqlsdk.Client, table: str, where: str, args: list) -> list[str]:
    with client.store.read() as tx:
        return sorted(row["tenant_key"] for row in tx.rows(table, where, args))


def test_rows_carry_the_tenant_of_the_call(make_client):
    client = make_client(RULES)
    client.track("solo", "report_generated", timestamp=AT)
    client.track("ada", "report_generated", account_id="acme", timestamp=AT)
    client.set_stage(account_id="acme", stage="mql", timestamp=AT)
    assert _tenants(client, "events", "tenant_key IS NOT NULL", []) == ["acme", "solo"]
    assert _tenants(client, "users", "tenant_key IS NOT NULL", []) == ["acme", "solo"]
    assert _tenants(client, "accounts", "tenant_key IS NOT NULL", []) == ["acme"]
    assert _tenants(client, "stage_changes", "subject_type = 'account'", []) == [
        "acme", "acme"]  # first seen, then mql
    # the directory is keyed by the user id
    assert _tenants(client, "user_directory", "tenant_key IS NOT NULL", []) == ["ada", "solo"]


def test_group_into_a_new_account_moves_the_users_history(make_client):
    """A user without an account joins one: its events, history and qualifications move to
    the account's tenant; its rules count as before; the account counts only what was
    recorded with it (as before: events carry their account at the time of the call)."""
    client = make_client(RULES)
    for n in range(4):
        client.track("ada", "report_generated", timestamp=AT + timedelta(minutes=n))
    client.group("ada", "acme", timestamp=AT + timedelta(hours=1))
    assert _tenants(client, "events", "user_id = 'ada'", []) == ["acme"] * 4
    assert _tenants(client, "qualifications", "subject_id = 'ada'", []) == ["acme"]
    assert _tenants(client, "stage_changes", "subject_id = 'ada'", []) == ["acme"] * 2
    status = client.status("ada")
    assert [q.rule for q in status.qualifications] == ["reporter"]
    assert [c.to_stage for c in client.history("ada")] == ["lead", "pql"]
    # the account counts the events recorded with it: none yet, then 3
    assert client.status(account_id="acme").progress["team"].parts[0].value == 0
    created = []
    for n in range(3):
        created += client.track("ada", "report_generated",
                                timestamp=AT + timedelta(hours=2, minutes=n))
    assert [q.rule for q in created] == ["team"]


def test_a_user_moving_to_another_account_takes_its_history_and_leaves_the_old_account_its_count(
        make_client):
    client = make_client(RULES)
    client.track("ada", "report_generated", account_id="acme", timestamp=AT)
    client.track("ada", "report_generated", account_id="acme", timestamp=AT)
    client.group("ada", "globex", timestamp=AT + timedelta(hours=1))
    # acme still counts ada's two reports (recorded with acme): bob's one completes it
    assert client.status(account_id="acme").progress["team"].parts[0].value == 2
    created = client.track("bob", "report_generated", account_id="acme",
                           timestamp=AT + timedelta(hours=2))
    assert [(q.rule, q.subject_id) for q in created] == [("team", "acme")]
    # ada's own rule counts everything it did, in both accounts: 2 + 2 = 4
    client.track("ada", "report_generated", timestamp=AT + timedelta(hours=2))
    created = client.track("ada", "report_generated", timestamp=AT + timedelta(hours=3))
    assert [(q.rule, q.subject_id) for q in created] == [("reporter", "ada")]
    assert client.status(account_id="globex").progress["team"].parts[0].value == 2
    # ada's rows are in globex's tenant; acme keeps its copy of ada's acme events
    assert _tenants(client, "events", "user_id = 'ada'", []) == [
        "acme", "acme", "globex", "globex", "globex", "globex"]
    # moving back: the copies give way to acme's originals, nothing is doubled
    client.group("ada", "acme", timestamp=AT + timedelta(hours=4))
    assert _tenants(client, "events", "user_id = 'ada'", []) == [
        "acme", "acme", "acme", "acme", "globex", "globex"]
    assert client.status(account_id="acme").qualifications[0].rule == "team"
    assert len(client.export("ada")["events"]) == 4  # its own history, each event once
    # forget finds every copy
    client.forget("ada")
    assert _tenants(client, "events", "user_id = 'ada'", []) == []


def test_a_retried_message_id_after_a_move_is_still_stored_once(make_client):
    client = make_client(RULES)
    client.track("ada", "report_generated", timestamp=AT, message_id="m1")
    client.group("ada", "acme", timestamp=AT)
    client.track("ada", "report_generated", timestamp=AT, message_id="m1")
    assert len(_tenants(client, "events", "user_id = 'ada'", [])) == 1


@pytest.mark.sqlite_only
def test_an_older_file_gets_tenant_keys_from_its_data(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    with monkeypatch.context() as old:
        before = sqlite_store.MIGRATIONS.index(sqlite_store._tenant_keys)
        old.setattr(sqlite_store, "MIGRATIONS", sqlite_store.MIGRATIONS[:before])
        sqlite_store.Store(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("""
        INSERT INTO users (user_id, account_id, traits, first_seen) VALUES
            ('ada', 'acme', '{}', 1), ('solo', NULL, '{}', 1);
        INSERT INTO accounts (account_id, traits, first_seen) VALUES ('acme', '{}', 1);
        INSERT INTO events (message_id, user_id, account_id, event, ts, properties) VALUES
            ('m1', 'ada', 'acme', 'x', 1, '{}'), ('m2', 'ada', NULL, 'x', 1, '{}'),
            ('m3', 'solo', NULL, 'x', 1, '{}'), ('m4', 'ada', 'globex', 'x', 1, '{}');
        INSERT INTO stage_changes (subject_type, subject_id, to_stage, at, source) VALUES
            ('user', 'ada', 'lead', 1, 'first_seen'), ('account', 'acme', 'lead', 1, 'x');
        INSERT INTO outbox (destination, kind, user_id, payload, next_attempt_at, created_at)
            VALUES ('segment', 'event', 'solo', '[]', 1, 1);
    """)
    conn.commit()
    conn.close()
    client = pqlsdk.Client(path, rules=RULES)
    try:
        # ada is in acme now: its events are there (m4, recorded in globex before it moved,
        # as a copy: globex keeps the original, which its rules count)
        assert _tenants(client, "events", "tenant_key IS NOT NULL", []) == [
            "acme", "acme", "acme", "globex", "solo"]
        assert _tenants(client, "users", "tenant_key IS NOT NULL", []) == ["acme", "solo"]
        assert _tenants(client, "stage_changes", "tenant_key IS NOT NULL", []) == ["acme", "acme"]
        assert _tenants(client, "outbox", "tenant_key IS NOT NULL", []) == ["solo"]
        assert client.status("ada").subject_id == "ada"
        assert client.track("ada", "report_generated", timestamp=AT) == []
        assert _tenants(client, "events", "user_id = 'ada'", []) == ["acme"] * 4 + ["globex"]
        assert len(client.export("ada")["events"]) == 4
    finally:
        client.close()


def test_postgres_migration_fills_tenant_keys_and_keeps_the_previous_release_writing(
        pg_schema, monkeypatch):
    url, schema = pg_schema
    with monkeypatch.context() as old:
        old.setattr(pg, "SCHEMA_VERSION", 2)
        pg.PostgresStore(url, schema=schema).close()
    previous_release = [  # rows as the previous release writes them (no tenant key)
        "INSERT INTO users (user_id, account_id, traits, first_seen) VALUES "
        "('ada', 'acme', '{}', 1), ('solo', NULL, '{}', 1)",
        "INSERT INTO accounts (account_id, traits, first_seen) VALUES ('acme', '{}', 1)",
        "INSERT INTO events (message_id, user_id, account_id, event, ts, properties) VALUES "
        "('m1', 'ada', 'acme', 'x', 1, '{}'), ('m2', 'solo', NULL, 'x', 1, '{}'), "
        "('m0', 'ada', 'globex', 'x', 0, '{}')",
        "INSERT INTO qualifications (id, rule, stage, subject_type, subject_id, user_id, "
        "account_id, qualified_at, evidence) VALUES ('q1', 'r', 'pql', 'account', 'acme', "
        f"'ada', 'acme', 1, '{EVIDENCE}'), ('q2', 'r', 'pql', 'user', 'solo', 'solo', NULL, 1, "
        f"'{EVIDENCE}')",
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        for sql in previous_release:
            conn.execute(sql)
    client = pqlsdk.Client(url, schema=schema, rules=RULES)  # migrates to this release
    try:
        assert _tenants(client, "events", "tenant_key IS NOT NULL", []) == [
            "acme", "acme", "globex", "solo"]  # m0: globex's, and a copy in ada's tenant
        assert _tenants(client, "qualifications", "tenant_key IS NOT NULL", []) == ["acme", "solo"]
        assert _tenants(client, "user_directory", "tenant_key IS NOT NULL", []) == ["ada", "solo"]
        with psycopg.connect(url, autocommit=True) as conn:  # the previous release, still up
            conn.execute(f"SET search_path TO {schema}")
            conn.execute("INSERT INTO users (user_id, account_id, traits, first_seen) "
                         "VALUES ('cy', NULL, '{}', 2)")
            conn.execute("INSERT INTO events (message_id, user_id, account_id, event, ts, "
                         "properties) VALUES ('m3', 'cy', NULL, 'report_generated', 2, '{}')")
            conn.execute("INSERT INTO outbox (destination, kind, user_id, payload, "
                         "next_attempt_at, created_at) VALUES ('x', 'event', 'cy', '[]', 1, 1)")
            # it ties a user to an account by its account_id alone: the user's rows follow
            conn.execute("UPDATE users SET account_id = 'acme' WHERE user_id = 'solo'")
        assert _tenants(client, "events", "user_id IN ('cy', 'solo')", []) == ["acme", "cy"]
        assert _tenants(client, "outbox", "tenant_key IS NOT NULL", []) == ["cy"]
        assert _tenants(client, "qualifications", "subject_id = 'solo'", []) == ["acme"]
        assert client.status("cy").stage == "lead"
        assert [q.rule for q in client.status("solo").qualifications] == ["r"]
        client.track("cy", "report_generated", timestamp=AT)
        assert _tenants(client, "events", "user_id = 'cy'", []) == ["cy", "cy"]
    finally:
        client.close()


def test_a_user_moving_while_another_host_tracks_it_loses_and_strands_nothing(pg_schema):
    """Two hosts at once: one keeps moving ada between two accounts, the other keeps
    tracking ada. Every event is stored once in ada's tenant (none left behind in the tenant
    it was read from), and each account keeps exactly the events recorded with it."""
    import threading

    url, schema = pg_schema
    mover = pqlsdk.Client(url, schema=schema, rules=RULES)
    tracker = pqlsdk.Client(url, schema=schema, rules=RULES)
    try:
        mover.track("ada", "signed_up", account_id="acme", timestamp=AT)
        failures: list[BaseException] = []

        def run(work) -> None:
            try:
                work()
            except BaseException as exc:  # reported below
                failures.append(exc)

        moves = threading.Thread(target=run, args=(lambda: [
            mover.group("ada", ("globex", "acme")[n % 2], timestamp=AT) for n in range(30)],))
        tracks = threading.Thread(target=run, args=(lambda: [
            tracker.track("ada", "report_generated", timestamp=AT, message_id=f"t{n}")
            for n in range(60)],))
        moves.start()
        tracks.start()
        moves.join(timeout=120)
        tracks.join(timeout=120)
        assert not failures
        events = mover.export("ada")["events"]
        assert len(events) == 61 and len({e["message_id"] for e in events}) == 61
        with psycopg.connect(url) as conn:
            stray = conn.execute(
                f"SELECT count(*) FROM {schema}.events WHERE user_id = 'ada' "
                f"AND tenant_key <> coalesce(account_id, user_id) AND tenant_key <> "
                f"(SELECT coalesce(account_id, tenant_key) FROM {schema}.user_directory "
                f"WHERE tenant_key = 'ada')").fetchone()[0]
        assert stray == 0  # each row is ada's (in its tenant) or an account's original
    finally:
        mover.close()
        tracker.close()


def test_a_user_joining_an_account_of_the_same_name_keeps_everything(make_client):
    """A user id that is also an account id: its own tenant and the account's are one."""
    client = make_client(RULES)
    for n in range(3):
        client.track("x", "report_generated", timestamp=AT + timedelta(minutes=n))
    client.group("x", "x", timestamp=AT + timedelta(hours=1))
    created = client.track("x", "report_generated", timestamp=AT + timedelta(hours=2))
    assert [q.rule for q in created] == ["reporter"]  # 4 reports, none lost or doubled
    assert _tenants(client, "events", "user_id = 'x'", []) == ["x"] * 4
    assert client.status("x").subject_id == "x"
    assert len(client.history("x")) == 2  # first seen, then pql
