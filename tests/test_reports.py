"""Funnel and rule outcomes on a small hand-built history whose answers are written here."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk import event

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
RULES = [pqlsdk.Rule("engaged", event("report_generated"), stage="mql"),
         pqlsdk.Rule("team", event("teammate_invited"), stage="pql")]


@pytest.fixture
def history(make_client):
    client = make_client(RULES)
    for user, day, source in (("u1", 0, "ads"), ("u2", 0, "ads"), ("u3", 1, "organic"),
                              ("u4", 1, "organic")):
        client.identify(user, {"lead_source": source}, timestamp=T0 + day * DAY)
    client.track("u1", "report_generated", timestamp=T0 + 1 * DAY)       # mql
    client.track("u1", "teammate_invited", timestamp=T0 + 3 * DAY)       # pql
    client.set_stage("u1", stage="sql", reason="demo booked", timestamp=T0 + 5 * DAY)
    client.set_stage("u1", stage="customer", reason="signed", timestamp=T0 + 10 * DAY)
    client.track("u2", "report_generated", timestamp=T0 + 2 * DAY)       # mql
    client.set_stage("u2", stage="unqualified", reason="no budget", timestamp=T0 + 4 * DAY)
    client.track("u3", "teammate_invited", timestamp=T0 + 2 * DAY)       # pql, skips mql
    client.set_stage("u3", stage="disqualified", reason="competitor", timestamp=T0 + 3 * DAY)
    return client


def rows(stages):
    return [(s.stage, s.entered, s.moved_on, s.conversion, s.median_time) for s in stages]


def test_funnel_counts_conversions_and_median_time_in_stage(history):
    assert rows(history.funnel().stages) == [
        # stage        entered moved_on conversion median time in stage
        ("subscriber", 0, 0, None, None),
        ("lead",       4, 3, 0.75, 1 * DAY),   # u1 1d, u2 2d, u3 1d
        ("mql",        2, 1, 0.50, 2 * DAY),   # u1 on to pql; u2 rejected
        ("pql",        2, 1, 0.50, 2 * DAY),   # u1 on to sql; u3 disqualified
        ("sql",        1, 1, 1.00, 5 * DAY),
        ("opportunity", 0, 0, None, None),
        ("customer",   1, 0, None, None),   # the last stage: no rate (issue 20)
    ]


def test_funnel_split_by_a_trait(history):
    result = history.funnel(by="lead_source")
    assert sorted(result.segments) == ["ads", "organic"]
    assert rows(result.segments["ads"])[1:3] == [("lead", 2, 2, 1.0, 1.5 * DAY),
                                                 ("mql", 2, 1, 0.5, 2 * DAY)]
    assert rows(result.segments["organic"])[1:4] == [("lead", 2, 1, 0.5, 1 * DAY),
                                                     ("mql", 0, 0, None, None),
                                                     ("pql", 1, 0, 0.0, None)]
    assert rows(result.stages) == rows(history.funnel().stages)


def test_funnel_period_bounds(history):
    late = history.funnel(since=T0 + 1 * DAY)
    assert late.stage("lead").entered == 2  # u3, u4
    assert late.stage("mql").entered == 2
    early = history.funnel(until=T0 + 4 * DAY)
    assert early.stage("sql").entered == 0
    assert early.stage("pql").moved_on == 0


def test_rule_report_follows_each_rules_leads(history):
    outcomes = {o.rule: o for o in history.rule_report()}
    engaged, team = outcomes["engaged"], outcomes["team"]
    assert (engaged.qualified, engaged.reached, engaged.rejected, engaged.top_reasons) == (
        2, {"sql": 1, "opportunity": 0, "customer": 1},
        {"unqualified": 1, "disqualified": 0}, (("no budget", 1),))
    assert (team.qualified, team.reached, team.rejected, team.top_reasons) == (
        2, {"sql": 1, "opportunity": 0, "customer": 1},
        {"unqualified": 0, "disqualified": 1}, (("competitor", 1),))
    assert [o.rule for o in history.rule_report(since=T0 + 2 * DAY)] == ["engaged", "team"]
    assert history.rule_report(since=T0 + 2 * DAY)[0].qualified == 1


def test_funnel_of_accounts_and_bad_arguments(make_client):
    client = make_client(RULES)
    client.group("u1", "acme", timestamp=T0)
    assert client.funnel(subject="account").stage("lead").entered == 1
    with pytest.raises(pqlsdk.ValidationError, match="subject must be 'user' or 'account'"):
        client.funnel(subject="team")
