"""Bounded growth: retention folds old events into rollups; lifetime counts, distinct values,
sums and scores without a window stay exact across a prune."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk import all_of, event, retention
from pqlsdk.cli import main
from pqlsdk.retention import Pruner

from .conftest import count_rows, count_table

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
OLD = NOW - timedelta(days=500)  # older than a 400d retention
RECENT = NOW - timedelta(days=10)

RULES = {
    "rules": [
        {"name": "lifetime_reports", "stage": "mql",
         "all": [{"event": "report_generated", "at_least": 8}]},
        {"name": "team", "all": [{"event": "teammate_invited", "distinct": "email",
                                  "at_least": 5}]},
        {"name": "volume", "all": [{"event": "emails_sent", "sum": "count",
                                    "at_least": 1000}]},
        {"name": "slack", "all": [{"event": "integration_connected",
                                   "where": {"provider": "slack"}, "at_least": 2}]},
        {"name": "busy_account", "subject": "account",
         "all": [{"event": "report_generated", "at_least": 12}]},
        {"name": "recent", "all": [{"event": "report_generated", "at_least": 50,
                                    "within": "30d"}]},
    ],
    "scoring": {"behavior": [
        {"event": "report_generated", "points": 2},
        {"event": "integration_connected", "points": 5, "where": {"provider": "slack"}},
    ]},
}


def history(client, start: datetime) -> None:
    """Five reports, three invites (two of them the same email), 600 emails sent, a
    slack connection and a hubspot one, for ada (in acme) and bob (in acme)."""
    for user in ("ada", "bob"):
        client.identify(user, {"plan": "trial"}, account_id="acme", timestamp=start)
        for n in range(5):
            client.track(user, "report_generated", {"report": f"r{n}", "n": n},
                         timestamp=start + timedelta(hours=n), message_id=f"{user}-r{n}")
        for n, email in enumerate(["a@x.io", "b@x.io", "a@x.io"]):
            client.track(user, "teammate_invited", {"email": email, "n": n},
                         timestamp=start + timedelta(hours=10 + n))
        for n, count in enumerate([100, 250, 250]):
            client.track(user, "emails_sent", {"count": count, "batch": n},
                         timestamp=start + timedelta(hours=20 + n))
        for n, provider in enumerate(["slack", "hubspot"]):
            client.track(user, "integration_connected", {"provider": provider, "n": n},
                         timestamp=start + timedelta(hours=30 + n))


def progress(client, user, **subject):
    status = client.status(user, as_of=NOW, **subject) if user else client.status(
        as_of=NOW, **subject)
    return {name: m.to_dict() for name, m in status.progress.items()}


@pytest.mark.parametrize("rules", ["with rules (properties projected)", "without rules"])
def test_lifetime_distinct_sum_and_where_stay_exact_across_a_prune(make_client, db_path,
                                                                   rules):
    client = make_client(RULES, retention="400d", sync_mode=True)
    history(client, OLD)
    before = (progress(client, "ada"), progress(client, None, account_id="acme"),
              client.score("ada", as_of=NOW))
    assert before[0]["lifetime_reports"]["parts"][0]["value"] == 5
    assert before[0]["team"]["parts"][0]["value"] == 2
    assert before[0]["volume"]["parts"][0]["value"] == 600
    assert before[0]["slack"]["parts"][0]["value"] == 1
    assert before[1]["busy_account"]["parts"][0]["value"] == 10
    assert before[2].behavior == 5 * 2 + 5
    if rules == "without rules":  # as `pqlsdk prune` without --rules: every property kept
        client.close()
        client = make_client(None, retention="400d", sync_mode=True)
    removed = client.prune(as_of=NOW)
    assert removed == 2 * 13
    assert count_rows(db_path, "events") == 0
    if rules == "without rules":
        client.close()
        client = make_client(RULES, retention="400d", sync_mode=True)
    after = (progress(client, "ada"), progress(client, None, account_id="acme"),
             client.score("ada", as_of=NOW))
    assert after == before
    assert client.prune(as_of=NOW) == 0  # nothing old any more


def test_qualifications_after_a_prune_count_the_pruned_events(make_client):
    client = make_client(RULES, retention="400d", sync_mode=True)
    history(client, OLD)
    assert client.prune(as_of=NOW) == 26
    created = []
    for n in range(3):  # 5 pruned + 3 new reports: the 8th qualifies
        created += client.track("ada", "report_generated", timestamp=RECENT + timedelta(n))
    assert [(q.rule, q.qualified_at) for q in created] == [
        ("busy_account", RECENT + timedelta(1)),  # 10 pruned in acme + 2
        ("lifetime_reports", RECENT + timedelta(2))]
    volume = client.track("ada", "emails_sent", {"count": 400}, timestamp=RECENT)
    assert [q.rule for q in volume] == ["volume"]  # 600 pruned + 400
    assert client.track("bob", "integration_connected", {"provider": "slack"},
                        timestamp=RECENT)[0].rule == "slack"  # 1 pruned + 1


def test_the_user_of_the_account_rule_is_counted_with_its_pruned_events(make_client):
    client = make_client(RULES, retention="400d", sync_mode=True)
    history(client, OLD)  # 10 reports in acme
    client.prune(as_of=NOW)
    client.track("ada", "report_generated", timestamp=RECENT)
    created = client.track("bob", "report_generated", timestamp=RECENT)
    assert "busy_account" in [q.rule for q in created]


def test_rollups_keep_only_what_the_rules_read(make_client, db_path):
    client = make_client(RULES, retention="400d", sync_mode=True)
    history(client, OLD)
    client.prune(as_of=NOW)
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT event, properties, n FROM event_rollups "
                            "WHERE user_id = 'ada' ORDER BY event, properties").fetchall()
    assert rows == [
        ("emails_sent", '{"count": 100}', 1), ("emails_sent", '{"count": 250}', 2),
        ("integration_connected", '{"provider": "hubspot"}', 1),
        ("integration_connected", '{"provider": "slack"}', 1),
        ("report_generated", "{}", 5),
        ("teammate_invited", '{"email": "a@x.io"}', 2),
        ("teammate_invited", '{"email": "b@x.io"}', 1),
    ]


def test_a_window_longer_than_the_retention_is_refused(make_client):
    with pytest.raises(pqlsdk.RuleError, match=r"window 30d is longer than the retention "
                                                r"\(7d\)") as caught:
        make_client(RULES, retention="7d")
    assert caught.value.rule == "recent"
    scoring = {"behavior": [{"event": "x", "points": 1, "within": "60d"}]}
    with pytest.raises(pqlsdk.RuleError, match="scoring"):
        make_client([pqlsdk.Rule("r", all_of(event("x")))], scoring=scoring,
                    retention="30d")
    with pytest.raises(pqlsdk.ValidationError, match="retention"):
        make_client(RULES, retention="forever")


def test_without_retention_prune_removes_nothing(make_client, db_path):
    client = make_client(RULES, sync_mode=True)
    history(client, OLD)
    assert client.prune(as_of=NOW) == 0
    assert count_rows(db_path, "events") == 26


def test_the_background_pruner_works_in_small_batches(make_client, db_path):
    client = make_client(RULES, retention="400d", sync_mode=True)
    for n in range(1200):
        client.track(f"user-{n % 7}", "report_generated", timestamp=OLD + timedelta(minutes=n))
    client.track("ada", "report_generated", timestamp=RECENT)
    pruner = Pruner(client._retention, client.store,
                    lambda: pqlsdk.timestamps.to_micros(NOW))
    batches = 1200 // retention.CHUNK
    removed = [pruner.run_once() for _ in range(batches + 2)]
    assert removed[:batches] == [retention.CHUNK] * batches  # CHUNK scanned per transaction
    assert removed[batches:] == [0, 0] and pruner.after == 0  # a sweep is over: next starts
    assert count_rows(db_path, "events") == 1 + 1200 - sum(removed)
    assert client.score("user-3", as_of=NOW).behavior == 2 * 171  # n % 7 == 3 below 1200


def test_a_client_with_retention_prunes_in_a_thread_it_stops_on_close(make_client):
    client = make_client(RULES, retention="400d")
    assert client._pruner is not None and client._pruner._thread.is_alive()
    client.close()
    assert not client._pruner._thread.is_alive()
    assert make_client(RULES, retention="400d", sync_mode=True)._pruner is None


def test_forget_removes_rollups_and_export_shows_them(make_client, db_path):
    client = make_client(RULES, retention="400d", sync_mode=True)
    history(client, OLD)
    client.prune(as_of=NOW)
    pruned = client.export("ada")["pruned_events"]
    assert {"event": "report_generated", "account_id": "acme", "properties": {},
            "count": 5} in [{k: p[k] for k in ("event", "account_id", "properties", "count")}
                            for p in pruned]
    client.forget("ada")
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM event_rollups WHERE user_id = 'ada'"
                            ).fetchone()[0] == 0


def test_cli_prune(tmp_path):
    db = str(tmp_path / "pql.db")
    rules = tmp_path / "rules.json"
    client = pqlsdk.Client(db, rules=RULES, sync_mode=True)
    history(client, OLD)
    client.close()
    rules.write_text(json.dumps(RULES))
    result = CliRunner().invoke(main, ["prune", "--db", db, "--retention", "400d",
                                       "--as-of", NOW.isoformat(), "--busy-timeout", "5"])
    assert result.exit_code == 0, result.output
    assert "removed 26 event(s) older than 400d" in result.output
    assert count_rows(db, "events") == 0
    again = CliRunner().invoke(main, ["prune", "--db", db, "--retention", "400d", "--json"])
    assert json.loads(again.output)["removed"] == 0


def test_a_decaying_score_weighs_pruned_events_as_of_their_last_within_its_bound(make_client):
    scoring = {"half_life": "30d", "behavior": [{"event": "report_generated", "points": 10}]}
    client = make_client([pqlsdk.Rule("r", all_of(event("report_generated",
                                                        at_least=10**6)))],
                         scoring=scoring, retention="400d", sync_mode=True)
    span = timedelta(days=20)
    for n in range(5):
        client.track("ada", "report_generated", timestamp=OLD + span * n / 4)
    client.track("ada", "report_generated", timestamp=RECENT)
    before = client.score("ada", as_of=NOW).behavior
    assert client.prune(as_of=NOW) == 5
    after = client.score("ada", as_of=NOW).behavior
    newest = 10 * 0.5 ** ((NOW - (OLD + span)) / timedelta(days=30))
    assert before <= after <= before + 5 * newest * (1 - 0.5 ** (span / timedelta(days=30)))
    assert after - before < 1e-3  # 480 days at a 30-day half-life: next to nothing


PRUNERS = 4
OLD_EVENTS = 3000
#: A lifetime count no user reaches, so each status shows it.
MANY = {"rules": [{"name": "many", "all": [{"event": "report_generated",
                                           "at_least": 10 * OLD_EVENTS}]}]}


def _prune_together(database: dict, start, results) -> None:
    client = pqlsdk.Client(**database, retention="400d")
    start.wait()
    results.put(client.prune(as_of=NOW))
    client.close()


def test_processes_pruning_together_fold_each_event_once(database, tmp_path):
    """Pruners in several processes (a fleet's app servers, each with ``retention=``) sweep
    the same old events at once: each event is folded into the rollups by exactly one of
    them, so lifetime counts neither lose nor double what was pruned."""
    import multiprocessing

    from pqlsdk.importer import import_jsonl

    lines = tmp_path / "old.jsonl"
    lines.write_text("".join(
        json.dumps({"type": "track", "userId": f"u{n % 7}", "event": "report_generated",
                    "messageId": f"m{n}", "properties": {"n": n},
                    "timestamp": (OLD + timedelta(minutes=n)).isoformat()}) + "\n"
        for n in range(OLD_EVENTS)))
    client = pqlsdk.Client(**database, rules=MANY, retention="400d")
    import_jsonl(client, str(lines))
    before = {f"u{k}": progress(client, f"u{k}")["many"] for k in range(7)}
    client.close()

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_prune_together, args=(database, start, results))
               for _ in range(PRUNERS)]
    for process in workers:
        process.start()
    start.set()
    for _ in workers:
        results.get(timeout=120)
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0

    # each Client's background pruner swept too, beside the explicit prune() calls
    assert count_table(database, "events") == 0
    client = pqlsdk.Client(**database, rules=MANY, retention="400d")
    after = {f"u{k}": progress(client, f"u{k}")["many"] for k in range(7)}
    assert after == before
    assert client.prune(as_of=NOW) == 0
    client.close()


def _prune_once(url: str, schema: str, results) -> None:
    client = pqlsdk.Client(url, schema=schema, retention="400d")
    results.put(client.prune(as_of=NOW))
    client.close()


def _waiting_on_locks(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND datname = current_database()").fetchone()[0]


def test_pruners_that_met_on_the_same_rows_fold_them_once(pg_schema):
    """On PostgreSQL two app servers' pruners can reach the same old events at once: the
    test holds one of them locked until both pruners wait on it, then lets go. Each
    event is counted into the rollups by the pruner that removed it, and only once."""
    import multiprocessing

    import psycopg

    url, schema = pg_schema
    client = pqlsdk.Client(url, schema=schema, rules=MANY)
    for n in range(40):
        client.track(f"u{n % 2}", "report_generated", {"n": n}, message_id=f"m{n}",
                     timestamp=OLD + timedelta(minutes=n))
    before = {user: progress(client, user)["many"] for user in ("u0", "u1")}
    client.close()
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watch:
        holder.execute(f"SELECT 1 FROM {schema}.events WHERE message_id = 'm39' FOR UPDATE")
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        pruners = [ctx.Process(target=_prune_once, args=(url, schema, results))
                   for _ in range(2)]
        for process in pruners:
            process.start()
        # each pruner's background thread and its prune() meet on the held row
        for _ in range(200_000):
            if _waiting_on_locks(watch) >= 2:
                break
        else:
            pytest.fail("the pruners never reached the held row")
        holder.rollback()  # let go
        removed = [results.get(timeout=120) for _ in pruners]
    for process in pruners:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sum(removed) <= 40
    client = pqlsdk.Client(url, schema=schema, rules=MANY)
    assert {user: progress(client, user)["many"] for user in ("u0", "u1")} == before
    assert count_table({"database": url, "schema": schema}, "events") == 0
    client.close()


def test_a_user_moved_while_a_pruner_folds_its_events_counts_each_once(pg_schema,
                                                                        monkeypatch):
    """On PostgreSQL a pruner has removed a user's old events and written their rollup,
    not yet committed, when a track() moves the user to an account: the move waits for
    the pruner and takes the rollup along, so each event is counted once in the new
    tenant (counted twice, the user would qualify for a rule it has not met)."""
    import threading

    import psycopg

    from pqlsdk.retention import Retention
    from pqlsdk.store import postgres
    from pqlsdk.timestamps import to_micros

    url, schema = pg_schema
    rules = {"rules": [{"name": "power", "all": [{"event": "report_generated",
                                                  "at_least": 30}]}]}
    client = pqlsdk.Client(url, schema=schema, rules=rules)
    for n in range(20):
        client.track("u0", "report_generated", {"n": n}, timestamp=OLD + timedelta(minutes=n))
    folded, go_on = threading.Event(), threading.Event()
    add = postgres.PgTransaction.add_to_rollups

    def add_then_wait(tx, added):  # the pruner stops before its commit until let go
        add(tx, added)
        if threading.current_thread().name == "pruner":
            folded.set()
            assert go_on.wait(60)

    monkeypatch.setattr(postgres.PgTransaction, "add_to_rollups", add_then_wait)
    pruner = threading.Thread(name="pruner", target=lambda: Retention(
        timedelta(days=400)).prune(client.store, to_micros(NOW)))
    pruner.start()
    assert folded.wait(60)
    mover = pqlsdk.Client(url, schema=schema, rules=rules)
    moved: list = []
    move = threading.Thread(target=lambda: moved.append(mover.track(
        "u0", "report_generated", account_id="acme", timestamp=NOW)))
    move.start()
    with psycopg.connect(url, autocommit=True) as watch:
        for _ in range(200_000):
            if _waiting_on_locks(watch) >= 1:
                break
        else:
            pytest.fail("the move never waited for the pruner")
    go_on.set()
    pruner.join(60)
    move.join(60)
    assert moved == [[]]  # 21 reports: power (30) is not met
    status = mover.status("u0", as_of=NOW)
    assert status.progress["power"].to_dict()["parts"][0]["value"] == 21
    assert mover.evaluate(as_of=NOW) == []
    mover.close()
    client.close()
