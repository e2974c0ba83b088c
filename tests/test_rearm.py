"""Issue 20 item 3: rules that re-arm (``rearm``, ``every``): each firing its own
qualification with its own id (SPEC §11)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk import event, trait
from pqlsdk.ids import qualification_id
from pqlsdk.importer import import_jsonl

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


REARM = pqlsdk.Rule("active_again", event("report_generated", at_least=2), stage="mql",
                    rearm="90d")


def test_rearm_counts_only_events_after_the_last_firing(make_client):
    client = make_client([REARM])
    client.track("ada", "report_generated", timestamp=day(0))
    [first] = client.track("ada", "report_generated", timestamp=day(1))
    assert first.id == qualification_id("active_again", "user", "ada")
    # two more inside the 90 days: not eligible yet
    assert client.track("ada", "report_generated", timestamp=day(10)) == []
    assert client.track("ada", "report_generated", timestamp=day(50)) == []
    assert client.evaluate(as_of=day(90)) == []  # day 90 < day 1 + 90 days
    # day 91: eligible; the three reports after the firing (days 10, 50, 91) count
    [second] = client.track("ada", "report_generated", timestamp=day(91))
    assert second.id == qualification_id("active_again", "user", "ada", firing=1)
    assert second.id != first.id and second.qualified_at == day(91)
    assert second.evidence.value == 2  # at_least 2: counting stops at the bound
    assert [q.id for q in client.qualifications()] == [first.id, second.id]


def test_rearm_ignores_the_events_the_last_firing_used(make_client):
    client = make_client([REARM])
    client.track("ada", "report_generated", timestamp=day(0))
    client.track("ada", "report_generated", timestamp=day(1))
    # day 100: only one report since the firing on day 1
    assert client.track("ada", "report_generated", timestamp=day(100)) == []
    assert len(client.track("ada", "report_generated", timestamp=day(101))) == 1


def test_every_is_a_rolling_cooldown_with_windows_as_usual(make_client):
    rule = pqlsdk.Rule("weekly_active", event("login", at_least=3, within="7d"),
                       every="30d")
    client = make_client([rule])
    for n in (0, 1):
        client.track("ada", "login", timestamp=day(n))
    [first] = client.track("ada", "login", timestamp=day(2))
    assert first.qualified_at == day(2)
    for n in (5, 6, 7):  # three in a week again, but inside the cooldown
        assert client.track("ada", "login", timestamp=day(n)) == []
    # days 29 and 31 inside the cooldown; day 32 is 30 days after day 2, and the window
    # (days 25-32) holds the logins of days 29, 31 and 32, before the cooldown ended too
    assert client.track("ada", "login", timestamp=day(29)) == []
    assert client.track("ada", "login", timestamp=day(31)) == []
    [second] = client.track("ada", "login", timestamp=day(32))
    assert second.evidence.value == 3
    assert second.id == qualification_id("weekly_active", "user", "ada", firing=1)
    [report] = [r for r in client.rule_report() if r.rule == "weekly_active"]
    assert (report.qualified, report.firings) == (1, 2)


def test_a_rejection_is_not_a_rearm(make_client):
    rule = pqlsdk.Rule("on_trial", trait("plan", equals="trial"), rearm="30d")
    client = make_client([rule])
    [first] = client.identify("ada", {"plan": "trial"}, timestamp=day(0))
    [again] = client.evaluate(as_of=day(31))  # a trait rule re-arms: fires again
    assert again.id == qualification_id("on_trial", "user", "ada", firing=1)
    client.set_stage("ada", stage="unqualified", reason="student", timestamp=day(32))
    # the rejection stands: no re-arm brings ada back without something new
    assert client.evaluate(as_of=day(70)) == []
    assert client.evaluate(as_of=day(200)) == []
    assert client.status("ada").stage == "unqualified"
    assert [q.id for q in client.qualifications()] == [first.id, again.id]


def test_rules_file_dict_and_builders_take_rearm_and_every(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\nname = "a"\nrearm = "90d"\n  [[rules.all]]\n  event = "x"\n'
                    '[[rules]]\nname = "b"\nevery = "2w"\n  [[rules.all]]\n  event = "x"\n')
    a, b = pqlsdk.load_rules(str(path)).rules
    assert (a.rearm, a.every, b.rearm, b.every) == (timedelta(days=90), None, None,
                                                    timedelta(days=14))
    built = pqlsdk.Rule("b", event("x"), every=timedelta(days=14))
    assert built.version == b.version and built.version != pqlsdk.Rule("b", event("x")).version
    with pytest.raises(pqlsdk.RuleError, match="not both"):
        pqlsdk.Rule("c", event("x"), rearm="1d", every="1d")
    with pytest.raises(pqlsdk.RuleError, match=r"rule 'c': rearm: must be a duration"):
        pqlsdk.load_rules({"rules": [{"name": "c", "rearm": "soon",
                                            "all": [{"event": "x"}]}]})
    assert pqlsdk.rules.rule_to_dict(a)["rearm"] == "90d"


def test_replay_equals_live_with_a_rearmed_rule(make_client, tmp_path):
    rule = pqlsdk.Rule("weekly_active", event("login", at_least=2, within="7d"), every="10d")
    live = make_client([rule])
    messages = []
    for n in (0, 1, 3, 4, 12, 13, 14, 30, 31):
        live.track("ada", "login", timestamp=day(n), message_id=f"m{n}")
        messages.append({"type": "track", "userId": "ada", "event": "login",
                         "messageId": f"m{n}", "timestamp": day(n).isoformat()})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in reversed(messages)) + "\n")
    replay = pqlsdk.Client(database=":memory:", rules=[rule])
    import_jsonl(replay, str(path))
    shown = [(q.id, q.qualified_at) for q in live.qualifications()]
    assert shown == [(q.id, q.qualified_at) for q in replay.qualifications()]
    # fired day 1; eligible from day 11, the 7-day window holds 2 on day 13; again day 31
    assert [at for _, at in shown] == [day(1), day(13), day(31)]
    replay.close()


@pytest.mark.sqlite_only
def test_the_migration_keeps_qualifications_and_adds_firing_to_the_key(tmp_path):
    import sqlite_utils

    from pqlsdk.store import sqlite as store

    path = str(tmp_path / "old.db")
    db = sqlite_utils.Database(path)
    before = store.MIGRATIONS.index(store._qualification_firings)
    for number, migration in enumerate(store.MIGRATIONS[:before]):
        migration(db)
        db.execute(f"PRAGMA user_version = {number + 1}")
    db.execute("INSERT INTO qualifications (tenant_key, id, rule, stage, subject_type, "
               "subject_id, user_id, qualified_at, evidence, round) VALUES ('ada', 'q1', "
               "'r', 'pql', 'user', 'ada', 'ada', 5, '{}', 2)")
    db.conn.commit()
    db.close()
    store.Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id, round, firing, rowid FROM qualifications").fetchall() == [
        ("q1", 2, 0, 1)]
    insert = ("INSERT INTO qualifications (tenant_key, id, rule, stage, subject_type, "
              "subject_id, user_id, qualified_at, evidence, round, firing) VALUES ('ada', ?, "
              "'r', 'pql', 'user', 'ada', 'ada', 5, '{}', 2, ?) ON CONFLICT DO NOTHING")
    assert conn.execute(insert, ("q2", 0)).rowcount == 0  # same firing: once
    assert conn.execute(insert, ("q3", 1)).rowcount == 1  # the next firing: its own row


def test_backtest_fires_a_rearmed_rule_again_as_live_does(make_client):
    """The backtest's replay re-arms a rule as live traffic does (``rearm``: only events
    after the last firing count; ``every``: a cooldown) and counts each firing."""
    from pqlsdk.backtest import firings
    from pqlsdk.timestamps import from_micros, to_micros

    weekly = pqlsdk.Rule("weekly_active", event("login", at_least=2, within="7d"),
                         every="10d")
    client = make_client([REARM, weekly])
    for n in (0, 1, 10, 50, 91):  # REARM fires day 1 and day 91 (days 10, 50, 91 after)
        client.track("ada", "report_generated", timestamp=day(n))
    for n in (0, 1, 3, 4, 12, 13, 14, 30, 31):  # weekly: day 1, day 13, day 31
        client.track("ada", "login", timestamp=day(n))
    for n in (0, 1):  # REARM fires day 1
        client.track("bob", "report_generated", timestamp=day(n))
    client.track("ada", "upgraded", timestamp=day(100))
    live = sorted((q.rule, q.subject_id, q.qualified_at) for q in client.qualifications())
    assert live == [("active_again", "ada", day(1)), ("active_again", "ada", day(91)),
                    ("active_again", "bob", day(1)), ("weekly_active", "ada", day(1)),
                    ("weekly_active", "ada", day(13)), ("weekly_active", "ada", day(31))]
    with client.store.read() as tx:
        replayed = sorted((rule.name, subject_id, from_micros(q))
                          for subject_id, found in firings(tx, client.rules.rules, None,
                                                           "user", to_micros(day(200)))
                          for rule, times in zip(client.rules.rules, found, strict=True)
                          for q in times)
    assert replayed == live
    result = client.backtest(outcome={"event": "upgraded"}, horizon="30d", until=day(200))
    again = result.rule("active_again")
    # firings: ada day 1 (upgrade 99 days later: not converted), ada day 91 (9 days:
    # converted), bob day 1 (never): 3 qualified, 1 converted; ada is the one converter
    assert (result.subjects, result.converters) == (2, 1)
    assert (again.qualified, again.converted, again.recall, again.missed) == (3, 1, 1.0, 0)
    assert again.precision == 1 / 3
    assert again.median_lead_time == timedelta(days=9)
