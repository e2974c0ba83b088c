"""Fuzz the recording calls: track, identify, group, set_stage, forget."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqlsdk.timestamps import to_micros

from . import fuzz
from .harness import normal, same, valid_id
from .strategies import event_names, ids, json_objects, stages, texts, timestamps

#: strategies holding long text make hypothesis warn about their repr; expected here
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


def expected_time(value):
    """The UTC moment a timestamp argument means (None: not checked)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.utcoffset() is None else value
    return None


@fuzz()
@given(user=ids, event=event_names, properties=json_objects, account=st.one_of(st.none(), ids),
       timestamp=timestamps, message_id=st.one_of(st.none(), ids))
def test_track(harnesses, user, event, properties, account, timestamp, message_id):
    h = harnesses("track")
    before = h.row("SELECT count(*), max(id) FROM events")
    ok, created = h.attempt(lambda c: c.track(user, event, properties, account_id=account,
                                              timestamp=timestamp, message_id=message_id))
    if ok:
        count, last = h.row("SELECT count(*), max(id) FROM events")
        if count == before[0]:  # the same message_id again: stored and counted once
            assert created == [] and valid_id(message_id) is not None
        else:
            row = h.row("SELECT user_id, account_id, event, ts, properties, message_id "
                        "FROM events WHERE id = ?", last)
            assert row[0] == valid_id(user) and row[2] == valid_id(event)
            if account is not None:
                assert row[1] == valid_id(account)
            assert row[5] == (None if message_id is None else valid_id(message_id))
            moment = expected_time(timestamp)
            if moment is not None:
                assert row[3] == to_micros(moment)
            assert same(json.loads(row[4]), normal(properties or {}))
        for q in created:
            assert h.row("SELECT subject_id FROM qualifications WHERE id = ?", q.id)
    h.ordinary(user, account)


@fuzz()
@given(user=ids, traits=json_objects, account=st.one_of(st.none(), ids), timestamp=timestamps)
def test_identify(harnesses, user, traits, account, timestamp):
    h = harnesses("identify")
    ok, _ = h.attempt(lambda c: c.identify(user, traits, account_id=account,
                                           timestamp=timestamp))
    if ok:
        stored = h.stored_traits("user", valid_id(user))
        for key, value in normal(traits or {}).items():
            if value is None:
                assert key not in stored
            else:
                assert same(stored[key], value)
        if account is not None:
            assert h.row("SELECT account_id FROM users WHERE user_id = ?",
                         valid_id(user))[0] == valid_id(account)
    h.ordinary(user, account)


@fuzz()
@given(user=ids, account=ids, traits=json_objects, timestamp=timestamps)
def test_group(harnesses, user, account, traits, timestamp):
    h = harnesses("group")
    ok, _ = h.attempt(lambda c: c.group(user, account, traits, timestamp=timestamp))
    if ok:
        stored = h.stored_traits("account", valid_id(account))
        for key, value in normal(traits or {}).items():
            if value is None:
                assert key not in stored
            else:
                assert same(stored[key], value)
        assert h.row("SELECT account_id FROM users WHERE user_id = ?",
                     valid_id(user))[0] == valid_id(account)
    h.ordinary(user, account)


@fuzz()
@given(user=st.one_of(st.none(), ids), account=st.one_of(st.none(), ids), stage=stages,
       reason=st.one_of(st.none(), texts, ids), timestamp=timestamps,
       known=st.booleans())
def test_set_stage(harnesses, user, account, stage, reason, timestamp, known):
    h = harnesses("set_stage")
    if known and valid_id(user) is not None and account is None:
        h.client.track(valid_id(user), "ordinary", timestamp=datetime(2026, 1, 1))
    ok, change = h.attempt(lambda c: c.set_stage(user, stage=stage, account_id=account,
                                                 reason=reason, timestamp=timestamp))
    if ok and change is not None:
        subject = {"user_id": valid_id(user)} if user is not None else {
            "account_id": valid_id(account)}
        assert h.client.status(**subject).stage == stage
        # history is in time order: a move dated before earlier ones is not last
        assert change in h.client.history(**subject)
        assert (change.to_stage, change.reason, change.source) == (stage, reason, "manual")
    h.ordinary(user, account)


@fuzz(0.5)
@given(user=ids)
def test_forget(harnesses, user):
    h = harnesses("forget")
    if valid_id(user) is not None:
        h.client.track(valid_id(user), "report", {"n": 1}, timestamp=datetime(2026, 1, 1))
    ok, _ = h.attempt(lambda c: c.forget(user))
    if ok:
        assert h.row("SELECT count(*) FROM events WHERE user_id = ?", valid_id(user))[0] == 0
    h.ordinary(user)
