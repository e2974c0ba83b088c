"""Issue 20 item 5: the hand-off deadline (``[lifecycle] accept_within``): ``overdue()``,
``pqlsdk overdue``, ``on_overdue`` once per overdue qualification, and the funnel's time to
acceptance and rejection (SPEC §11)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk import event
from pqlsdk.cli import main
from pqlsdk.store.sqlite import HANDOFF_BACKFILL

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [
    pqlsdk.Rule("engaged", event("report_generated"), stage="mql"),
    pqlsdk.Rule("team", event("teammate_invited"), stage="pql"),
    pqlsdk.Rule("demo", event("demo_requested"), stage="sql"),
]
LIFECYCLE = {"accept_within": "2d"}


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def history(client):
    client.track("ada", "teammate_invited", timestamp=day(0))
    client.track("dan", "demo_requested", timestamp=day(0))          # sql: no hand-off
    client.track("eve", "report_generated", timestamp=day(0.25))     # mql
    client.track("cara", "teammate_invited", timestamp=day(0.5))
    client.track("eve", "teammate_invited", timestamp=day(0.75))     # pql: a second one
    client.track("bob", "teammate_invited", timestamp=day(1))
    client.track("fred", "teammate_invited", timestamp=day(1))
    client.set_stage("bob", stage="sql", reason="call booked", timestamp=day(1.5))
    client.set_stage("fred", stage="opportunity", timestamp=day(2))
    client.set_stage("cara", stage="unqualified", reason="student", timestamp=day(3))


def shown(found):
    return [(o.subject_id, o.rule, o.stage, o.qualified_at) for o in found]


def test_overdue_lists_open_hand_offs_oldest_first(make_client):
    client = make_client(RULES, lifecycle=LIFECYCLE)
    history(client)
    # as of day 2.6, the deadline took those qualified by day 0.6; cara was still open
    # then, but her rejection on day 3 is already recorded: only what is open now counts
    assert shown(client.overdue(as_of=day(2.6))) == [
        ("ada", "team", "pql", day(0)), ("eve", "engaged", "pql", day(0.25))]
    assert shown(client.overdue(as_of=day(3.5))) == [
        ("ada", "team", "pql", day(0)), ("eve", "engaged", "pql", day(0.25)),
        ("eve", "team", "pql", day(0.75))]
    [first, *_] = client.overdue(as_of=day(3.5))
    assert first.due_at == day(2)
    assert first.qualification_id == client.status("ada").qualifications[0].id
    assert client.overdue(as_of=day(1.9)) == []
    client.set_stage("ada", stage="customer", timestamp=day(4))  # accepted at last
    assert [o.subject_id for o in client.overdue(as_of=day(5))] == ["eve", "eve"]


def test_overdue_needs_a_deadline(make_client):
    client = make_client(RULES)
    with pytest.raises(pqlsdk.ValidationError, match=r"\[lifecycle\] accept_within"):
        client.overdue()
    with pytest.raises(pqlsdk.RuleError, match=r"lifecycle\.accept_within"):
        make_client(RULES, lifecycle={"accept_within": "soon"})
    with pytest.raises(pqlsdk.RuleError, match="allowed: accept_within"):
        make_client(RULES, lifecycle={"accept": "2d"})


def test_on_overdue_is_told_once_per_overdue_qualification(make_client):
    told = []
    client = make_client(RULES, lifecycle=LIFECYCLE, sync_mode=True)
    client.on_overdue(told.append, name="slack")
    history(client)
    client.evaluate(as_of=day(2.6))
    assert [(o.subject_id, o.rule) for o in told] == [("ada", "team"), ("eve", "engaged")]
    client.evaluate(as_of=day(2.7))  # nothing new
    client.evaluate(as_of=day(3.5))
    assert [(o.subject_id, o.rule) for o in told] == [
        ("ada", "team"), ("eve", "engaged"), ("eve", "team")]
    assert isinstance(told[0], pqlsdk.Overdue) and told[0].due_at == day(2)
    assert client.deliveries() == []


def test_a_raising_on_overdue_hook_is_retried_and_loses_nothing(make_client):
    from freezegun import freeze_time

    calls = []

    def flaky(overdue):
        calls.append(overdue.subject_id)
        if len(calls) == 1:
            raise ConnectionError("Slack down")

    with freeze_time(day(3)) as frozen:
        client = make_client(RULES, lifecycle=LIFECYCLE, sync_mode=True)
        client.on_overdue(flaky, name="slack")
        client.track("ada", "teammate_invited", timestamp=day(0))
        client.evaluate()
        assert calls == ["ada"] and len(client.deliveries()) == 1
        client.evaluate()  # not told of twice: the row is already waiting
        frozen.tick(timedelta(minutes=5))
        client.flush()
    assert calls == ["ada", "ada"] and client.deliveries() == []


def test_the_workers_periodic_pass_finds_overdue_leads(make_client):
    arrived = threading.Event()
    got = []

    def slack(overdue):
        got.append(overdue)
        arrived.set()

    client = make_client(RULES, lifecycle=LIFECYCLE)
    client.track("ada", "teammate_invited",
                 timestamp=datetime.now(timezone.utc) - timedelta(days=3))
    client.on_overdue(slack, name="slack")  # no evaluate(): the worker finds it
    assert arrived.wait(10), "the periodic pass did not tell on_overdue"
    assert [o.subject_id for o in got] == ["ada"]


def test_funnel_reports_time_to_acceptance_and_rejection(make_client):
    client = make_client(RULES, lifecycle=LIFECYCLE)
    history(client)
    times = client.funnel().handoff
    # accepted: bob 0.5 d after qualifying, fred 1 d; rejected: cara 2.5 d (ada and eve
    # open; dan's own rule moved it to sql, which is not an acceptance by sales)
    assert (times.accepted, times.rejected) == (2, 1)
    assert times.median_to_acceptance == timedelta(days=0.75)
    assert times.p90_to_acceptance == timedelta(days=1)     # nearest rank: 2nd of 2
    assert times.median_to_rejection == timedelta(days=2.5)
    assert times.p90_to_rejection == timedelta(days=2.5)
    assert client.funnel(since=day(0.9)).handoff.accepted == 2  # bob and fred only
    assert client.funnel(since=day(0.9)).handoff.rejected == 0
    assert client.funnel().to_dict()["handoff"]["median_to_rejection"] == 2.5 * 86400


def test_the_migrations_backfill_finds_what_live_traffic_opened(make_client):
    client = make_client(RULES, lifecycle=LIFECYCLE)
    history(client)
    before = client.overdue(as_of=day(9))

    def rebuild(tx):
        tx.conn.execute("DELETE FROM handoffs")
        tx.conn.execute(HANDOFF_BACKFILL)

    client.store.transact(rebuild)
    assert client.overdue(as_of=day(9)) == before and len(before) == 3


def test_cli_overdue(make_client, database, tmp_path):
    if "schema" in database:
        pytest.skip("the command line's --db takes a URL; covered on SQLite")
    client = make_client(RULES)
    history(client)
    client.close()
    runner = CliRunner()
    result = runner.invoke(main, ["overdue", "--db", database["database"],
                                  "--accept-within", "2d", "--as-of", day(3.5).isoformat(),
                                  "--json"])
    assert result.exit_code == 0, result.output
    assert [(o["subject_id"], o["rule"]) for o in json.loads(result.output)] == [
        ("ada", "team"), ("eve", "engaged"), ("eve", "team")]
    rules = tmp_path / "rules.toml"
    rules.write_text('[lifecycle]\naccept_within = "3d"\n')
    result = runner.invoke(main, ["overdue", "--db", database["database"], "--rules",
                                  str(rules), "--as-of", day(3.5).isoformat()])
    assert result.exit_code == 0, result.output
    # 3 days: qualified by day 0.5, ada's team (day 0) and eve's engaged (day 0.25)
    [_, ada, eve] = result.output.splitlines()
    assert ada.split()[-4:] == ["team", "pql", "user", "ada"]
    assert eve.split()[-4:] == ["engaged", "pql", "user", "eve"]
    result = runner.invoke(main, ["overdue", "--db", database["database"]])
    assert result.exit_code == 2 and "--accept-within" in result.output


def test_hand_offs_and_trait_history_follow_a_user_into_its_account(make_client):
    client = make_client(RULES, lifecycle=LIFECYCLE)
    client.identify("ada", {"lead_source": "ads"}, timestamp=day(0))
    client.track("ada", "teammate_invited", timestamp=day(0))
    client.group("ada", "acme", timestamp=day(1))  # ada's rows move to acme's tenant
    assert shown(client.overdue(as_of=day(3))) == [("ada", "team", "pql", day(0))]
    assert client.funnel(by="lead_source").segments["ads"][1].entered == 1  # lead
    client.set_stage("ada", stage="sql", timestamp=day(3))
    assert client.overdue(as_of=day(4)) == []
