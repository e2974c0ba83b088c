"""A first event is checked without reading the store (its subject has only that event),
and gives what the same event gives a known subject with no events."""

from __future__ import annotations

from datetime import datetime, timezone

import pqlsdk
from pqlsdk import all_of, event, not_

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = {
    "rules": [
        {"name": "connected", "stage": "mql",
         "all": [{"event": "integration_connected", "where": {"provider": ["slack"]}}]},
        {"name": "invited_one", "stage": "mql",
         "all": [{"event": "integration_connected", "distinct": "provider", "at_least": 1}]},
        {"name": "big_import", "stage": "pql",
         "all": [{"event": "integration_connected", "sum": "rows", "at_least": 500}]},
        {"name": "only_once", "stage": "mql",
         "all": [{"event": "integration_connected", "at_most": 1, "within": "1d"},
                 {"event": "integration_connected"}]},
        {"name": "not_a_reporter", "stage": "mql",
         "all": [{"event": "integration_connected"},
                 {"not": {"event": "report_generated"}}]},
        {"name": "scored", "stage": "sql", "all": [{"score": "total", "gte": 5}]},
        {"name": "account_connected", "subject": "account", "stage": "sql",
         "all": [{"event": "integration_connected", "at_least": 1, "within": "7d"}]},
        {"name": "too_many", "stage": "mql",
         "all": [{"event": "integration_connected", "at_least": 2}]},
    ],
    "scoring": {"half_life": "14d",
                "behavior": [{"event": "integration_connected", "points": 5, "max": 10}]},
}


def outcome(found):
    # evidence compared as numbers (a whole sum is 5 from PostgreSQL, 5.0 from SQLite)
    return sorted(((q.rule, q.subject_type, q.stage), q.evidence.to_dict()) for q in found)


def test_a_first_event_qualifies_as_the_same_event_of_a_known_subject(make_client):
    client = make_client(RULES)
    properties = {"provider": "slack", "rows": 800}
    first = client.track("newcomer", "integration_connected", properties,
                         account_id="new-acct", timestamp=T0)
    # the same event for a user and an account already known, with nothing recorded yet
    client.identify("known", {}, timestamp=T0)
    client.group("known", "known-acct", {}, timestamp=T0)
    known = client.track("known", "integration_connected", properties,
                         account_id="known-acct", timestamp=T0)
    assert outcome(first) == outcome(known)
    assert {q.rule for q in first} == {"connected", "invited_one", "big_import", "only_once",
                                       "not_a_reporter", "scored", "account_connected"}


def test_a_first_event_no_rule_can_use_qualifies_nothing(make_client):
    client = make_client(RULES)
    assert client.track("quiet", "integration_connected", {"provider": "zapier"},
                        timestamp=T0) == [q for q in client.qualifications()
                                          if q.subject_id == "quiet"]
    assert {q.rule for q in client.qualifications()} == {
        "invited_one", "only_once", "not_a_reporter", "scored"}


def test_a_first_event_of_another_kind_counts_nothing_for_a_rule(make_client):
    rules = [pqlsdk.Rule("signed_up_not_churned",
                         all_of(event("signup"), not_(event("churned"))), stage="mql"),
             pqlsdk.Rule("churned", event("churned"), stage="mql")]
    client = make_client(rules)
    [q] = client.track("ada", "signup", timestamp=T0)
    assert q.rule == "signed_up_not_churned"
    assert client.track("bob", "churned", timestamp=T0)[0].rule == "churned"
