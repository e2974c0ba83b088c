"""PostgreSQL only: many processes on one server, migrations and rolling deploys, timeouts
and an unreachable server, a process killed mid-transaction. A real server (see
tests/pgserver.py), no mock."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from datetime import datetime, timezone

import psycopg
import pytest

import pqlsdk
from pqlsdk.importer import import_jsonl
from pqlsdk.store import postgres as pg

PROCESSES = 8
EVENTS_EACH = 60
USERS = ["u0", "u1", "u2", "u3"]
ACCOUNTS = ["acme", "globex"]
#: every event at the same instant: the rules complete "at the same time" in all processes
AT = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = {"rules": [
    {"name": "busy", "all": [{"event": "report_generated", "at_least": 40}]},
    {"name": "team", "subject": "account", "all": [{"event": "report_generated",
                                                     "at_least": 100}]},
]}


def _count(url: str, schema: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0]


def _hammer(url: str, schema: str, worker: int, start, results) -> None:
    client = pqlsdk.Client(url, schema=schema, rules=RULES)
    start.wait()
    created, acknowledged = [], []
    for i in range(EVENTS_EACH):
        user = USERS[(i + worker) % len(USERS)]
        message_id = f"{worker}-{i}"
        created += client.track(user, "report_generated", {"n": i},
                                account_id=ACCOUNTS[USERS.index(user) % 2], timestamp=AT,
                                message_id=message_id)
        acknowledged.append(message_id)
    client.close()
    results.put(([q.id for q in created], acknowledged))


def test_eight_processes_qualify_each_subject_exactly_once(pg_schema):
    url, schema = pg_schema
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    # no schema up front: the eight processes also race to migrate a fresh one
    workers = [ctx.Process(target=_hammer, args=(url, schema, n, start, results))
               for n in range(PROCESSES)]
    for process in workers:
        process.start()
    start.set()
    outcomes = [results.get(timeout=180) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0  # no deadlock or serialization error reached a caller
    created = [qid for ids, _ in outcomes for qid in ids]
    acknowledged = {m for _, ms in outcomes for m in ms}

    assert len(acknowledged) == PROCESSES * EVENTS_EACH
    with psycopg.connect(url) as conn:
        stored = {m for (m,) in conn.execute(f"SELECT message_id FROM {schema}.events")}
    assert stored == acknowledged  # every acknowledged event stored, once
    # each user has 120 events (>= 40) and each account 240 (>= 100): one of each
    assert _count(url, schema, "qualifications") == len(USERS) + len(ACCOUNTS)
    assert sorted(created) == sorted(set(created))  # nobody was told twice
    assert len(created) == len(USERS) + len(ACCOUNTS)


def test_a_rolling_deploy_keeps_the_previous_release_running(pg_schema, monkeypatch):
    url, schema = pg_schema
    pqlsdk.Client(url, schema=schema, rules=RULES).close()  # migrated by this release
    with monkeypatch.context() as patched:  # the previous release, restarted mid-deploy
        patched.setattr(pg, "SCHEMA_VERSION", pg.SCHEMA_VERSION - 1)
        old = pqlsdk.Client(url, schema=schema, rules=RULES)
        old.track("ada", "report_generated", timestamp=AT)
        assert old.status("ada").stage == "lead"
        old.close()
    # a later release records that it needs a newer package: this one is refused
    store = pg.PostgresStore(url, schema=schema)
    store.record_minimum(pg.SCHEMA_VERSION + 1)
    store.close()
    with pytest.raises(pqlsdk.SchemaTooNew, match="upgrade pqlsdk"):
        pqlsdk.Client(url, schema=schema)
    with psycopg.connect(url) as conn:
        version, minimum = conn.execute(
            f"SELECT version, min_version FROM {schema}.schema_version").fetchone()
    assert (version, minimum) == (pg.SCHEMA_VERSION, pg.SCHEMA_VERSION + 1)


def test_an_unreachable_server_raises_store_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(pqlsdk.StoreUnavailable, match="unreachable"):
        pqlsdk.Client(f"postgresql://nobody:secret@127.0.0.1:{port}/app", connect_timeout=2)


def test_a_password_is_not_repeated_in_errors():
    with pytest.raises(pqlsdk.StoreUnavailable) as raised:
        pqlsdk.Client("postgresql://nobody:hunter2@127.0.0.1:1/app", connect_timeout=1)
    assert "hunter2" not in str(raised.value)


def _hold_user_row(url: str, schema: str):
    conn = psycopg.connect(url)  # a call locks a user's directory row (its tenant's lookup)
    conn.execute(f"SELECT 1 FROM {schema}.user_directory WHERE tenant_key = 'ada' FOR UPDATE")
    return conn


def test_statement_timeout_raises_store_unavailable_and_writes_nothing(pg_schema):
    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=RULES, statement_timeout=0.3)
    client.track("ada", "report_generated", timestamp=AT)
    holder = _hold_user_row(url, schema)  # another host mid-call on the same user
    try:
        with pytest.raises(pqlsdk.StoreUnavailable, match="statement_timeout"):
            client.track("ada", "report_generated", timestamp=AT)
    finally:
        holder.close()
    assert _count(url, schema, "events") == 1  # nothing half-written
    client.track("ada", "report_generated", timestamp=AT)  # and the Client goes on
    assert _count(url, schema, "events") == 2
    client.close()


def test_lock_timeout_raises_store_busy(pg_schema):
    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=RULES, lock_timeout=0.2)
    client.identify("ada", {"plan": "pro"})
    holder = _hold_user_row(url, schema)
    try:
        with pytest.raises(pqlsdk.StoreBusy, match="lock_timeout"):
            client.identify("ada", {"plan": "team"})
    finally:
        holder.close()
    assert client.status("ada") is not None
    client.close()


def _die_mid_transaction(url: str, schema: str, inside) -> None:
    client = pqlsdk.Client(url, schema=schema, rules=RULES)

    def work(tx):
        tx.lock_subjects("ada", None)
        tx.insert_event("killed-1", "ada", None, "report_generated", 0, "{}")
        inside.set()
        signal.pause()  # SIGKILL arrives here, the transaction open

    client.store.transact(work)


def test_a_process_killed_mid_transaction_leaves_nothing_and_blocks_nobody(pg_schema):
    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=RULES, lock_timeout=30)
    client.track("ada", "report_generated", timestamp=AT)
    ctx = multiprocessing.get_context("spawn")
    inside = ctx.Event()
    child = ctx.Process(target=_die_mid_transaction, args=(url, schema, inside))
    child.start()
    assert inside.wait(60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    # the server ends the dead session and releases its row lock: this call goes through
    client.track("ada", "report_generated", timestamp=AT, message_id="after")
    with psycopg.connect(url) as conn:
        ids = [m for (m,) in conn.execute(f"SELECT message_id FROM {schema}.events")]
    assert "killed-1" not in ids and "after" in ids and len(ids) == 2
    client.close()


def test_a_client_on_an_application_pool(pg_url):
    from psycopg_pool import ConnectionPool

    schema = "t_pool"
    with ConnectionPool(pg_url, min_size=1, max_size=2) as pool:
        client = pqlsdk.Client(pool, schema=schema, rules=RULES, sync_mode=True)
        for _ in range(40):
            client.track("ada", "report_generated", timestamp=AT)
        assert [q.rule for q in client.status("ada").qualifications] == ["busy"]
        client.close()
        with pool.connection() as conn:  # the application's connections are untouched
            assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_server_restart_under_load_loses_and_doubles_nothing(tmp_path):
    import threading

    from .pgserver import NoServer, Server

    try:
        server = Server()  # its own server: this test restarts it
    except NoServer as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a PostgreSQL server: {exc}")
        pytest.skip(str(exc))
    try:
        client = pqlsdk.Client(server.url, rules=RULES, connect_timeout=5)
        halfway, restarted = threading.Event(), threading.Event()

        def restart() -> None:
            halfway.wait()
            server.restart()
            restarted.set()

        threading.Thread(target=restart, daemon=True).start()
        unavailable = 0
        for n in range(200):
            if n == 50:
                halfway.set()
            if n == 150:
                assert restarted.wait(60)
            while True:  # what an application does with StoreUnavailable: try again
                try:
                    client.track(f"u{n % 4}", "report_generated", timestamp=AT,
                                 message_id=f"m{n}")
                    break
                except pqlsdk.StoreUnavailable:
                    unavailable += 1
                    if unavailable > 1000:
                        raise
        with psycopg.connect(server.url) as conn:
            ids = [m for (m,) in conn.execute("SELECT message_id FROM pqlsdk.events")]
            rules = conn.execute("SELECT subject_id, rule FROM pqlsdk.qualifications "
                                 "ORDER BY 1, 2").fetchall()
        assert sorted(ids) == sorted(f"m{n}" for n in range(200))  # each once
        assert rules == [(f"u{n}", "busy") for n in range(4)]  # 50 events each, once
        client.close()
    finally:
        server.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_connects_anew_and_leaves_the_parents_session_alone(pg_schema):
    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=RULES)
    client.track("parent", "report_generated", timestamp=AT)
    parent_connection = client.store._conn
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            client.track("child", "report_generated", timestamp=AT)
            code = 3 if client.store._conn is parent_connection else 0
            client.close(timeout=5)
            import gc

            from pqlsdk.store import postgres

            postgres._INHERITED.clear()  # as at interpreter exit: the copies are finalized
            del parent_connection
            gc.collect()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the child's exit closed nothing of the parent's: its session goes on
    client.track("parent", "report_generated", timestamp=AT)
    assert client.store._conn is parent_connection
    with psycopg.connect(url) as conn:
        users = sorted(u for (u,) in conn.execute(f"SELECT user_id FROM {schema}.events"))
    assert users == ["child", "parent", "parent"]
    client.close()


def _listening(url: str, schema: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = %s)",
                            (f"LISTEN {schema}_outbox",)).fetchone()[0]


def test_rows_this_process_does_not_send_wake_an_idle_process_at_once(pg_schema,
                                                                       segment_server):
    """A process that does not send to Segment (``send=False``) announces its Segment rows
    after the commit; a sending process's idle worker delivers them at once, not after its
    60 s poll. (Rows a process delivers itself are not announced: see the README.)"""
    import subprocess
    import sys
    import textwrap
    import time

    url, schema = pg_schema
    pg.PostgresStore(url, schema=schema).close()
    script = textwrap.dedent(f"""
        import sys, pqlsdk
        from segment.analytics import Client as SegmentClient
        segment = SegmentClient(write_key="k", host={segment_server.url!r}, sync_mode=True)
        client = pqlsdk.Client({url!r}, schema={schema!r}, segment=segment, poll_interval=60)
        client.flush(timeout=0)  # starts its delivery worker, which listens
        sys.stdin.readline()
        client.close(timeout=5)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    try:
        # nothing signals that the child's LISTEN has run: look, for at most 30 s
        deadline = time.monotonic() + 30
        while not _listening(url, schema):
            assert time.monotonic() < deadline, "the child never listened"
            time.sleep(0.05)
        from segment.analytics import Client as SegmentClient

        quiet = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
        writer = pqlsdk.Client(url, schema=schema, rules=RULES, segment=quiet, send=False)
        for _ in range(40):
            writer.track("ada", "report_generated", timestamp=AT)
        assert segment_server.arrived.wait(20), "the idle process was not woken"
        writer.close(timeout=0)
    finally:
        child.stdin.close()
        child.wait(30)
    assert [m["userId"] for m in segment_server.messages if m["type"] == "track"] == ["ada"]


def _fail_each_first_write(url: str, schema: str, sqlstate: str) -> None:
    """On every pqlsdk table, a trigger that fails the first transaction writing it with
    ``sqlstate`` (a sequence counts, and a sequence is not rolled back), as a real
    serialization failure or deadlock would."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))]
        for table in tables:
            conn.execute(f"CREATE SEQUENCE {schema}.fail_{table}")
            conn.execute(
                f"CREATE FUNCTION {schema}.fail_{table}() RETURNS trigger LANGUAGE plpgsql "
                f"AS $$ BEGIN IF nextval('{schema}.fail_{table}') = 1 THEN RAISE EXCEPTION "
                f"'injected' USING ERRCODE = '{sqlstate}'; END IF; RETURN NULL; END $$")
            conn.execute(f"CREATE TRIGGER fail_once AFTER INSERT OR UPDATE OR DELETE ON "
                         f"{schema}.{table} FOR EACH STATEMENT EXECUTE FUNCTION "
                         f"{schema}.fail_{table}()")


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_every_write_path_is_retried_after_a_serialization_failure_or_deadlock(
        pg_schema, tmp_path, sqlstate):
    """Tracking, identify, group, set_stage, delivery (claim and settle), retarget,
    retry_failed, prune, forget and import each meet the failure on their first write of
    every table, and each succeeds, invisibly, with nothing doubled."""
    url, schema = pg_schema
    rules = {"rules": [{"name": "busy", "all": [{"event": "report_generated", "at_least": 2}]}]}
    pqlsdk.Client(url, schema=schema).close()
    _fail_each_first_write(url, schema, sqlstate)
    seen: list[str] = []
    client = pqlsdk.Client(url, schema=schema, rules=rules, sync_mode=True,
                           retention="30d", on_qualified={"crm": lambda q: seen.append(q.id)})
    client.identify("ada", {"plan": "pro"}, account_id="acme", timestamp=AT)
    client.group("ada", "acme", {"seats": 5}, timestamp=AT)
    client.track("ada", "report_generated", timestamp=AT, message_id="m1")
    [q] = client.track("ada", "report_generated", timestamp=AT, message_id="m2")
    assert client.track("ada", "report_generated", timestamp=AT, message_id="m2") == []
    assert seen == [q.id]  # claimed, delivered and acknowledged once
    client.set_stage("ada", stage="sql", reason="demo", timestamp=AT)
    assert client.status("ada").stage == "sql"
    assert client.retarget("crm", "crm2") == 0
    assert client.retry_failed() == 0
    assert client.prune(as_of="2027-01-01T00:00:00Z") == 2  # m1 and m2, once each
    journal = tmp_path / "events.jsonl"
    journal.write_text('{"type": "track", "userId": "bob", "event": "report_generated", '
                       '"messageId": "i1", "timestamp": "2026-11-02T09:00:00Z"}\n')
    assert import_jsonl(client, str(journal)).applied == 1
    client.forget("bob")
    with pytest.raises(pqlsdk.UnknownSubject):
        client.export("bob")
    client.close()
    assert _count(url, schema, "events") == 0  # ada's pruned, bob's forgotten
    assert _count(url, schema, "event_rollups") == 1
    assert _count(url, schema, "qualifications") == 1
    assert _count(url, schema, "outbox") == 0
