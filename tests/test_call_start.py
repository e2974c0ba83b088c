"""The start of a call: the id it counts for (an alias's user), its tenant and its subject's
snapshot, read together (one statement on SQLite), and the snapshot never used stale."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = {"rules": [
    {"name": "active", "stage": "mql",
     "all": [{"event": "report_generated", "at_least": 2}, {"trait": "plan", "equals": "pro"}]},
    {"name": "team", "subject": "account", "stage": "mql",
     "all": [{"event": "report_generated", "at_least": 3}]},
]}


def test_lock_user_answers_the_aliased_user_its_tenant_and_its_snapshot(make_client):
    client = make_client(RULES)
    client.identify("ada", {"plan": "pro"}, account_id="acme", timestamp=T0)
    client.alias("anon-1", "ada", timestamp=T0)

    def start(tx):
        user_id = tx.lock_user("anon-1", None)
        return user_id, tx.tenant, tx.user_snapshot(user_id)

    user_id, tenant, row = client.store.transact(start)
    assert (user_id, tenant) == ("ada", "acme")
    assert row.account_id == "acme" and row.user.traits == '{"plan": "pro"}'
    assert row.account is not None


def test_lock_user_of_a_new_user_binds_the_account_it_names(make_client):
    client = make_client(RULES)

    def start(tx):
        user_id = tx.lock_user("newcomer", "acme")
        return user_id, tx.tenant, tx.user_snapshot(user_id)

    assert client.store.transact(start) == ("newcomer", "acme", None)


def test_the_snapshot_read_at_the_start_is_not_used_after_a_write(make_client):
    client = make_client(RULES)
    client.identify("ada", {"plan": "free"}, timestamp=T0)

    def start(tx):
        tx.lock_user("ada", None)
        tx.set_traits("user", "ada", '{"plan": "pro"}')
        return tx.user_snapshot("ada").user.traits

    assert client.store.transact(start) == '{"plan": "pro"}'


def test_an_aliased_id_moving_to_an_account_counts_for_its_user_there(make_client):
    client = make_client(RULES)
    client.identify("ada", {"plan": "pro"}, timestamp=T0)
    client.track("ada", "report_generated", timestamp=T0)
    client.alias("anon-1", "ada", timestamp=T0)
    found = client.track("anon-1", "report_generated", account_id="acme", timestamp=T0)
    assert [(q.rule, q.subject_id) for q in found] == [("active", "ada")]
    client.track("anon-1", "report_generated", timestamp=T0)
    found = client.track("ada", "report_generated", timestamp=T0)
    assert [(q.rule, q.subject_id) for q in found] == [("team", "acme")]


@pytest.mark.sqlite_only  # traces the SQLite connection's statements
def test_a_returning_user_s_track_runs_five_statements(make_client):
    client = make_client(RULES)
    client.identify("ada", {"plan": "free"}, account_id="acme", timestamp=T0)
    client.track("ada", "report_generated", timestamp=T0)
    statements: list[str] = []
    conn = client.store.db.conn
    conn.set_trace_callback(statements.append)
    client.track("ada", "report_generated", timestamp=T0)
    conn.set_trace_callback(None)
    # BEGIN, the start (alias, tenant, snapshot), the event, the rule's count, COMMIT
    assert len(statements) == 5, statements


def test_a_returning_user_s_alias_and_directory_reads_share_a_round_trip(pg_schema,
                                                                           monkeypatch):
    import pqlsdk
    from pqlsdk.store import postgres

    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=RULES)
    client.identify("ada", {"plan": "free"}, account_id="acme", timestamp=T0)
    client.track("ada", "page_viewed", timestamp=T0)
    trips = []
    sync = postgres._Connection.sync

    def counted(self):
        if self.pipeline is not None and self._unsynced:
            trips.append(self.statements)
        sync(self)

    monkeypatch.setattr(postgres._Connection, "sync", counted)
    client.track("ada", "page_viewed", timestamp=T0)
    # the waits for answers inside the call: BEGIN with the alias and directory reads, then
    # the locks with the snapshot (the event travels with the COMMIT: no rule reads it)
    assert len(trips) == 2, trips
    client.close()
