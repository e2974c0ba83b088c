"""Fuzz the importer on random lines: Segment-shaped messages with hostile fields, and
lines that are not JSON at all.

Property: ``parse_message`` returns a validated call (or a type to skip) or raises
:class:`pqlsdk.ValidationError` or a read error the importer names (``describe``);
``import_jsonl`` reports each bad line by number, imports
the good ones, and raises nothing.
"""

from __future__ import annotations

import io
import json
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pqlsdk
from pqlsdk import importer
from pqlsdk.importer import describe, import_jsonl, parse_message

from . import fuzz
from .harness import EXAMPLES
from .strategies import json_values, texts

json_ids = st.one_of(texts, st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False),
                     st.lists(st.integers(), max_size=2))
stamps = st.one_of(st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                                    "9999-12-31T23:00:00-02:00", "2026-13-01", 1700000000,
                                    None]), texts)
messages = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["track", "identify", "group", "page"]), json_ids)},
    optional={
        "userId": json_ids, "anonymousId": json_ids, "event": json_ids, "groupId": json_ids,
        "messageId": json_ids, "timestamp": stamps, "originalTimestamp": stamps,
        "properties": st.one_of(st.dictionaries(texts, json_values, max_size=3), json_values),
        "traits": st.one_of(st.dictionaries(texts, json_values, max_size=3), json_values),
        "context": st.one_of(st.fixed_dictionaries({"groupId": json_ids}), json_values),
    },
)

#: strategies holding long text make hypothesis warn about their repr; expected here
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


def _line(message) -> str:
    try:
        return json.dumps(message, allow_nan=True, default=str)
    except ValueError:  # an int json cannot write
        return "{}"


lines = st.one_of(
    messages.map(_line),
    messages.map(_line),
    st.text(max_size=80),
    st.integers(1, 6000).map(lambda n: '{"type": "track", "n": 1' + "0" * n + "}"),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(['{"type": "track", "userId": "u", "event": "e", "timestamp": '
                     '"2026-01-01T00:00:00Z", "messageId": "m\\ud800"}',
                     '{"type": "identify", "userId": "u\\u0000", "timestamp": "2026-01-01"}',
                     "NaN", "Infinity", '{"type": "track", "timestamp": NaN}']),
)


@fuzz()
@given(line=lines)
def test_parse_message(line):
    EXAMPLES["import parse_message"] += 1
    try:
        parsed = parse_message(line)
    except pqlsdk.ValidationError as exc:
        assert str(exc)
        return
    except (ValueError, RecursionError, OverflowError) as exc:
        # read errors the importer names itself (issue 18's describe), never a generic one
        assert not describe(exc).startswith("cannot be read"), describe(exc)
        return
    assert isinstance(parsed, str | tuple)


@fuzz(0.25)
@given(chunk=st.lists(lines, min_size=1, max_size=6))
def test_import_jsonl(harnesses, chunk):
    h = harnesses("import")
    good = json.dumps({"type": "track", "userId": "fuzz-ordinary", "event": "report",
                       "timestamp": "2026-01-01T00:00:00Z"})
    text = "\n".join([*(line.replace("\n", " ").replace("\r", " ") for line in chunk), good])
    ok, result = h.attempt(lambda c: import_jsonl(c, io.StringIO(text + "\n")))
    assert ok, result
    assert result.read == len([line for line in text.split("\n") if line.strip()])
    numbered = [n for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    assert {number for number, _ in result.errors} <= set(numbered)
    assert result.applied >= 1 or result.duplicates >= 1  # the good line went in
    h.ordinary()


def _outcome(read):
    try:
        return read()
    except Exception as exc:  # the reason the importer reports for the line
        return ("bad", describe(exc))


_COMMON = {"type": "track", "userId": "u1", "event": "report", "messageId": "m1",
           "timestamp": "2026-01-01T00:00:00Z", "properties": {"n": 1},
           "context": {"groupId": "a1"}}
_ODD_IDS = st.one_of(st.sampled_from([" ", "", "x" * 1025, "u\x00", "\u00e9", 5, None, True]),
                     json_ids)
#: The common line with zero to three of its fields changed (or dropped: None)
track_messages = st.fixed_dictionaries({
    "userId": st.one_of(st.just("u1"), _ODD_IDS),
    "event": st.one_of(st.just("report"), _ODD_IDS),
    "messageId": st.one_of(st.just("m1"), _ODD_IDS),
    "timestamp": st.one_of(st.just("2026-01-01T00:00:00Z"), stamps),
    "properties": st.one_of(st.just({"n": 1}), st.sampled_from([
        [], "x", {"n": float("nan")}, {"a": [[[[[[]]]]]]}, {"s": "\ud800"}, {"t": "\u0000"}]),
        st.dictionaries(texts, json_values, max_size=3), json_values),
    "context": st.one_of(st.just({"groupId": "a1"}),
                         st.fixed_dictionaries({"groupId": _ODD_IDS}), json_values),
}).flatmap(lambda changed: st.sets(st.sampled_from(sorted(changed)), max_size=3).map(
    lambda keys: {**_COMMON, **{k: changed[k] for k in keys}}))


@fuzz()
@given(message=st.one_of(track_messages, messages))
def test_the_common_track_path_reads_a_line_as_the_full_path_does(message):
    # the fast path for the common line gives the same message, or the same reason
    EXAMPLES["import common track path"] += 1
    line = _line(message)
    fast = _outcome(lambda: importer._message(7, line))
    with mock.patch.object(importer, "_common_track", lambda number, message: None):
        full = _outcome(lambda: importer._message(7, line))
    assert fast == full


_VARIANTS = {
    "userId": [" ", "", "x" * 1025, "u\x00", "\u00e9", "\ud800", 5, 2**4000, None, True, [1]],
    "event": [" ", "", "x" * 1025, "e\x00", "\u00e9", 5, None, {}],
    "messageId": [" ", "", "x" * 1025, "\ud800", 5, None, 1.5],
    "timestamp": ["2026-13-01", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-02:00",
                  1700000000, None, "", " 2026-01-01T00:00:00Z ", "x" * 70,
                  # the shapes utc_micros reads without a datetime, and their near misses
                  "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00.5Z",
                  "2026-01-01T00:00:00.123456+00:00", "2026-01-01T00:00:00.1234567Z",
                  "2026-01-01T00:00Z", "2026-01-01T00Z", "2026-01-01T00:00:00z",
                  "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z",
                  "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                  "2026-01-01T00:00:00-00:00", "2026-01-01 00:00:00Z", "2026-W01-1T00:00:00Z",
                  "20260101T000000Z", "2026-01-01T00:00:00+00:00Z",
                  "2026-01-01T00:00:00." + "1" * 40 + "Z", "2026-01-01T00:00:0\u0660Z"],
    "properties": [[], "x", None, {"n": float("nan")}, {"a": [[[[[[1]]]]]]}, {"s": "\ud800"},
                   {"t": "\x00"}, {"big": 10**400}, {"k": "x" * 70000}],
    "context": [None, [], {"groupId": " "}, {"groupId": 7}, {"groupId": None}, {"groupId": ""},
                {"groupId": "\ud800"}, {"groupId": "x" * 1025}],
    "anonymousId": ["anon", " ", 5],
    "type": ["page", "identify", None],
}


def _variants():
    singles = [{key: value} for key, values in _VARIANTS.items() for value in values]
    pairs = [{**a, **b} for i, a in enumerate(singles) for b in singles[i + 1:]
             if a.keys() != b.keys()]
    return singles + pairs


def test_the_common_track_path_agrees_on_every_single_and_paired_change():
    # deterministic: the common line with each field changed, alone and in pairs
    for changed in _variants():
        message = {**_COMMON, **changed}
        line = json.dumps(message, allow_nan=True)
        fast = _outcome(lambda line=line: importer._message(7, line))
        with mock.patch.object(importer, "_common_track", lambda number, message: None):
            full = _outcome(lambda line=line: importer._message(7, line))
        assert fast == full, changed
