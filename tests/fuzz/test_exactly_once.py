"""Exactly once, whatever ids and rule names hold: a model of rounds against pqlsdk.

Users whose ids hold the old separator (``u\\x1f1``), NUL-free control characters and
non-BMP characters track events and are rejected (a new round) in random order; rules whose
names hold the separator qualify them. Every (subject, rule, round) whose event was tracked
must have exactly one qualification: none lost to a colliding id, none twice.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pqlsdk

from . import fuzz
from .harness import EXAMPLES

USERS = ["u", "u\x1f1", "u\x1f", "\x1fu", "u\x1f0", "😀", "u\x1f1\x1f1", "1"]
RULE_NAMES = ["r", "r\x1fuser", "r\x1fuser\x1fu", "😀\x1f"]
RULES = [pqlsdk.Rule(name, pqlsdk.event(f"e{index}")) for index, name in enumerate(RULE_NAMES)]
operations = st.lists(st.tuples(st.sampled_from(["track", "reject"]),
                                st.sampled_from(USERS), st.integers(0, len(RULES) - 1)),
                      max_size=30)
_examples = itertools.count()

#: strategies holding long text make hypothesis warn about their repr; expected here
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    made = pqlsdk.Client(str(tmp_path_factory.mktemp("once") / "once.db"), rules=RULES)
    yield made
    made.close(timeout=0)


@fuzz()
@given(ops=operations)
def test_every_round_qualifies_once(client, ops):
    EXAMPLES["exactly once (rounds)"] += 1
    prefix = f"x{next(_examples)}|"  # each example its own subjects in one file
    rounds = dict.fromkeys(USERS, 0)
    expected: set[tuple[str, str, int]] = set()
    for op, user, index in ops:
        subject = prefix + user
        if op == "reject":
            client.track(subject, "seen")  # a subject first
            client.set_stage(subject, stage="unqualified")
            rounds[user] += 1
            continue
        created = client.track(subject, f"e{index}")
        key = (user, RULE_NAMES[index], rounds[user])
        assert [q.rule for q in created] == ([] if key in expected else [RULE_NAMES[index]])
        expected.add(key)
    found = [q for q in client.qualifications() if q.subject_id.startswith(prefix)]
    assert sorted((q.subject_id[len(prefix):], q.rule) for q in found) == sorted(
        (user, rule) for user, rule, _ in expected)
    assert len({q.id for q in found}) == len(found)
