"""Bad input is refused with pqlsdk's own error, writes nothing, and poisons nothing after.

One named test per case of issue 15's "Why" (the outside fault campaign), and the limits
the README states.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk.cli import main
from pqlsdk.importer import import_jsonl
from pqlsdk.limits import MAX_ID_LENGTH, MAX_JSON_BYTES, MAX_JSON_DEPTH

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("engaged", pqlsdk.event("report_generated", at_least=1))]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def dump(path: str) -> dict[str, list[tuple]]:
    """Every row of every table: what "writes nothing" compares."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


# --- a qualification silently lost -------------------------------------------------------


def test_rule_name_holding_the_separator_does_not_take_another_rules_qualification(
        make_client):
    """Rule ``a\\x1fuser`` for user ``x`` and rule ``a`` for user ``user\\x1fx`` had one id."""
    rules = [pqlsdk.Rule("a\x1fuser", pqlsdk.event("e")), pqlsdk.Rule("a", pqlsdk.event("e"))]
    client = make_client(rules)
    assert [q.rule for q in client.track("x", "e", timestamp=at(0))] == ["a\x1fuser", "a"]
    assert sorted(q.rule for q in client.track("user\x1fx", "e", timestamp=at(1))) == [
        "a", "a\x1fuser"]
    assert len({q.id for q in client.qualifications()}) == 4


# --- a rule that breaks recording ----------------------------------------------------------


@pytest.mark.parametrize(("condition", "key"), [
    ({"event": "e", "at_least": 1e19}, "at_least"),
    ({"event": "e", "at_most": 9223372036854775807}, "at_most"),
    ({"event": "e", "at_least": 10**400}, "at_least"),
    ({"event": "e", "at_least": float("inf"), "sum": "n"}, "at_least"),
    ({"event": "e", "at_least": float("nan")}, "at_least"),
    ({"event": "e", "at_least": 2**53 + 1}, "at_least"),
    ({"event": "e", "at_least": 1.5}, "at_least"),
    ({"event": "e", "within": "99999999999d"}, "within"),
    ({"event": "e", "within": "1" * 5000 + "d"}, "within"),
    ({"event": "e", "within": timedelta(days=40_000)}, "within"),
    ({"trait": "seats", "gte": float("nan")}, "gte"),
    ({"trait": "plan", "in": ["a", float("inf")]}, "in"),
    ({"score": "total", "gte": float("inf")}, "gte"),
])
def test_rule_bounds_the_store_cannot_compare_are_refused_at_load(condition, key):
    with pytest.raises(pqlsdk.RuleError) as caught:
        pqlsdk.load_rules({"rules": [{"name": "r", "all": [condition]}],
                           "scoring": {"behavior": []}})
    assert caught.value.rule == "r"
    assert caught.value.key.endswith(key), caught.value.key
    assert "got" in caught.value.problem


def test_count_bounds_up_to_2_to_the_53_are_accepted_and_recording_still_works(make_client):
    client = make_client({"rules": [{"name": "r", "all": [
        {"event": "e", "at_least": 2**53}, {"event": "e", "at_most": 2**53}]}]})
    assert client.track("u", "e", timestamp=at(0)) == []
    assert client.status("u").progress["r"].parts[0].value == 1


@pytest.mark.parametrize(("scoring", "key"), [
    ({"half_life": "9999999999w"}, "scoring.half_life"),
    ({"behavior": [{"event": "e", "points": float("nan")}]}, "scoring.behavior[0].points"),
    ({"behavior": [{"event": "e", "points": float("-inf")}]}, "scoring.behavior[0].points"),
    ({"behavior": [{"event": "e", "points": 10**400}]}, "scoring.behavior[0].points"),
    ({"behavior": [{"event": "e", "points": 1, "max": float("inf")}]},
     "scoring.behavior[0].max"),
    ({"behavior": [{"event": "e", "points": 1, "within": "99999999999d"}]},
     "scoring.behavior[0].within"),
    ({"fit": [{"trait": "t", "gte": 1, "points": float("nan")}]}, "scoring.fit[0].points"),
])
def test_scoring_durations_and_points_out_of_range_are_refused(scoring, key):
    with pytest.raises(pqlsdk.RuleError) as caught:
        pqlsdk.load_rules({"scoring": scoring})
    assert caught.value.key == key


def test_at_least_1e19_in_a_toml_file_is_refused_naming_file_rule_and_key(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\nname = "big"\n[[rules.all]]\nevent = "e"\nat_least = 1e19\n')
    with pytest.raises(pqlsdk.RuleError, match=r"rules\.toml: rule 'big': all\[0\]\.at_least: "
                                                r"must be a whole number >= 0 and <= 2\*\*53 "
                                                r"\(got 1e\+19\)"):
        pqlsdk.Client(str(tmp_path / "pql.db"), rules=str(path))


def test_conditions_nested_deeper_than_the_limit_are_refused():
    condition: dict = {"event": "e"}
    for _ in range(5000):
        condition = {"not": condition}
    with pytest.raises(pqlsdk.RuleError, match="nested too deeply"):
        pqlsdk.load_rules({"rules": [{"name": "r", "all": [condition]}]})
    built = pqlsdk.event("e")
    with pytest.raises(pqlsdk.RuleError, match="at most 32 levels"):
        for _ in range(100):
            built = pqlsdk.not_(built)


# --- raw errors from the loader --------------------------------------------------------------


@pytest.mark.parametrize("rules", [
    {1: []},
    {"rules": [{"name": "r", 1: "x", "all": [{"event": "e"}]}]},
    {"rules": [{"name": "r", "all": [{"trait": "plan", 2: "x"}]}]},
    {"rules": [{"name": "r", "all": [{"event": "e", "where": {3: "x"}}]}]},
    {"scoring": {"fit": [{"trait": "t", None: 1, "points": 1}]}},
], ids=["top level", "rule", "trait condition", "where", "scoring"])
def test_non_string_keys_are_a_rule_error(rules):
    with pytest.raises(pqlsdk.RuleError, match="keys must be strings"):
        pqlsdk.load_rules(rules)


def test_rules_file_with_invalid_utf8_is_a_rule_error(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_bytes(b'[[rules]]\nname = "caf\xe9"\n')
    with pytest.raises(pqlsdk.RuleError, match=r"rules\.toml: not valid UTF-8 \(byte 0xe9"):
        pqlsdk.load_rules(str(path))


def test_directory_as_rules_path_is_a_rule_error(tmp_path):
    with pytest.raises(pqlsdk.RuleError, match="is a directory"):
        pqlsdk.load_rules(str(tmp_path))
    with pytest.raises(pqlsdk.RuleError, match="is a directory"):
        pqlsdk.load_rules(tmp_path)  # a PathLike too


def test_rules_file_nested_thousands_deep_is_a_rule_error(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(pqlsdk.RuleError, match=r"rules\.toml"):
        pqlsdk.load_rules(str(path))


@pytest.mark.parametrize(("rule", "says"), [
    ({"name": "r\x00", "all": [{"event": "e"}]}, "must not contain NUL"),
    ({"name": "r", "all": [{"event": "e\ud800"}]}, "lone surrogates"),
    ({"name": "r", "all": [{"trait": "plan", "equals": "a\x00"}]}, "must not contain NUL"),
    ({"name": "x" * (MAX_ID_LENGTH + 1), "all": [{"event": "e"}]}, "at most 1024"),
])
def test_rule_names_and_values_are_valid_text(rule, says):
    with pytest.raises(pqlsdk.RuleError, match=says):
        pqlsdk.load_rules({"rules": [rule]})


def test_python_builders_refuse_the_same_text():
    with pytest.raises(pqlsdk.RuleError, match="event: must not contain NUL"):
        pqlsdk.event("e\x00")
    with pytest.raises(pqlsdk.RuleError, match="lone surrogates"):
        pqlsdk.trait("plan", equals="\udc80")
    with pytest.raises(pqlsdk.RuleError, match="property names"):
        pqlsdk.event("e", where={"\x00": 1})


def test_cli_check_reports_bad_rules_files_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 2 and "not valid UTF-8" in result.output
    result = CliRunner().invoke(main, ["check", str(tmp_path)])
    assert result.exit_code == 2


# --- raw errors from the API -----------------------------------------------------------------


@pytest.mark.parametrize(("call", "says"), [
    (lambda c: c.track("u\ud800", "e"), "user_id must be valid Unicode"),
    (lambda c: c.track("u", "e\udfff"), "event must be valid Unicode"),
    (lambda c: c.track("u", "e", account_id="\udc80"), "account_id must be valid Unicode"),
    (lambda c: c.track("u", "e", message_id="m\ud800"), "message_id must be valid Unicode"),
    (lambda c: c.track("u", "e", {"p": "\ud800"}), "properties must be a dict of JSON values: "
                                                   "properties['p'] must be valid Unicode"),
    (lambda c: c.track("u", "e", {"\ud800": 1}), "properties key must be valid Unicode"),
    (lambda c: c.identify("u", {"plan": "\udc80"}), "traits must be a dict of JSON values"),
    (lambda c: c.group("u", "a\ud800"), "account_id must be valid Unicode"),
    (lambda c: c.set_stage("u\ud800", stage="sql"), "user_id must be valid Unicode"),
    (lambda c: c.set_stage("u", stage="sql", reason="\ud800"), "reason must be valid Unicode"),
    (lambda c: c.status("\ud800"), "user_id must be valid Unicode"),
    (lambda c: c.explain(account_id="\ud800"), "account_id must be valid Unicode"),
    (lambda c: c.score("\ud800"), "user_id must be valid Unicode"),
    (lambda c: c.qualifications(rule="\ud800"), "rule must be valid Unicode"),
    (lambda c: c.funnel(by="\ud800"), "by must be valid Unicode"),
    (lambda c: c.forget("\ud800"), "user_id must be valid Unicode"),
], ids=["user_id", "event", "account_id", "message_id", "property value", "property key",
        "trait", "group account", "set_stage", "reason", "status", "explain", "score",
        "qualifications", "funnel", "forget"])
def test_lone_surrogates_are_a_validation_error(make_client, db_path, call, says):
    client = make_client(RULES)
    client.track("u", "report_generated", timestamp=at(0))
    before = dump(db_path)
    with pytest.raises(pqlsdk.ValidationError) as caught:
        call(client)
    assert says in str(caught.value)
    assert dump(db_path) == before


@pytest.mark.parametrize("stamp", [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:00:00-02:00",
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59))),
])
def test_timestamps_at_the_calendars_edge_with_an_offset_are_a_validation_error(
        make_client, db_path, stamp):
    client = make_client(RULES)
    client.track("u", "report_generated", timestamp=at(0))
    before = dump(db_path)
    for call in (lambda: client.track("u", "e", timestamp=stamp),
                 lambda: client.identify("u", {"a": 1}, timestamp=stamp),
                 lambda: client.group("u", "acme", timestamp=stamp),
                 lambda: client.set_stage("u", stage="sql", timestamp=stamp),
                 lambda: client.evaluate(as_of=stamp),
                 lambda: client.status("u", as_of=stamp),
                 lambda: client.qualifications(since=stamp),
                 lambda: client.funnel(until=stamp)):
        with pytest.raises(pqlsdk.ValidationError, match=r"must be between "
                                                         r"0001-01-01T00:00:00Z and "
                                                         r"9999-12-31T23:59:59\.999999Z"):
            call()
    assert dump(db_path) == before


def test_the_calendars_edges_themselves_are_stored_and_read_back(make_client):
    client = make_client(RULES)
    first = datetime(1, 1, 1, tzinfo=timezone.utc)
    last = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
    [early] = client.track("u", "report_generated", timestamp=first)
    assert early.qualified_at == first
    client.track("v", "e", timestamp="9999-12-31T23:59:59.999999+00:00")
    assert client.evaluate(as_of=last) == []
    assert client.status("v", as_of=last).stage == "lead"
    assert [c.at for c in client.history("v")] == [last]


@pytest.mark.parametrize("name", ["properties", "traits"])
def test_json_nested_thousands_deep_is_a_validation_error(make_client, db_path, name):
    client = make_client(RULES)
    client.track("u", "report_generated", timestamp=at(0))
    before = dump(db_path)
    for depth in (MAX_JSON_DEPTH + 1, 5000):
        with pytest.raises(pqlsdk.ValidationError, match=f"{name} must be at most 32 levels"):
            if name == "properties":
                client.track("u", "e", nested(depth))
            else:
                client.identify("u", nested(depth))
    assert dump(db_path) == before
    client.track("u", "e", nested(MAX_JSON_DEPTH))  # the limit itself is fine
    assert client.track("u", "report_generated", timestamp=at(1)) == []


def test_nul_in_ids_and_text_values_is_refused(make_client, db_path):
    """SPEC §13: ids, names and text values may not hold NUL (PostgreSQL cannot store it)."""
    client = make_client(RULES)
    before = dump(db_path)
    for call in (lambda: client.track("u\x00", "e"), lambda: client.track("u", "e\x00"),
                 lambda: client.track("u", "e", {"p": "a\x00b"}),
                 lambda: client.identify("u", {"p\x00": 1}),
                 lambda: client.set_stage("u", stage="sql", reason="\x00")):
        with pytest.raises(pqlsdk.ValidationError, match=r"must not contain NUL \(U\+0000\)"):
            call()
    assert dump(db_path) == before


def test_other_control_characters_and_non_bmp_text_are_stored_as_given(make_client, db_path):
    client = make_client(RULES)
    props = {"p\x1f": "tab\tbell\x07 😀", "nested": ["\x1b[31m", {"😀": 1}]}
    client.track("u\x01\x1f😀", "report_generated", props, timestamp=at(0))
    with sqlite3.connect(db_path) as conn:
        user_id, stored = conn.execute("SELECT user_id, properties FROM events").fetchone()
    assert user_id == "u\x01\x1f😀" and json.loads(stored) == props


@pytest.mark.parametrize(("call", "says"), [
    (lambda c: c.track("x" * (MAX_ID_LENGTH + 1), "e"), "user_id must be at most 1024 characters"),
    (lambda c: c.track("u", "e", {"p": "x" * MAX_JSON_BYTES}),
     "properties must be at most 32768 bytes as JSON"),
    (lambda c: c.track("u", "e", {1: "a"}), "keys must be strings (got 1 of type int)"),
    (lambda c: c.track("u", "e", {"n": 10**5000}), "too large a number"),
    (lambda c: c.track(10**5000, "e"), "user_id must be at most 1024 characters"),
    (lambda c: c.track("u", "e", {"s": {1, 2}}), "properties['s'] must be a string, number"),
    (lambda c: c.track("u", "e", timestamp="2026-01-01T00:00:00." + "0" * 100),
     "timestamp must be a"),
    (lambda c: c.set_stage("u", stage="sql", reason="x" * 5000), "reason must be at most 4096"),
])
def test_limits_are_refused_naming_the_argument(make_client, db_path, call, says):
    client = make_client(RULES)
    before = dump(db_path)
    with pytest.raises(pqlsdk.ValidationError) as caught:
        call(client)
    assert says in str(caught.value)
    assert dump(db_path) == before


def test_a_refused_call_does_not_poison_the_next_one(make_client):
    client = make_client(RULES)
    with pytest.raises(pqlsdk.ValidationError):
        client.track("u", "report_generated", {"p": nested(5000)}, timestamp=at(0))
    [q] = client.track("u", "report_generated", timestamp=at(1))
    assert q.subject_id == "u" and client.status("u").stage == "pql"


# --- the importer ---------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "says"), [
    ('{"type": "track", "userId": "u", "event": "e", "timestamp": "2026-01-01T00:00:00Z", '
     '"properties": {"n": 1' + "0" * 5000 + "}}", "a number too long"),
    ('{"type": "track", "userId": "u", "event": "e", "timestamp": "2026-01-01T00:00:00Z", '
     '"properties": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ('{"type": "identify", "userId": "u", "timestamp": "2026-01-01T00:00:00Z", '
     '"messageId": "m\\ud800"}', "messageId must be valid Unicode"),
    ('{"type": "track", "userId": "u\\u0000", "event": "e", "timestamp": '
     '"2026-01-01T00:00:00Z"}', "user_id must not contain NUL"),
    ('{"type": "track", "userId": "u", "event": "e", "timestamp": '
     '"0001-01-01T00:00:00+01:00"}', "timestamp must be between"),
])
def test_importer_reports_hostile_lines_and_imports_the_rest(make_client, tmp_path, line,
                                                              says):
    client = make_client(RULES)
    good = json.dumps({"type": "track", "userId": "ada", "event": "report_generated",
                       "timestamp": "2026-01-01T00:00:00Z"})
    path = tmp_path / "history.jsonl"
    path.write_text(line + "\n" + good + "\n", encoding="utf-8")
    result = import_jsonl(client, str(path))
    assert [number for number, _ in result.errors] == [1]
    assert says in result.errors[0][1]
    assert (result.applied, result.qualifications) == (1, 1)


@pytest.mark.parametrize("trait", ['lead "source"', "lead.source", "😀", "a\\b", "a\x1fb", "é"])
def test_funnel_splits_by_any_trait_name(make_client, trait):
    """A JSON path cannot spell every key (a quote, an escape): the split must still work."""
    client = make_client(RULES)
    client.identify("ada", {trait: "ads", "other": 1}, timestamp=at(0))
    client.identify("bob", {trait: "seo"}, timestamp=at(0))
    client.track("ada", "report_generated", timestamp=at(1))
    funnel = client.funnel(by=trait)
    assert sorted(funnel.segments) == ["ads", "seo"]
    assert {s.stage: s.entered for s in funnel.segments["ads"]}["pql"] == 1
    assert {s.stage: s.entered for s in funnel.segments["seo"]}["pql"] == 0


def test_readme_states_the_limits_the_code_enforces():
    from pathlib import Path

    from pqlsdk import limits

    text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    section = text[text.index("### Limits"):]
    assert f"1 to {limits.MAX_ID_LENGTH:,} characters" in section
    assert f"up to {limits.MAX_TEXT_LENGTH:,} characters" in section
    assert f"at most {limits.MAX_JSON_DEPTH} levels deep and {limits.MAX_JSON_BYTES // 1024} KiB" \
        in section
    assert limits.MAX_BOUND == 2**53 and "at most 2**53" in section
    assert f"{limits.MAX_DURATION.days:,} days" in section
    assert f"| {limits.MAX_RULE_DEPTH} levels |" in section


def test_error_messages_show_any_value_safely():
    """A message names what was given; a value with no repr must not raise instead."""
    from pqlsdk.limits import shown

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    assert shown(10**5000) == "an integer of about 5001 digits"
    assert shown([nested(5000)]) == "a list"
    assert shown(Broken()) == "a Broken"
    assert shown(list(range(100))) == "a list of 100 items"
    assert shown("x" * 500).endswith("...") and len(shown("x" * 500)) == 80


def test_funnel_by_an_integer_trait_name_reads_it_as_text(make_client):
    """Found by the fuzz campaign: ``by=0`` passed the check but reached SQL as an int."""
    client = make_client(RULES)
    client.identify("ada", {"0": "ads"}, timestamp=at(0))
    assert sorted(client.funnel(by=0).segments) == ["ads"]
