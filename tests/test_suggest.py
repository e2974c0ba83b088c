"""suggest(): finds the planted rule; its figures are backtest's; property forms; TOML."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest

import pqlsdk
from pqlsdk.rules import load_rules

from .test_backtest import known  # noqa: F401 - the shared fixture
from .truth import END, T0

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_the_planted_rule_is_among_the_top_three(known):  # noqa: F811
    path, _ = known
    with pqlsdk.Client(path) as client:
        found = client.suggest(min_support=20, until=END)
        firsts = [s.rule.condition.conditions[0] for s in found[:3]]
        top = [(c.event, c.within, c.at_least) for c in firsts]
        assert ("report_generated", timedelta(days=7), 5) in top
        assert [s.lift for s in found] == sorted((s.lift for s in found), reverse=True)
        assert all(s.qualified >= 20 for s in found) and len(found) == 10
        for suggestion in found[:5]:  # measured exactly as backtest measures a rule
            replayed = client.backtest([suggestion.rule], until=END).rules[0]
            assert (replayed.qualified, replayed.converted, replayed.precision,
                    replayed.recall, replayed.lift) == (
                suggestion.qualified, suggestion.converted, suggestion.precision,
                suggestion.recall, suggestion.lift)
        # the TOML is ready to paste: it loads back to the same rule
        pasted = load_rules(tomllib.loads(found[0].toml)).rules[0]
        assert pasted == found[0].rule and pasted.version == found[0].rule.version


def test_property_values_and_distinct_counts_are_searched(make_client):
    client = make_client()
    for n in range(60):
        user = f"u{n}"
        provider = "salesforce" if n % 3 == 0 else "zapier"
        client.track(user, "integration_connected", {"provider": provider}, timestamp=T0)
        for k in range(n % 4 + 1):
            client.track(user, "teammate_invited", {"email": f"p{k}@x.io"},
                         timestamp=T0 + timedelta(hours=k + 1))
        if provider == "salesforce" or n % 4 == 3:
            client.set_stage(user, stage="customer", timestamp=T0 + timedelta(days=2))
    found = {s.rule.name: s for s in client.suggest(min_support=5, top=50,
                                                    until=T0 + timedelta(days=60))}
    crm = found["integration_connected_provider_salesforce"]
    assert (crm.qualified, crm.converted, crm.precision) == (20, 20, 1.0)
    assert crm.rule.condition.conditions[0].where[0][0] == "provider"
    assert 'where = { provider = { equals = "salesforce" } }' in crm.toml
    team = found["teammate_invited_4_distinct_email"]
    # n % 4 == 3: 15 users, all converted
    assert (team.qualified, team.converted) == (15, 15)
    assert team.rule.condition.conditions[0].distinct == "email"


def test_min_support_and_top_are_checked(make_client):
    client = make_client()
    with pytest.raises(pqlsdk.ValidationError):
        client.suggest(min_support=0)
    with pytest.raises(pqlsdk.ValidationError):
        client.suggest(top=-1)
    assert client.suggest() == []
