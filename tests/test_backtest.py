"""Backtest on a history whose truth the test knows; leakage; read-only; against current."""

from __future__ import annotations

import math
import random
import sqlite3
from datetime import timedelta

import pytest
from freezegun import freeze_time

import pqlsdk
from pqlsdk.backtest import wilson

from .truth import BURST, END, T0, first_burst, generate, record

RULE = pqlsdk.Rule("burst", pqlsdk.event("report_generated", at_least=BURST, within="7d"))
HORIZON = timedelta(days=30)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("truth") / "pql.db")
    history = generate()
    client = pqlsdk.Client(path)
    record(client, history)
    client.close()
    return path, history


def dump(path: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def expected(history: dict, at_least: int, window: timedelta) -> dict:
    """The figures, computed here from the generated lists alone."""
    subjects = len(history)
    converters = [u for u, h in history.items() if h["converted"] is not None]
    qualified = converted = late = 0
    leads = []
    for h in history.values():
        q = first_burst(h["reports"], at_least, window)
        c = h["converted"]
        if q is None:
            continue
        if c is not None and c <= q:
            late += 1
            leads.append(c - q)
        elif c is not None and c - q <= HORIZON:
            qualified += 1
            converted += 1
            leads.append(c - q)
        else:
            qualified += 1
    return {"subjects": subjects, "converters": len(converters), "qualified": qualified,
            "converted": converted, "late": late, "leads": sorted(leads)}


def test_counts_precision_recall_and_lift_equal_the_known_truth(known):
    path, history = known
    truth = expected(history, BURST, timedelta(days=7))
    assert truth["converted"] > 20 and truth["qualified"] > truth["converted"]
    with pqlsdk.Client(path) as client:
        result = client.backtest([RULE], horizon="30d", until=END)
    assert (result.subjects, result.converters, result.pending) == (
        truth["subjects"], truth["converters"], 0)
    rule = result.rule("burst")
    assert (rule.qualified, rule.converted, rule.late) == (
        truth["qualified"], truth["converted"], truth["late"])
    precision = truth["converted"] / truth["qualified"]
    base_rate = truth["converters"] / truth["subjects"]
    assert rule.precision == precision
    assert rule.recall == truth["converted"] / truth["converters"]
    assert rule.base_rate == base_rate == result.base_rate
    assert rule.lift == precision / base_rate
    assert rule.missed == truth["converters"] - truth["converted"]
    leads = truth["leads"]
    middle = len(leads) // 2
    median = leads[middle] if len(leads) % 2 else (leads[middle - 1] + leads[middle]) / 2
    assert rule.median_lead_time == median
    assert rule.lift > 1.5 and not rule.leaky  # the planted driver is a good rule
    # the Wilson interval, by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    n, p, z = rule.qualified, precision, 1.959963984540054
    root = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = (p + z * z / (2 * n) - root) / (1 + z * z / n)
    high = (p + z * z / (2 * n) + root) / (1 + z * z / n)
    assert rule.precision_low == pytest.approx(low, abs=1e-12)
    assert rule.precision_high == pytest.approx(high, abs=1e-12)
    assert rule.precision_low < precision < rule.precision_high


def test_wilson_matches_a_published_interval():
    low, high = wilson(8, 10)  # 8 of 10: 0.4902 to 0.9433 (Newcombe 1998, method 3)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def test_subjects_inside_the_horizon_at_until_are_pending_not_failures(known):
    path, history = known
    until = T0 + timedelta(days=70)
    with pqlsdk.Client(path) as client:
        result = client.backtest([RULE], horizon="30d", until=until)
    rule = result.rule("burst")
    pending = 0
    for h in history.values():
        seen = [t for t in h["reports"] if t <= until]
        q = first_burst(seen)
        c = h["converted"] if h["converted"] is not None and h["converted"] <= until else None
        if q is not None and not (c is not None and c - q <= HORIZON) and q + HORIZON > until:
            pending += 1
    assert pending > 0 and rule.pending == pending == result.pending


def test_a_rule_on_the_outcome_itself_is_late_and_flagged(make_client):
    client = make_client()
    for n in range(30):
        user = f"u{n}"
        for k in range(12 if n < 10 else 2):  # converters use it most after converting
            client.track(user, "report_generated", timestamp=T0 + timedelta(days=2 + k))
        client.track(user, "report_generated", timestamp=T0)
        if n < 10:
            client.track(user, "subscription_started", timestamp=T0 + timedelta(days=1))
    rules = [pqlsdk.Rule("subscribed", pqlsdk.event("subscription_started")),
             pqlsdk.Rule("heavy", pqlsdk.event("report_generated", at_least=5))]
    result = client.backtest(rules, outcome={"event": "subscription_started"},
                             until=T0 + timedelta(days=90))
    subscribed, heavy = result.rule("subscribed"), result.rule("heavy")
    assert (subscribed.qualified, subscribed.converted, subscribed.late) == (0, 0, 10)
    assert subscribed.precision is None and subscribed.lift is None
    assert subscribed.median_lead_time is not None
    assert subscribed.median_lead_time <= timedelta(0) and subscribed.leaky
    # usage after the conversion never counts as predicting it
    assert (heavy.converted, heavy.late, heavy.recall) == (0, 10, 0.0)
    assert heavy.leaky and heavy.missed == 10


def test_backtest_writes_nothing(known):
    path, _ = known
    before = dump(path)
    with pqlsdk.Client(path, rules={"rules": [
            {"name": "burst", "all": [{"event": "report_generated", "at_least": 3}]}]}
                       ) as client:
        client.backtest([RULE], against="current", until=END)
        client.backtest(outcome={"event": "page_viewed"}, horizon="7d")
        client.suggest(min_support=5)
    assert dump(path) == before


def test_against_current_lists_who_is_added_and_dropped(known):
    path, history = known
    current = {"rules": [{"name": "burst", "all": [
        {"event": "report_generated", "at_least": BURST, "within": "7d"}]}]}
    with pqlsdk.Client(path, rules=current) as client:
        looser = [pqlsdk.Rule("burst", pqlsdk.event("report_generated", at_least=3,
                                                    within="7d"))]
        result = client.backtest(looser, against="current", until=END)
    assert result.dropped == ()
    assert result.rules[0].version != result.baseline[0].version
    expected_added = []
    for user, h in sorted(history.items()):
        new = first_burst(h["reports"], 3)
        if new is not None and first_burst(h["reports"]) is None:
            c = h["converted"]
            expected_added.append((user, c is not None and new < c <= new + HORIZON))
    assert list(result.added) == expected_added and expected_added


def test_shadow_rules_are_backtested_beside_live_ones(make_client):
    client = make_client({"rules": [
        {"name": "live", "all": [{"event": "report_generated", "at_least": 1}]},
        {"name": "candidate", "shadow": True,
         "all": [{"event": "report_generated", "at_least": 2}]}]})
    with freeze_time(T0 + timedelta(days=100)):
        client.track("ada", "report_generated", timestamp=T0)
        client.track("ada", "report_generated", timestamp=T0 + timedelta(days=1))
        client.set_stage("ada", stage="customer", timestamp=T0 + timedelta(days=3))
        client.track("bob", "report_generated", timestamp=T0)
        result = client.backtest()
    assert [(r.rule, r.shadow, r.qualified, r.converted) for r in result.rules] == [
        ("live", False, 2, 1), ("candidate", True, 1, 1)]
    assert result.rule("candidate").lift == 2.0


def test_bad_arguments_are_refused(make_client):
    client = make_client()
    with pytest.raises(pqlsdk.ValidationError):
        client.backtest(outcome="paying")
    with pytest.raises(pqlsdk.ValidationError):
        client.backtest(horizon="soon")
    with pytest.raises(pqlsdk.ValidationError):
        client.backtest(against="yesterday")


def test_replay_finds_the_moments_live_traffic_qualified(make_client):
    """Replay = live: on a history recorded through track() (several rule forms, an account
    rule, subjects moving between accounts), the replay's first qualification of each
    subject for each rule is the live one, to the microsecond."""
    from pqlsdk.backtest import replay
    from pqlsdk.timestamps import from_micros

    from .history import apply_live, messages

    rules = {"rules": [
        {"name": "reports_weekly", "stage": "mql",
         "all": [{"event": "report_generated", "at_least": 4, "within": "7d"}]},
        {"name": "invites", "all": [
            {"event": "teammate_invited", "distinct": "email", "at_least": 2},
            {"event": "integration_connected", "where": {"provider": ["slack", "salesforce"]}},
        ]},
        {"name": "quiet", "any": [
            {"event": "page_viewed", "at_least": 3, "within": "1d"},
            {"not": {"event": "report_generated", "at_least": 1}},
        ]},
        {"name": "busy_account", "subject": "account", "stage": "sql",
         "all": [{"event": "report_generated", "at_least": 12, "within": "14d"}]},
    ]}
    client = make_client(rules)
    apply_live(client, messages(3000, seed=4))
    live = {(q.rule, q.subject_type, q.subject_id): q.qualified_at
            for q in client.qualifications()}
    assert len(live) > 40
    replayed = {}
    with client.store.read() as tx:
        for subject_type in ("user", "account"):
            chosen = [r for r in client.rules.rules if r.subject == subject_type]
            for subject_id, found in replay(tx, chosen, None, subject_type, 2**62):
                for rule, q in zip(chosen, found, strict=True):
                    if q is not None:
                        replayed[(rule.name, subject_type, subject_id)] = from_micros(q)
    assert replayed == live


def test_account_rules_are_backtested_against_account_outcomes(make_client):
    client = make_client()
    for n in range(8):
        account = f"acct-{n}"
        for k in range(n):  # acct-n has n events by two of its users
            client.track(f"u{n}-{k % 2}", "report_generated", account_id=account,
                         timestamp=T0 + timedelta(hours=k))
        if n >= 5:
            client.set_stage(account_id=account, stage="opportunity",
                             timestamp=T0 + timedelta(days=2))
    rule = pqlsdk.Rule("busy", pqlsdk.event("report_generated", at_least=4), subject="account")
    result = client.backtest([rule], outcome="sql", subject="account",
                             until=T0 + timedelta(days=60))
    busy = result.rule("busy")
    # accounts 1..7 have events; 5, 6, 7 reached opportunity (past sql); 4..7 qualified
    assert (result.subjects, result.converters) == (7, 3)
    assert (busy.qualified, busy.converted, busy.recall) == (4, 3, 1.0)
    assert busy.lift == (3 / 4) / (3 / 7)
    assert client.backtest([rule], subject="user").rules == ()


def test_replay_of_score_rules_equals_live(make_client):
    from pqlsdk.backtest import replay
    from pqlsdk.timestamps import from_micros

    rules = {"rules": [{"name": "warm", "stage": "mql",
                        "all": [{"score": "behavior", "gte": 12}]}],
             "scoring": {"half_life": "3d", "behavior": [
                 {"event": "report_generated", "points": 5, "max": 40},
                 {"event": "integration_connected", "points": 4,
                  "where": {"provider": "slack"}}]}}
    client = make_client(rules)
    rng = random.Random(2)
    for n in range(40):
        at = T0
        for _ in range(rng.randrange(1, 9)):
            at += timedelta(hours=rng.randrange(1, 60))
            if rng.random() < 0.3:
                client.track(f"u{n}", "integration_connected",
                             {"provider": rng.choice(["slack", "zapier"])}, timestamp=at)
            else:
                client.track(f"u{n}", "report_generated", timestamp=at)
    live = {q.subject_id: q.qualified_at for q in client.qualifications()}
    assert 5 < len(live) < 40
    with client.store.read() as tx:
        replayed = {s: from_micros(found[0]) for s, found in
                    replay(tx, client.rules.rules, client.rules.scoring, "user", 2**62)
                    if found[0] is not None}
    assert replayed == live


def test_the_population_counts_users_that_changed_accounts_and_users_without_one(
        make_client):
    """Who a backtest looks at: every user with an event in the frame, read in the user's
    own tenant (a user that moved took its events along), and every account with an event
    recorded with it (the one a user left keeps what was done there)."""
    client = make_client()
    client.track("mover", "report_generated", account_id="acct-a", timestamp=T0)
    client.group("mover", "acct-b", timestamp=T0 + timedelta(hours=1))
    client.track("loner", "report_generated", timestamp=T0 + timedelta(hours=2))
    client.track("stayer", "report_generated", account_id="acct-b",
                 timestamp=T0 + timedelta(hours=3))
    client.identify("silent", {"plan": "free"}, timestamp=T0)  # no event: not counted
    rule = pqlsdk.Rule("any", pqlsdk.event("report_generated", at_least=1))
    until = T0 + timedelta(days=60)
    assert client.backtest([rule], until=until).subjects == 3
    accounts = pqlsdk.Rule("any", pqlsdk.event("report_generated", at_least=1),
                           subject="account")
    assert client.backtest([accounts], subject="account", until=until).subjects == 2
    later = client.backtest([rule], since=T0 + timedelta(minutes=90), until=until)
    assert later.subjects == 2  # the mover's one event is before the frame
