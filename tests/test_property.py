"""Random event streams and random rules: pqlsdk agrees with a tiny reference evaluator."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pqlsdk
from pqlsdk.rules import AllOf, AnyOf, EventCondition, Not, TraitCondition

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
USERS = {"u0": "A", "u1": "A", "u2": None}

event_conditions = st.builds(
    lambda name, at_least, within, where, measure: pqlsdk.event(
        name,
        at_least=at_least,
        within=within,
        where={"p": where} if where is not None else None,
        **({measure: "p"} if measure else {}),
    ),
    st.sampled_from(["a", "b"]),
    st.integers(1, 4),
    st.sampled_from([None, "1h", "3h", "1d"]),
    st.sampled_from([None, 0, 1]),
    st.sampled_from([None, "distinct", "sum"]),
)
at_most_conditions = st.builds(
    lambda name, at_most, within: pqlsdk.event(name, at_most=at_most, within=within),
    st.sampled_from(["a", "b"]), st.integers(0, 2), st.sampled_from(["1h", "1d"]),
)
trait_conditions = st.builds(lambda v: pqlsdk.trait("plan", equals=v),
                             st.sampled_from(["free", "paid"]))
leaves = st.one_of(event_conditions, event_conditions, at_most_conditions, trait_conditions)
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: pqlsdk.all_of(*cs)),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: pqlsdk.any_of(*cs)),
        inner.map(pqlsdk.not_),
    ),
    max_leaves=4,
)
rule_sets = st.lists(
    st.tuples(conditions, st.sampled_from(["user", "account"])), min_size=1, max_size=3
).map(lambda items: [pqlsdk.Rule(f"r{i}", c, subject=s) for i, (c, s) in enumerate(items)])

# half-hour steps over fifteen hours, so events often land exactly on a window's edge
minutes = st.integers(0, 30).map(lambda step: step * 30)
calls = st.lists(
    st.one_of(
        st.tuples(st.just("track"), st.sampled_from(sorted(USERS)), st.sampled_from(["a", "b"]),
                  st.sampled_from([0, 1, 2, None]), minutes),
        st.tuples(st.just("identify"), st.sampled_from(sorted(USERS)),
                  st.sampled_from(["free", "paid"]), st.none(), minutes),
    ),
    min_size=10,
    max_size=60,
)


# --- the reference: plain Python over plain lists --------------------------------------------

def ref_value(cond: EventCondition, events, subject_type, subject_id, t):
    rows = []
    for e in events:
        owner = e["user"] if subject_type == "user" else e["account"]
        if owner != subject_id or e["event"] != cond.event or e["ts"] > t:
            continue
        if cond.within is not None and e["ts"] < t - cond.within:
            continue
        if cond.where and e["props"].get("p") != cond.where[0][1].ops[0][1]:
            continue
        rows.append(e["props"].get("p"))
    if cond.distinct:
        return len({v for v in rows if v is not None})
    if cond.sum:
        return sum(v for v in rows if v is not None)
    return len(rows)


def ref_holds(cond, events, traits, subject_type, subject_id, t):
    if isinstance(cond, EventCondition):
        value = ref_value(cond, events, subject_type, subject_id, t)
        return cond.at_least <= value and (cond.at_most is None or value <= cond.at_most)
    if isinstance(cond, TraitCondition):
        found = traits.get(subject_id, {}).get(cond.trait) if subject_type == "user" else None
        return found is not None and found == cond.check.ops[0][1]
    if isinstance(cond, AllOf):
        return all(ref_holds(c, events, traits, subject_type, subject_id, t)
                   for c in cond.conditions)
    if isinstance(cond, AnyOf):
        return any(ref_holds(c, events, traits, subject_type, subject_id, t)
                   for c in cond.conditions)
    assert isinstance(cond, Not)
    return not ref_holds(cond.condition, events, traits, subject_type, subject_id, t)


def reference(rules, stream):
    events, traits, done = [], {}, {}

    def on_empty(subject_type, subject_id):
        """The rules checked when a subject is first seen: those that hold on a subject
        with no events and no traits (issue 20)."""
        return [r for r in rules if r.subject == subject_type and ref_holds(
            r.condition, [], {}, subject_type, subject_id, T0)]

    seen = set()
    grouped_at = T0 - timedelta(days=1)  # the test groups users with accounts first
    for user, account in USERS.items():
        if account:
            for subject_type, subject_id in (("user", user), ("account", account)):
                if (subject_type, subject_id) in seen:
                    continue
                seen.add((subject_type, subject_id))
                for rule in on_empty(subject_type, subject_id):
                    done[(rule.name, subject_type, subject_id)] = grouped_at
    for kind, user, what, prop, minute in stream:
        t = T0 + timedelta(minutes=minute)
        subjects = [("user", user)] + ([("account", USERS[user])] if USERS[user] else [])
        first = ("user", user) not in seen
        seen.add(("user", user))
        if kind == "track":
            events.append({"user": user, "account": USERS[user], "event": what, "ts": t,
                           "props": {} if prop is None else {"p": prop}})
            relevant = [r for r in rules if what in r.events]
        else:
            if traits.get(user, {}).get("plan") == what and not first:
                continue
            traits.setdefault(user, {})["plan"] = what
            relevant = [r for r in rules if "plan" in r.traits]
            subjects = [("user", user)]
        for subject_type, subject_id in subjects:
            checked = relevant + (on_empty("user", user) if first and subject_type == "user"
                                  else [])
            for rule in checked:
                key = (rule.name, subject_type, subject_id)
                if rule.subject == subject_type and key not in done and ref_holds(
                        rule.condition, events, traits, subject_type, subject_id, t):
                    done[key] = t
    return done


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets, stream=calls)
def test_qualifications_match_the_reference_evaluator(rules, stream):
    with tempfile.TemporaryDirectory() as folder:
        client = pqlsdk.Client(os.path.join(folder, "pql.db"), rules=rules)
        for user, account in USERS.items():
            if account:
                client.group(user, account, timestamp=T0 - timedelta(days=1))
        for kind, user, what, prop, minute in stream:
            t = T0 + timedelta(minutes=minute)
            if kind == "track":
                client.track(user, what, {} if prop is None else {"p": prop}, timestamp=t)
            else:
                client.identify(user, {"plan": what}, timestamp=t)
        got = {(q.rule, q.subject_type, q.subject_id): q.qualified_at
               for q in client.qualifications()}
        client.close()
    assert got == reference(rules, stream)


class _TableFacts:
    """Facts from plain tables: each event condition's value, the traits, the scores."""

    def __init__(self, counts: dict, traits: dict, scores: dict) -> None:
        self.counts, self.traits, self.scores, self.asked = counts, traits, scores, []

    def measure(self, condition, limit):
        self.asked.append(condition)
        return self.counts.get(condition.event, 0)

    def trait(self, name):
        self.asked.append(name)
        value = self.traits.get(name)
        return value is not None, value

    def score(self, kind):
        return self.scores.get(kind, 0.0)


@settings(max_examples=300, deadline=None)
@given(conditions, st.integers(0, 5), st.integers(0, 5),
       st.sampled_from([None, "free", "paid"]))
def test_a_compiled_condition_decides_as_holds_asking_the_same_facts(condition, a, b, plan):
    from pqlsdk.evaluator import compile_condition, holds

    tables = ({"a": a, "b": b}, {"plan": plan}, {})
    walked, compiled = _TableFacts(*tables), _TableFacts(*tables)
    assert compile_condition(condition)(compiled) == holds(condition, walked)
    assert compiled.asked == walked.asked  # the same checks, in the same order
    assert pqlsdk.Rule("r", condition).check(_TableFacts(*tables)) == holds(
        condition, _TableFacts(*tables))
