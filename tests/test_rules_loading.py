"""Rules from TOML, dicts and Python objects become one validated model."""

from __future__ import annotations

from datetime import timedelta

import pytest

import pqlsdk
from pqlsdk.rules import AllOf, AnyOf, Check, Not

TEAM_TOML = """
[[rules]]
name = "team_activation"
description = "Invited a team, connected a CRM, and uses reports"
subject = "user"
stage = "pql"

  [[rules.all]]
  event = "report_generated"
  at_least = 5
  within = "14d"

  [[rules.all]]
  event = "teammate_invited"
  distinct = "invitee_email"
  at_least = 3

  [[rules.all]]
  event = "integration_connected"
  where = { provider = ["salesforce", "slack"] }

  [[rules.all]]
  trait = "plan"
  in = ["free", "trial"]
"""


def test_toml_dict_and_python_forms_build_the_same_rule(tmp_path):
    path = tmp_path / "pql_rules.toml"
    path.write_text(TEAM_TOML)
    from_file = pqlsdk.load_rules(str(path)).rules[0]
    python = pqlsdk.Rule(
        "team_activation",
        pqlsdk.all_of(
            pqlsdk.event("report_generated", at_least=5, within="14d"),
            pqlsdk.event("teammate_invited", distinct="invitee_email", at_least=3),
            pqlsdk.event("integration_connected", where={"provider": ["salesforce", "slack"]}),
            pqlsdk.trait("plan", in_=["free", "trial"]),
        ),
        description="Invited a team, connected a CRM, and uses reports",
    )
    assert from_file == python
    assert from_file.events == {"report_generated", "teammate_invited", "integration_connected"}
    assert from_file.traits == {"plan"}
    assert from_file.condition.conditions[0].within == timedelta(days=14)


def test_any_and_nested_groups_are_parsed():
    rule = pqlsdk.load_rules({"rules": [{
        "name": "r",
        "any": [
            {"all": [{"event": "a"}, {"not": {"trait": "plan", "equals": "enterprise"}}]},
            {"event": "b", "at_most": 2, "within": "1w"},
        ],
    }]}).rules[0]
    assert isinstance(rule.condition, AnyOf)
    first, second = rule.condition.conditions
    assert isinstance(first, AllOf) and isinstance(first.conditions[1], Not)
    assert second.at_least == 0 and second.at_most == 2 and second.within == timedelta(weeks=1)


def test_all_and_any_together_mean_all_and_at_least_one():
    rule = pqlsdk.load_rules({"rules": [{
        "name": "r", "all": [{"event": "a"}], "any": [{"event": "b"}, {"event": "c"}],
    }]}).rules[0]
    assert isinstance(rule.condition, AllOf)
    assert isinstance(rule.condition.conditions[1], AnyOf)


@pytest.mark.parametrize(
    ("rule", "key", "says"),
    [
        ({"name": "r", "all": [{"event": "a", "at_lest": 5}]}, "all[0].at_lest",
         "allowed: at_least"),
        ({"name": "r", "all": [{"event": "a", "at_least": -1}]}, "all[0].at_least", ">= 0"),
        ({"name": "r", "all": [{"event": "a", "at_least": 2.5}]}, "all[0].at_least", "whole"),
        ({"name": "r", "all": [{"event": "a", "at_least": 5, "at_most": 2}]}, "all[0].at_most",
         "below at_least"),
        ({"name": "r", "all": [{"event": "a", "within": "5y"}]}, "all[0].within", "s, m, h, d, w"),
        ({"name": "r", "all": [{"event": "a", "within": "0d"}]}, "all[0].within", "14d"),
        ({"name": "r", "all": [{"event": ""}]}, "all[0].event", "non-empty"),
        ({"name": "r", "all": [{"event": "a", "distinct": "x", "sum": "y"}]}, "all[0].sum",
         "not both"),
        ({"name": "r", "all": [{"event": "a", "where": {"p": {"near": 1}}}]},
         "all[0].where.p.near", "allowed: contains"),
        ({"name": "r", "all": [{"event": "a", "where": "p=1"}]}, "all[0].where", "table"),
        ({"name": "r", "all": [{"trait": "plan"}]}, "all[0]", "at least one operator"),
        ({"name": "r", "all": [{"trait": "plan", "matches": "x"}]}, "all[0].matches",
         "allowed: contains"),
        ({"name": "r", "all": [{"trait": "seats", "gte": [1]}]}, "all[0].gte", "number or"),
        ({"name": "r", "all": [{"trait": "plan", "in": []}]}, "all[0].in", "non-empty list"),
        ({"name": "r", "all": [{"trait": "plan", "exists": "yes"}]}, "all[0].exists",
         "true or false"),
        ({"name": "r", "all": [{"trait": "email", "ends_with": 3}]}, "all[0].ends_with", "string"),
        ({"name": "r", "all": [{"metric": "total", "gte": 3}]}, "all[0]", "needs one of"),
        ({"name": "r", "all": [{"score": "total", "gte": 3}]}, "score",
         "needs a [scoring] section"),
        ({"name": "r", "all": [{"score": "karma", "gte": 3}]}, "all[0].score",
         "fit, behavior, total"),
        ({"name": "r", "all": [{"score": "total", "in": [3]}]}, "all[0].in",
         "allowed: equals, gt"),
        ({"name": "r", "all": [{"any": [{"event": "a"}], "event": "b"}]}, "all[0]", "alone"),
        ({"name": "r", "all": [{"not": {"event": "a", "at_least": "x"}}]},
         "all[0].not.at_least", "whole number"),
        ({"name": "r", "all": []}, "all", "non-empty list"),
        ({"name": "r"}, "all", "needs 'all' or 'any'"),
        ({"name": "r", "all": [{"event": "a"}], "subject": "team"}, "subject", "account, user"),
        ({"name": "r", "all": [{"event": "a"}], "stage": "hot"}, "stage", "subscriber, lead"),
        ({"name": "r", "all": [{"event": "a"}], "when": 1}, "when", "allowed: all, any"),
    ],
)
def test_malformed_rule_is_refused_naming_rule_and_key(rule, key, says):
    with pytest.raises(pqlsdk.RuleError) as caught:
        pqlsdk.load_rules({"rules": [rule]})
    assert caught.value.rule == "r"
    assert caught.value.key == key
    assert says in str(caught.value)
    assert f"rule 'r': {key}:" in str(caught.value)


def test_rule_without_a_name_is_located_by_its_position():
    with pytest.raises(pqlsdk.RuleError, match=r"rules\[1\]\.name: must be a non-empty string"):
        pqlsdk.load_rules({"rules": [{"name": "ok", "all": [{"event": "a"}]}, {"all": []}]})


def test_duplicate_rule_names_are_refused():
    rule = {"name": "same", "all": [{"event": "a"}]}
    with pytest.raises(pqlsdk.RuleError, match="rule 'same': name: duplicate rule name"):
        pqlsdk.load_rules({"rules": [rule, rule]})


def test_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "pql_rules.toml"
    path.write_text(TEAM_TOML.replace("at_least = 3", "at_least = 'three'"))
    with pytest.raises(pqlsdk.RuleError) as caught:
        pqlsdk.load_rules(path)
    assert str(caught.value).startswith(
        f"{path}: rule 'team_activation': all[1].at_least: must be a whole number >= 0"
    )


def test_invalid_toml_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[rules]\nname=")
    with pytest.raises(pqlsdk.RuleError, match=r"broken\.toml: not valid TOML"):
        pqlsdk.load_rules(path)
    with pytest.raises(pqlsdk.RuleError, match=r"nope\.toml: no such rules file"):
        pqlsdk.load_rules(tmp_path / "nope.toml")


def test_unknown_top_level_key_is_refused():
    with pytest.raises(pqlsdk.RuleError, match="unknown top-level key; allowed: rules"):
        pqlsdk.load_rules({"rulez": []})


def test_client_refuses_bad_rules_before_touching_the_database(db_path):
    import os

    with pytest.raises(pqlsdk.RuleError):
        pqlsdk.Client(db_path, rules={"rules": [{"name": "r", "all": [{"event": 3}]}]})
    assert not os.path.exists(db_path)


def test_python_builders_validate_too():
    with pytest.raises(pqlsdk.RuleError, match="within: must be a duration"):
        pqlsdk.event("a", within="soon")
    with pytest.raises(pqlsdk.RuleError, match="condition: must be a condition"):
        pqlsdk.Rule("r", "report_generated")
    with pytest.raises(pqlsdk.RuleError, match=r"all\[1\]: must be a condition"):
        pqlsdk.all_of(pqlsdk.event("a"), {"event": "b"})
    with pytest.raises(pqlsdk.RuleError, match="unknown operator"):
        pqlsdk.trait("plan", is_="free")


@pytest.mark.parametrize(
    ("ops", "value", "present", "expected"),
    [
        ({"equals": "free"}, "free", True, True),
        ({"equals": "free"}, "paid", True, False),
        ({"not_equals": "free"}, "paid", True, True),
        ({"not_equals": "free"}, None, False, False),
        ({"in": ["a", "b"]}, "b", True, True),
        ({"in": ["a", "b"]}, "c", True, False),
        ({"not_in": ["a", "b"]}, "c", True, True),
        ({"not_in": ["a", "b"]}, "a", True, False),
        ({"gt": 5}, 6, True, True),
        ({"gt": 5}, 5, True, False),
        ({"gte": 5}, 5, True, True),
        ({"lt": 5}, 4.5, True, True),
        ({"lte": 5}, 6, True, False),
        ({"gte": 5}, "9", True, False),
        ({"gte": "2026-01-01"}, "2026-03-01", True, True),
        ({"exists": True}, "x", True, True),
        ({"exists": True}, None, False, False),
        ({"exists": False}, None, False, True),
        ({"contains": "acme"}, "team@acme.io", True, True),
        ({"contains": "beta"}, ["beta", "sso"], True, True),
        ({"contains": "gamma"}, ["beta"], True, False),
        ({"ends_with": "@gmail.com"}, "a@gmail.com", True, True),
        ({"ends_with": "@gmail.com"}, "a@acme.io", True, False),
        ({"gte": 10, "lt": 50}, 20, True, True),
        ({"gte": 10, "lt": 50}, 50, True, False),
    ],
)
def test_every_operator(ops, value, present, expected):
    assert Check.of(ops).matches(value, present) is expected


def test_rules_and_rule_sets_pickle_for_a_process_pool():
    """A rule (its compiled check included) crosses to another process as it is."""
    import pickle

    rule = pqlsdk.Rule("engaged", pqlsdk.all_of(pqlsdk.event("report_generated", at_least=3),
                                                pqlsdk.trait("plan", equals="pro")))
    copied = pickle.loads(pickle.dumps(rule))
    assert copied == rule and copied.version == rule.version
    class Facts:  # what the compiled check asks: a count, a trait
        def __init__(self, count):
            self.count = count

        def measure(self, condition, limit):
            return self.count

        def trait(self, name):
            return True, "pro"

    assert copied.check(Facts(3)) is True and copied.check(Facts(2)) is False
    rules = pqlsdk.RuleSet((rule,))
    assert pickle.loads(pickle.dumps(rules)) == rules
