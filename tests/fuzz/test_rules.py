"""Fuzz the rules loader: random dicts in the rules file's shape, random TOML text and bytes.

Property: ``load_rules`` returns a RuleSet or raises :class:`pqlsdk.RuleError`, nothing
else; and a Client made with a rule set that loaded records events those rules read
without any error (a rule that loads never breaks recording).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pqlsdk

from . import fuzz
from .strategies import json_values, keys, numbers, texts

CONDITION_KEYS = ["event", "at_least", "at_most", "within", "where", "distinct", "sum",
                  "trait", "score", "equals", "not_equals", "in", "not_in", "gt", "gte", "lt",
                  "lte", "exists", "contains", "ends_with", "all", "any", "not"]
durations = st.one_of(st.sampled_from(["1s", "30m", "14d", "2w", "36500d", "36501d", "0d",
                                       "99999999999d", "9999999999w", "1" * 30 + "d", "d",
                                       "-1d", "1.5d", " 3 h "]), texts, numbers)
values = st.one_of(numbers, numbers, durations, texts, st.booleans(), json_values,
                   st.sampled_from(["report", "user", "account", "pql", "total", "n"]))
conditions = st.recursive(
    st.dictionaries(st.one_of(st.sampled_from(CONDITION_KEYS), keys), values, max_size=4),
    lambda inner: st.one_of(
        st.builds(lambda k, parts: {k: parts}, st.sampled_from(["all", "any"]),
                  st.lists(inner, max_size=3)),
        inner.map(lambda c: {"not": c}),
        st.builds(lambda c, extra: {**c, **extra}, inner,
                  st.dictionaries(st.sampled_from(CONDITION_KEYS), values, max_size=2)),
    ),
    max_leaves=8,
)
bounds = st.one_of(st.integers(0, 20), st.integers(0, 20), st.floats(0, 20), numbers)
leaf_conditions = st.one_of(
    st.builds(lambda e, b, w, m: {"event": e, b: w, **m},
              st.sampled_from(["report", "invite"]),
              st.sampled_from(["at_least", "at_most"]), bounds,
              st.sampled_from([{}, {"sum": "n"}, {"distinct": "email"}, {"within": "7d"}])),
    st.builds(lambda op, v: {"trait": "seats", op: v},
              st.sampled_from(["gt", "gte", "lt", "lte", "equals", "in"]),
              st.one_of(bounds, st.lists(bounds, min_size=1, max_size=3))),
    st.builds(lambda op, v: {"score": "total", op: v},
              st.sampled_from(["gt", "gte", "lt", "lte"]), bounds),
    st.builds(lambda w: {"event": "report", "within": w}, durations),
)
rules = st.builds(
    lambda name, parts, extra: {"name": name, "all": parts, **extra},
    st.one_of(st.just("r"), st.just("r"), texts, keys),
    st.lists(st.one_of(leaf_conditions, leaf_conditions, leaf_conditions, conditions),
             min_size=1, max_size=3),
    st.one_of(st.just({}), st.just({}), st.dictionaries(
        st.one_of(st.sampled_from(["subject", "stage", "description", "any"]), keys), values,
        max_size=2)),
)
scoring = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={
        "half_life": durations,
        "behavior": st.lists(st.fixed_dictionaries(
            {"event": st.sampled_from(["report", "invite"]), "points": numbers},
            optional={"max": numbers, "within": durations}), max_size=2),
        "fit": st.lists(st.fixed_dictionaries(
            {"trait": st.just("seats"), "gte": numbers, "points": numbers}), max_size=2),
    }),
    st.dictionaries(keys, values, max_size=3),
)
rule_sets = st.one_of(
    st.builds(lambda rs, sc: {"rules": rs, **({} if sc is None else {"scoring": sc})},
              st.lists(rules, max_size=3, unique_by=lambda r: repr(r.get("name"))), scoring),
    st.dictionaries(keys, values, max_size=3),
)

#: strategies holding long text make hypothesis warn about their repr; expected here
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@pytest.fixture(scope="module")
def recording_db(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz-rules") / "rules.db")


@fuzz()
@given(data=rule_sets)
def test_load_rules_from_random_dicts(recording_db, data):
    from .harness import EXAMPLES

    EXAMPLES["load_rules"] += 1
    try:
        ruleset = pqlsdk.load_rules(data)
    except pqlsdk.RuleError as exc:
        assert str(exc)
        return
    EXAMPLES["load_rules accepted"] += 1
    # a rule set that loads must never break recording
    with pqlsdk.Client(recording_db, rules=list(ruleset.rules), scoring=ruleset.scoring,
                       sync_mode=True) as client:
        for event, props in (("report", {"n": 3}), ("report", {"n": 1e308}),
                             ("invite", {"email": "a@b"}), ("report", {"n": -(2**70)})):
            client.track("u", event, props)
        client.identify("u", {"seats": 7}, account_id="acct")
        client.track("u", "report", {"n": 2})
        client.evaluate()
        client.status("u")
        client.explain("u")
        client.score("u")


@fuzz(0.5)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")), st.sampled_from([
        "[[rules]]\nname = 'r'\n[[rules.all]]\nevent = 'e'\nat_least = inf\n",
        "[scoring]\nhalf_life = '9999999999w'\n",
    ]), st.integers(1, 6000).map(
        lambda n: "[[rules]]\nname = 'r'\n[[rules.all]]\nevent = 'e'\nat_least = 1" + "0" * n),
    st.integers(1, 4000).map(lambda n: "x = " + "[" * n + "]" * n)),
    raw=st.booleans(), binary=st.binary(max_size=64))
def test_load_rules_from_random_toml(tmp_path_factory, text, raw, binary):
    from .harness import EXAMPLES

    EXAMPLES["load_rules(toml)"] += 1
    folder = tmp_path_factory.getbasetemp()
    path = os.path.join(folder, "fuzz-rules.toml")
    with open(path, "wb") as handle:
        handle.write(binary if raw else text.encode("utf-8", "surrogatepass"))
    try:
        pqlsdk.load_rules(path)
    except pqlsdk.RuleError as exc:
        assert str(exc).startswith(path)
