"""Issue 20 item 1: a rejected (unqualified) lead qualifies again only on something new
since the rejection: an event the rule reads, or a change of a trait (or fit score) the
rule reads (SPEC §11)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pqlsdk
from pqlsdk import event, trait

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_trait_only_rule_does_not_undo_a_rejection(make_client):
    client = make_client([pqlsdk.Rule("trial_plan", trait("plan", equals="trial"))])
    [first] = client.identify("ada", {"plan": "trial"}, timestamp=at(0))
    client.set_stage("ada", stage="unqualified", reason="student", timestamp=at(10))
    # before the fix, the next evaluate() re-qualified ada a minute after the rejection
    assert client.evaluate(as_of=at(11)) == []
    # an event the rule does not read is nothing new for it
    assert client.track("ada", "report_generated", timestamp=at(12)) == []
    assert client.evaluate(as_of=at(13)) == []
    # the same value again is no change
    assert client.identify("ada", {"plan": "trial"}, timestamp=at(14)) == []
    assert client.status("ada").stage == "unqualified"
    # a real change of the trait the rule reads opens the new round
    assert client.identify("ada", {"plan": "pro"}, timestamp=at(15)) == []
    [second] = client.identify("ada", {"plan": "trial"}, timestamp=at(16))
    assert second.id != first.id and second.qualified_at == at(16)
    assert client.status("ada").stage == "pql"


def test_a_trait_change_before_the_rejection_is_not_new(make_client):
    client = make_client([pqlsdk.Rule("trial_plan", trait("plan", equals="trial"))])
    client.identify("ada", {"plan": "trial", "seats": 2}, timestamp=at(0))
    client.set_stage("ada", stage="unqualified", timestamp=at(10))
    # a trait the rule does not read changed after the rejection: still nothing new
    assert client.identify("ada", {"seats": 3}, timestamp=at(11)) == []
    assert client.evaluate(as_of=at(12)) == []


SCORING = {
    "fit": [{"trait": "company_size", "gte": 50, "points": 60}],
    "behavior": [{"event": "report_generated", "points": 10}],
}


def test_a_score_rule_met_by_fit_alone_waits_for_new_behaviour(make_client):
    rule = pqlsdk.Rule("mql_by_score", pqlsdk.score("total", gte=60), stage="mql")
    client = make_client([rule], scoring=SCORING)
    [first] = client.identify("ada", {"company_size": 100}, timestamp=at(0))
    client.set_stage("ada", stage="unqualified", reason="bad timing", timestamp=at(10))
    assert client.evaluate(as_of=at(11)) == []  # fit 60 alone is not new
    assert client.track("ada", "signed_in", timestamp=at(12)) == []  # read by no score line
    # a behaviour line's event is: total 60 fit + 10 behaviour (this round) = 70
    [second] = client.track("ada", "report_generated", timestamp=at(13))
    assert second.evidence.value == 70
    assert second.id != first.id and client.status("ada").stage == "mql"


def test_a_change_of_a_fit_trait_is_new(make_client):
    rule = pqlsdk.Rule("mql_by_score", pqlsdk.score("fit", gte=60), stage="mql")
    client = make_client([rule], scoring=SCORING)
    client.identify("ada", {"company_size": 100}, timestamp=at(0))
    client.set_stage("ada", stage="unqualified", timestamp=at(10))
    assert client.evaluate(as_of=at(11)) == []
    [again] = client.identify("ada", {"company_size": 120}, timestamp=at(12))
    assert again.qualified_at == at(12)


def test_event_rules_still_count_only_events_after_the_rejection(make_client):
    client = make_client([pqlsdk.Rule("engaged", event("report_generated", at_least=2),
                                      stage="mql")])
    client.track("ada", "report_generated", timestamp=at(0))
    client.track("ada", "report_generated", timestamp=at(1))
    client.set_stage("ada", stage="unqualified", timestamp=at(10))
    assert client.track("ada", "report_generated", timestamp=at(11)) == []
    assert len(client.track("ada", "report_generated", timestamp=at(12))) == 1
