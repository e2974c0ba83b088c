"""Each condition kind, evaluated against real events in a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

import pqlsdk
from pqlsdk import all_of, any_of, event, not_, trait

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)


def rule(condition, **kw):
    return [pqlsdk.Rule("r", condition, **kw)]


def test_threshold_qualifies_on_the_event_that_reaches_it(make_client):
    client = make_client(rule(event("report_generated", at_least=3)))
    assert client.track("u1", "report_generated", timestamp=T0) == []
    assert client.track("u1", "report_generated", timestamp=T0 + timedelta(hours=1)) == []
    [q] = client.track("u1", "report_generated", timestamp=T0 + timedelta(hours=2))
    assert (q.rule, q.subject_type, q.subject_id, q.user_id) == ("r", "user", "u1", "u1")
    assert q.qualified_at == T0 + timedelta(hours=2)
    assert q.evidence.met and q.evidence.value == 3 and q.evidence.bound == "at least 3"


def test_other_events_and_other_users_do_not_count(make_client):
    client = make_client(rule(event("report_generated", at_least=2)))
    client.track("u1", "report_generated", timestamp=T0)
    client.track("u2", "report_generated", timestamp=T0)
    assert client.track("u1", "dashboard_viewed", timestamp=T0) == []
    assert client.qualifications() == []


def test_window_includes_an_event_exactly_on_its_start(make_client):
    client = make_client(rule(event("report_generated", at_least=2, within="14d")))
    client.track("u1", "report_generated", timestamp=T0)
    assert client.track("u1", "report_generated", timestamp=T0 + timedelta(days=14)) != []


def test_window_excludes_an_event_just_before_its_start(make_client):
    client = make_client(rule(event("report_generated", at_least=2, within="14d")))
    client.track("u1", "report_generated", timestamp=T0)
    late = T0 + timedelta(days=14, microseconds=1)
    assert client.track("u1", "report_generated", timestamp=late) == []


@pytest.mark.parametrize(("unit", "span"), [("90s", timedelta(seconds=90)),
                                             ("30m", timedelta(minutes=30)),
                                             ("6h", timedelta(hours=6)),
                                             ("2w", timedelta(weeks=2))])
def test_window_units(make_client, unit, span):
    client = make_client(rule(event("e", at_least=2, within=unit)))
    client.track("u1", "e", timestamp=T0)
    assert client.track("u1", "e", timestamp=T0 + span + timedelta(seconds=1)) == []
    assert client.track("u1", "e", timestamp=T0 + span + timedelta(seconds=1)) != []


def test_where_value_list_and_comparison(make_client):
    client = make_client([
        pqlsdk.Rule("crm", event("integration_connected",
                                 where={"provider": ["salesforce", "hubspot"]})),
        pqlsdk.Rule("big_export", event("export", where={"rows": {"gte": 1000}, "fmt": "csv"})),
    ])
    assert client.track("u1", "integration_connected", {"provider": "slack"}) == []
    assert [q.rule for q in client.track("u1", "integration_connected",
                                         {"provider": "hubspot"})] == ["crm"]
    assert client.track("u1", "export", {"rows": 999, "fmt": "csv"}) == []
    assert client.track("u1", "export", {"rows": 5000, "fmt": "xlsx"}) == []
    assert client.track("u1", "export", {"fmt": "csv"}) == []
    assert [q.rule for q in client.track("u1", "export", {"rows": 1000, "fmt": "csv"})] == [
        "big_export"]


def test_distinct_counts_distinct_values_only(make_client):
    client = make_client(rule(event("teammate_invited", distinct="invitee_email", at_least=3)))
    for email in ["a@x.io", "a@x.io", "b@x.io", "b@x.io"]:
        assert client.track("u1", "teammate_invited", {"invitee_email": email}) == []
    assert client.track("u1", "teammate_invited", {}) == []
    [q] = client.track("u1", "teammate_invited", {"invitee_email": "c@x.io"})
    assert q.evidence.value == 3


def test_sum_adds_a_numeric_property(make_client):
    client = make_client(rule(event("emails_sent", sum="count", at_least=100, within="7d")))
    client.track("u1", "emails_sent", {"count": 60}, timestamp=T0)
    client.track("u1", "emails_sent", {"count": "lots"}, timestamp=T0)
    assert client.track("u1", "emails_sent", {"count": 39.5}, timestamp=T0) == []
    [q] = client.track("u1", "emails_sent", {"count": 1}, timestamp=T0 + timedelta(days=1))
    assert q.evidence.value == 100.5
    # a batch outside the window does not count
    client2 = make_client(rule(event("emails_sent", sum="count", at_least=100, within="7d")),
                          database=":memory:")
    client2.track("u1", "emails_sent", {"count": 99}, timestamp=T0)
    assert client2.track("u1", "emails_sent", {"count": 1},
                         timestamp=T0 + timedelta(days=8)) == []


def test_at_most_with_no_at_least_means_zero_to_n(make_client):
    client = make_client(rule(all_of(event("signup"), event("report_generated", at_most=1,
                                                             within="7d"))))
    client.track("u1", "report_generated", timestamp=T0)
    client.track("u1", "report_generated", timestamp=T0)
    assert client.track("u1", "signup", timestamp=T0 + timedelta(days=1)) == []
    assert client.track("u2", "signup", timestamp=T0) != []


def test_trait_condition_uses_user_traits(make_client):
    client = make_client(rule(all_of(event("report_generated"),
                                     trait("company_size", gte=50))))
    client.identify("u1", {"company_size": 10})
    assert client.track("u1", "report_generated") == []
    client.identify("u2", {"company_size": 80})
    assert client.track("u2", "report_generated") != []


def test_trait_change_completes_a_rule_at_once(make_client):
    client = make_client(rule(all_of(event("report_generated", at_least=2),
                                     trait("plan", in_=["trial"]))))
    client.track("u1", "report_generated", timestamp=T0)
    client.track("u1", "report_generated", timestamp=T0)
    [q] = client.identify("u1", {"plan": "trial"}, timestamp=T0 + timedelta(hours=1))
    assert q.qualified_at == T0 + timedelta(hours=1)
    assert client.identify("u1", {"plan": "trial"}) == []


def test_identify_of_unread_traits_evaluates_nothing(make_client):
    client = make_client(rule(all_of(event("a"), trait("plan", equals="x"))))
    assert client.identify("u1", {"name": "Ada"}) == []


def test_null_trait_removes_it(make_client):
    client = make_client(rule(trait("phone", exists=False)))
    client.identify("u1", {"phone": "123"})
    assert client.qualifications() == []
    assert [q.subject_id for q in client.identify("u1", {"phone": None})] == ["u1"]


def test_any_of_and_not(make_client):
    client = make_client(rule(any_of(
        event("integration_connected", where={"provider": "slack"}),
        all_of(event("report_generated", at_least=2), not_(trait("plan", equals="enterprise"))),
    )))
    client.identify("u1", {"plan": "enterprise"})
    client.track("u1", "report_generated")
    assert client.track("u1", "report_generated") == []
    assert client.track("u1", "integration_connected", {"provider": "slack"}) != []
    client.track("u2", "report_generated")
    assert client.track("u2", "report_generated") != []


def test_account_rule_counts_events_of_all_its_users(make_client):
    client = make_client([pqlsdk.Rule("team_usage",
                                      all_of(event("report_generated", at_least=3),
                                             trait("seats", gte=5)),
                                      subject="account", stage="sql")])
    client.group("u1", "acme", {"seats": 10})
    client.identify("u2", account_id="acme")
    client.track("u1", "report_generated")
    client.track("u3", "report_generated")  # not in acme
    client.track("u2", "report_generated")
    [q] = client.track("u2", "report_generated")
    assert (q.subject_type, q.subject_id, q.user_id, q.account_id, q.stage) == (
        "account", "acme", "u2", "acme", "sql")


def test_account_trait_change_completes_account_rule(make_client):
    client = make_client([pqlsdk.Rule("r", all_of(event("e"), trait("plan", equals="trial")),
                                      subject="account")])
    client.track("u1", "e", account_id="acme")
    [q] = client.group("u1", "acme", {"plan": "trial"})
    assert (q.subject_type, q.subject_id, q.user_id) == ("account", "acme", "u1")


def test_events_count_for_the_account_the_user_had_when_they_happened(make_client):
    client = make_client([pqlsdk.Rule("r", event("e", at_least=2), subject="account")])
    client.track("u1", "e")  # before joining: not attributed to acme
    client.group("u1", "acme")
    assert client.track("u1", "e") == []
    assert client.track("u1", "e") != []


@freeze_time("2026-11-10 12:00:00")
def test_default_timestamp_is_now_under_freezegun(make_client):
    client = make_client(rule(event("e")))
    [q] = client.track("u1", "e")
    assert q.qualified_at == datetime(2026, 11, 10, 12, 0, tzinfo=timezone.utc)


def test_naive_timestamp_is_utc_and_iso_strings_are_accepted(make_client):
    client = make_client(rule(event("e", at_least=2, within="1h")))
    client.track("u1", "e", timestamp="2026-11-01T09:00:00Z")
    [q] = client.track("u1", "e", timestamp=datetime(2026, 11, 1, 10, 0))
    assert q.qualified_at == datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)


def test_timestamp_in_another_zone_is_converted(make_client):
    client = make_client(rule(event("e")))
    plus2 = timezone(timedelta(hours=2))
    [q] = client.track("u1", "e", timestamp=datetime(2026, 11, 1, 11, 0, tzinfo=plus2))
    assert q.qualified_at == T0


def test_a_trait_value_a_caller_edits_changes_nothing_the_engine_decides(make_client):
    """status() and evidence hand out trait values; editing them must not change what
    another subject with the same traits is judged by (parsed traits are shared)."""
    client = make_client([pqlsdk.Rule("admin", trait("roles", contains="admin"))])
    client.identify("u1", {"roles": ["viewer"]}, timestamp=T0)
    value = client.status("u1").progress["admin"].value
    assert value == ["viewer"]
    value.append("admin")  # the application renders it, and edits it on the way
    assert client.identify("u2", {"roles": ["viewer"]}, timestamp=T0) == []
    assert client.status("u1").progress["admin"].value == ["viewer"]
