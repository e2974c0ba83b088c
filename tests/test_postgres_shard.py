"""Ready to shard, checked on plain PostgreSQL (issue 19, SPEC §13).

``PostgresStore(partitions=8)`` creates a new schema with every tenant table ``PARTITION BY
HASH (tenant_key)`` into 8 parts: PostgreSQL then refuses any primary or unique key without
the tenant key, as Citus does. The contract scenarios (track, identify, group, set_stage,
status, outbox acknowledgements and retries, users with and without accounts) run on it
while the store's statement hook records every statement with its arguments; each is then
``EXPLAIN``-ed with ``plan_cache_mode = force_custom_plan`` and must touch exactly one
partition of each table it reads or writes. No statement, recorded or in the package's
source, uses ``pg_advisory``. A real server (tests/pgserver.py), no mock.
"""

from __future__ import annotations

import pathlib
import re
from datetime import datetime, timezone

import psycopg
import pytest

import pqlsdk
from pqlsdk.commits import _Request
from pqlsdk.store import postgres as pg

PARTITIONS = 8
AT = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = {"rules": [
    {"name": "reporter", "all": [{"event": "report_generated", "at_least": 2}]},
    {"name": "big_plan", "all": [{"trait": "plan", "equals": "enterprise"}]},
    {"name": "team", "subject": "account", "stage": "sql",
     "all": [{"event": "report_generated", "at_least": 3}]},
    {"name": "big_company", "subject": "account",
     "all": [{"trait": "size", "gte": 100}]},
]}
#: The delivery worker's own statements, which read across tenants by design (a claim
#: leases a destination's due rows whatever their tenant: one conditional UPDATE ...
#: RETURNING; see shared/notes/scale.md): everything else must bind one tenant. Its
#: acknowledgements, retries and releases are checked.
ACROSS_TENANTS = (
    "UPDATE outbox SET lease_until = %(lease)s, attempts = attempts + 1",  # the claim
    "INSERT INTO outbox_lanes",  # a destination's lane (a global table)
    "SELECT * FROM qualifications WHERE id IN",  # what the claimed rows name
    "SELECT * FROM outbox WHERE true AND status = %(p1)s AND destination NOT IN",  # orphans
    "SELECT 1 FROM outbox WHERE destination = ",  # due?
    "SELECT count(*) FILTER",  # waiting
)


class Recorder:
    """The store's statement hook: every statement sent, with its arguments."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, dict]] = []

    def __call__(self, sql: str, args: dict) -> None:
        self.statements.append((sql, dict(args)))


def _partitions(plan: dict) -> dict[str, set[str]]:
    """Per pqlsdk table, the partitions a plan reads or writes (``events_p3`` -> events)."""
    touched: dict[str, set[str]] = {}

    def walk(node: dict) -> None:
        name = node.get("Relation Name")
        if name is not None:
            found = re.fullmatch(r"(\w+)_p(\d+)", name)
            if found and found.group(1) in pg.TENANT_TABLES:
                touched.setdefault(found.group(1), set()).add(name)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return touched


def _explain(url: str, schema: str, sql: str, args: dict) -> dict:
    # a client-side cursor sends the arguments as literals: the plan is the custom one
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}")
        conn.execute("SET plan_cache_mode = force_custom_plan")
        with psycopg.ClientCursor(conn) as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", args)
            return cursor.fetchone()[0][0]


@pytest.fixture
def sharded(pg_schema):
    """A new schema whose tenant tables are hash-partitioned by tenant key."""
    url, schema = pg_schema
    pg.PostgresStore(url, schema=schema, partitions=PARTITIONS).close()
    return url, schema


def test_the_sharded_schema_partitions_every_tenant_table_by_tenant_key(sharded):
    url, schema = sharded
    with psycopg.connect(url) as conn:
        parted = dict(conn.execute(
            "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p "
            "JOIN pg_class c ON c.oid = p.partrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (schema,)).fetchall())
        # every primary and unique key of a partitioned table includes the tenant key
        keys = conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND i.indisunique "
            "AND c.relkind = 'p'", (schema,)).fetchall()
        tables = {name for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name NOT LIKE '%%\\_p_'", (schema,))}
    assert parted == {table: "HASH (tenant_key)" for table in pg.TENANT_TABLES}
    assert tables == set(pg.TENANT_TABLES) | set(pg.GLOBAL_TABLES)
    assert keys and all("tenant_key" in definition for _, definition in keys)
    assert {table for table, _ in keys} == set(pg.TENANT_TABLES)


def _scenarios(client: pqlsdk.Client, failing: list[int]) -> None:
    """The contract's calls, on users with and without accounts."""
    client.track("solo", "report_generated", timestamp=AT, message_id="m1")
    client.track("solo", "report_generated", timestamp=AT, message_id="m1")  # a retry
    client.track("solo", "report_generated", timestamp=AT)  # qualifies "reporter"
    client.identify("solo", {"plan": "enterprise"}, timestamp=AT)  # qualifies "big_plan"
    client.track("ada", "report_generated", account_id="acme", timestamp=AT)
    client.track("bob", "report_generated", account_id="acme", timestamp=AT)
    client.group("ada", "acme", {"size": 120}, timestamp=AT)  # qualifies "big_company"
    failing.append(1)  # the next delivery raises once: rescheduled, then acknowledged
    client.track("bob", "report_generated", account_id="acme", timestamp=AT)  # "team"
    client.identify("bob", {"plan": "free"}, timestamp=AT)
    client.track("bob", "report_generated", timestamp=AT)  # its account, found by user id
    # the named calls that change a user's tenant: each of their statements binds one
    # tenant too (the one it reads from; the rows it moves go to the new one)
    client.track("cy", "report_generated", timestamp=AT)
    client.group("cy", "acme", timestamp=AT)  # from its own tenant into acme's
    client.track("dee", "report_generated", account_id="globex", timestamp=AT)
    client.group("dee", "acme", timestamp=AT)  # from globex's into acme's
    client.set_stage("ada", stage="unqualified", reason="no budget", timestamp=AT)
    client.set_stage(account_id="acme", stage="opportunity", timestamp=AT)
    client.set_stage("solo", stage="sql", timestamp=AT)
    assert client.status("solo").stage == "sql"
    assert client.status("bob").subject_type == "user"
    assert client.status(account_id="acme").stage == "opportunity"
    assert "acme" in client.explain("ada")
    assert [c.to_stage for c in client.history("ada")] == ["lead", "unqualified"]
    client.flush()


#: Transaction control inside a transaction (a shared commit's savepoint per call): no
#: table, no plan.
CONTROL = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


def _shared_batch(client: pqlsdk.Client) -> None:
    """Calls of several tenants applied as one shared commit (what concurrent threads get),
    then delivered."""
    calls = [client.prepare_track("solo", "report_generated", timestamp=AT),
             client.prepare_track("ada", "report_generated", timestamp=AT),
             client.prepare_track("eve", "report_generated", account_id="initech",
                                  timestamp=AT),
             client.prepare_identify("bob", {"plan": "team"}, timestamp=AT)]
    batch = [_Request(lambda tx, call=call: client.apply(tx, call)) for call in calls]
    before = client._commits.batches
    client._commits.apply(batch)
    assert [r.error for r in batch] == [None] * 4
    assert client._commits.batches == before + 1  # one transaction for the four
    client.flush()


def test_every_statement_of_a_call_touches_one_partition_of_each_table(
        sharded, segment_server, segment_client):
    url, schema = sharded
    delivered, failing = [], []

    def crm(q):
        if failing:
            failing.pop()
            raise RuntimeError("the CRM is down")
        delivered.append(q.rule)

    # forward_events: every call is mirrored to Segment, a track's row by its message id
    client = pqlsdk.Client(url, schema=schema, rules=RULES, sync_mode=True,
                           on_qualified={"crm": crm}, max_retries=3, segment=segment_client,
                           forward_events=True)
    recorder = Recorder()
    client.store.on_statement = recorder
    try:
        _scenarios(client, failing)
        _shared_batch(client)
        # the retried delivery is due after its backoff: deliver it now
        with client.store.write() as tx:
            tx.conn.execute("UPDATE outbox SET next_attempt_at = 0 WHERE status = 'pending'")
        client.flush()
    finally:
        client.store.on_statement = None
        client.close()
    # solo: 2 reports (a retry counted once) and a plan; bob: 2 reports by its 2nd; acme: a
    # size of 120, and 3 reports by bob's 2nd (ada 1, bob 2); cy and dee: 1 report each
    # the shared batch: ada's 2nd report ("reporter"), and acme's 4th (it already has "team")
    assert sorted(delivered) == ["big_company", "big_plan", "reporter", "reporter", "reporter",
                                 "team"]
    # every applied track was mirrored and built from its event row at delivery: solo's m1
    # once (its retry is not applied) and 7 more in the scenarios, 3 in the shared batch
    reports = [m for m in segment_server.messages if m.get("event") == "report_generated"]
    assert len(reports) == 11 and len({m["messageId"] for m in reports}) == 11
    assert [m["userId"] for m in reports][-3:] == ["solo", "ada", "eve"]
    # a shared batch takes a savepoint per call only when one of its calls raised
    assert not any(sql.startswith("SAVEPOINT") for sql, _ in recorder.statements)
    assert any(sql.startswith("SELECT message_id, account_id, event, ts, properties FROM events")
               for sql, _ in recorder.statements)

    checked: dict[str, int] = {}
    wide = []
    for sql, args in recorder.statements:
        if sql.startswith(ACROSS_TENANTS + CONTROL) or "SET next_attempt_at = 0" in sql:
            continue
        touched = _partitions(_explain(url, schema, sql, args))
        for table, parts in touched.items():
            checked[table] = checked.get(table, 0) + 1
            if len(parts) != 1:
                wide.append((sql, args, sorted(parts)))
    assert not wide, "statements that do not bind one tenant key:\n" + "\n".join(
        f"{sql} {args} -> {parts}" for sql, args, parts in wide)
    # the check saw every kind of tenant row being read or written
    assert set(checked) >= {"events", "users", "accounts", "qualifications", "stage_changes",
                            "outbox", "user_directory"}
    settles = [sql for sql, _ in recorder.statements
               if sql.startswith(("DELETE FROM outbox", "UPDATE outbox SET lease_until = NULL"))]
    assert any(s.startswith("DELETE FROM outbox WHERE tenant_key") for s in settles)
    assert any("last_error" in s for s in settles)  # the failed attempt was rescheduled
    # the moves were checked too: their rows go by INSERT ... SELECT and DELETE
    assert any(sql.startswith("INSERT INTO events (tenant_key") and "SELECT" in sql
               for sql, _ in recorder.statements)
    assert not [sql for sql, _ in recorder.statements if "SET tenant_key" in sql]
    assert not [sql for sql, _ in recorder.statements if "pg_advisory" in sql.lower()]


def test_a_statement_without_the_tenant_key_is_caught(sharded):
    """The check itself: the same count without the tenant key scans every partition."""
    url, schema = sharded
    with_key = _explain(url, schema, "SELECT count(*) FROM events WHERE tenant_key = %(t)s "
                        "AND user_id = %(u)s", {"t": "acme", "u": "ada"})
    without = _explain(url, schema, "SELECT count(*) FROM events WHERE user_id = %(u)s",
                       {"u": "ada"})
    assert [len(p) for p in _partitions(with_key).values()] == [1]
    assert [len(p) for p in _partitions(without).values()] == [PARTITIONS]


def test_no_statement_in_the_package_uses_advisory_locks():
    package = pathlib.Path(pqlsdk.__file__).parent
    users = [str(path) for path in package.rglob("*.py")
             if "pg_advisory" in path.read_text(encoding="utf-8").lower()]
    assert users == []


def test_a_tenants_lock_does_not_block_another_tenant(pg_schema):
    """Different tenants never wait on each other: a transaction holding tenant acme's
    subject rows (its account's and a user's) does not block track() for tenant globex;
    the same call for acme waits, and lock_timeout ends the wait."""
    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=RULES, lock_timeout=0.5)
    try:
        client.track("ada", "report_generated", account_id="acme", timestamp=AT)
        client.track("gus", "report_generated", account_id="globex", timestamp=AT)
        client.track("solo", "report_generated", timestamp=AT)
        with psycopg.connect(url) as holder:
            holder.execute(f"SELECT 1 FROM {schema}.accounts WHERE tenant_key = 'acme' "
                           f"AND account_id = 'acme' FOR UPDATE")
            holder.execute(f"SELECT 1 FROM {schema}.user_directory WHERE tenant_key = 'ada' "
                           f"FOR UPDATE")
            # other tenants go on: an account's user, and a user without an account
            client.track("gus", "report_generated", account_id="globex", timestamp=AT)
            client.track("solo", "report_generated", timestamp=AT)
            client.track("new", "signed_up", account_id="initech", timestamp=AT)
            with pytest.raises(pqlsdk.StoreBusy, match="lock_timeout"):
                client.track("ada", "report_generated", timestamp=AT)
            holder.rollback()
        client.track("ada", "report_generated", timestamp=AT)
        assert client.status(account_id="globex").qualifications == ()
        assert [q.rule for q in client.status(account_id="acme").qualifications] == []
        assert [q.rule for q in client.status("ada").qualifications] == ["reporter"]
        assert [q.rule for q in client.status("gus").qualifications] == ["reporter"]
    finally:
        client.close()
