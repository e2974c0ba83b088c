"""Fuzz the reading calls and evaluate(): status, explain, score, history, qualifications,
funnel, rule_report, scores, evaluate(as_of)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pqlsdk

from . import fuzz
from .harness import valid_id
from .strategies import ids, texts, timestamps

subjects = st.one_of(
    st.tuples(st.sampled_from(["seed", "fuzz-ordinary"]), st.none()),
    st.tuples(st.none(), st.sampled_from(["seed-acct"])),
    st.tuples(st.one_of(st.none(), ids), st.one_of(st.none(), ids)),
)

#: strategies holding long text make hypothesis warn about their repr; expected here
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@fuzz(2)  # four entry points share this test
@given(subject=subjects, as_of=timestamps,
       method=st.sampled_from(["status", "explain", "score", "history"]))
def test_subject_reads(harnesses, subject, as_of, method):
    h = harnesses("status-explain-score")
    user, account = subject
    kwargs = {"account_id": account} if method == "history" else {"account_id": account,
                                                                   "as_of": as_of}
    ok, result = h.attempt(lambda c: getattr(c, method)(user, **kwargs), read_only=True)
    if ok and method == "status":
        assert result.subject_id == (valid_id(user) if user is not None else valid_id(account))
    if not ok and method != "history" and user is not None and account is None:
        assert isinstance(result, pqlsdk.ValidationError | pqlsdk.UnknownSubject)
    h.ordinary(user, account)


@fuzz(2)  # four entry points share this test
@given(since=timestamps, until=timestamps, rule=st.one_of(st.none(), texts, ids),
       by=st.one_of(st.none(), texts, ids),
       subject=st.one_of(st.sampled_from(["user", "account"]), ids),
       method=st.sampled_from(["qualifications", "funnel", "rule_report", "scores"]))
def test_report_bounds(harnesses, since, until, rule, by, subject, method):
    h = harnesses("funnel-rule_report-qualifications")
    calls = {
        "qualifications": lambda c: c.qualifications(since=since, rule=rule),
        "funnel": lambda c: c.funnel(since=since, until=until, by=by, subject=subject),
        "rule_report": lambda c: c.rule_report(since=since),
        "scores": lambda c: c.scores(subject=subject, as_of=since),
    }
    ok, result = h.attempt(calls[method], read_only=True)
    if ok and method == "qualifications" and rule is not None:
        assert all(q.rule == valid_id(rule) for q in result)
    h.ordinary()


@fuzz(0.75)
@given(as_of=timestamps, traits=st.dictionaries(st.sampled_from(["plan", "seats", "email"]),
                                                st.one_of(st.integers(), texts, st.floats()),
                                                max_size=3))
def test_evaluate(harnesses, as_of, traits):
    h = harnesses("evaluate")
    if _valid(traits):
        h.client.identify("fuzz-ordinary", traits or None, account_id="seed-acct",
                          timestamp="2026-01-01T00:00:00Z")
    ok, created = h.attempt(lambda c: c.evaluate(as_of=as_of))
    if ok:
        for q in created:
            assert h.row("SELECT rule FROM qualifications WHERE id = ?", q.id) == (q.rule,)
    h.ordinary()


def _valid(traits):
    try:
        pqlsdk.validation.json_object("traits", traits)
    except pqlsdk.ValidationError:
        return False
    return True
