"""Import answers a segment's event conditions from memory (pqlsdk/batchfacts.py): replay
must still equal live exactly, evidence included, at window edges, for events of one subject
at one microsecond, where-filters, distinct, sums, counts without a window, re-arming rules,
account moves and batches that split anywhere."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pqlsdk
from pqlsdk import batchfacts
from pqlsdk.importer import import_jsonl

START = datetime(2026, 6, 1, tzinfo=timezone.utc)
STEP = timedelta(minutes=15)  # windows are whole steps: events land on their edges

RULES = {"rules": [
    {"name": "hourly", "all": [{"event": "r", "at_least": 3, "within": "1h"}]},
    {"name": "total", "stage": "mql", "all": [{"event": "r", "at_least": 6}]},
    {"name": "quiet", "all": [{"event": "r", "at_least": 2},
                              {"event": "p", "at_most": 1, "within": "30m"}]},
    {"name": "picky", "all": [{"event": "i", "where": {"provider": ["a"]}, "at_least": 2,
                               "within": "2h"}]},
    {"name": "spread", "all": [{"event": "i", "distinct": "provider", "at_least": 2,
                                "within": "45m"}]},
    {"name": "summed", "all": [{"event": "i", "sum": "n", "at_least": 5, "within": "1h"}]},
    {"name": "wide", "all": [{"event": "i", "where": {"provider": ["b"]}, "at_least": 2}]},
    {"name": "again", "rearm": "30m", "all": [{"event": "r", "at_least": 2, "within": "30m"}]},
    {"name": "cooled", "every": "1h", "all": [{"event": "p", "at_least": 2, "within": "1h"}]},
    {"name": "busy", "subject": "account", "all": [{"event": "r", "at_least": 4,
                                                    "within": "45m"}]},
    {"name": "crowd", "subject": "account", "all": [{"event": "i", "distinct": "provider",
                                                     "at_least": 3, "within": "1h"}]},
]}


def history(rng: random.Random, count: int) -> list[dict]:
    """Messages in time order on a 15-minute grid (a third at the same instant as the one
    before), three users, two accounts, now and then a group call that moves a user."""
    out = []
    step = 0
    for n in range(count):
        step += rng.choice([0, 0, 1, 1, 2, 4])
        user = f"u{rng.randrange(3)}"
        stamp = (START + step * STEP).isoformat().replace("+00:00", "Z")
        if rng.random() < 0.05:
            out.append({"type": "group", "userId": user, "groupId": f"a{rng.randrange(2)}",
                        "traits": {}, "timestamp": stamp, "messageId": f"m{n}"})
            continue
        event = rng.choice(["r", "r", "p", "i"])
        properties = ({"provider": rng.choice("abc"), "n": rng.choice([1, 2, 3, None])}
                      if event == "i" else {})
        message = {"type": "track", "userId": user, "event": event, "properties": properties,
                   "timestamp": stamp, "messageId": f"m{n}"}
        if rng.random() < 0.3:
            message["context"] = {"groupId": f"a{rng.randrange(2)}"}
        out.append(message)
    return out


def apply_live(client: pqlsdk.Client, messages: list[dict]) -> None:
    for m in messages:
        if m["type"] == "group":
            client.group(m["userId"], m["groupId"], m["traits"], timestamp=m["timestamp"])
        else:
            client.track(m["userId"], m["event"], m["properties"],
                         account_id=m.get("context", {}).get("groupId"),
                         timestamp=m["timestamp"], message_id=m["messageId"])


def outcome(client: pqlsdk.Client) -> tuple:
    """Qualifications with their evidence (the measured values), stage moves, stages."""
    qualifications = sorted((q.rule, q.subject_type, q.subject_id, q.user_id,
                             q.qualified_at.isoformat(),
                             json.dumps(q.evidence.to_dict(), sort_keys=True))
                            for q in client.qualifications())
    with client.store.read() as tx:
        changes = tx.rows("stage_changes", "subject_id IS NOT NULL", [])
    moves = sorted(((r["subject_type"], r["subject_id"], r["from_stage"], r["to_stage"],
                     r["at"], r["source"]) for r in changes), key=repr)
    return qualifications, moves


def write(path, messages: list[dict]) -> str:
    with open(path, "w") as handle:
        for message in messages:
            handle.write(json.dumps(message) + "\n")
    return str(path)


def check(tmp_path, make_live, make_import, messages: list[dict], batch: int,
          monkeypatch) -> tuple:
    live = make_live()
    apply_live(live, messages)
    expected = outcome(live)
    live.close()
    monkeypatch.setattr(pqlsdk.importer, "BATCH", batch)
    client = make_import()
    result = import_jsonl(client, write(tmp_path / "history.jsonl", messages))
    assert (result.applied, result.errors) == (len(messages), ())
    got = outcome(client)
    assert got == expected
    return expected


@pytest.mark.parametrize("batch", [5, 64, 2000])
def test_segments_answered_from_memory_equal_live(tmp_path, make_client, monkeypatch, batch):
    messages = history(random.Random(11), 600)
    expected = check(tmp_path, lambda: pqlsdk.Client(str(tmp_path / "live.db"), rules=RULES),
                     lambda: make_client(RULES), messages, batch, monkeypatch)
    rules = {q[0] for q in expected[0]}
    assert {"hourly", "total", "quiet", "picky", "spread", "summed", "wide", "again",
            "cooled", "busy", "crowd"} <= rules, rules  # every kind of condition was decided


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), count=st.integers(20, 160), batch=st.integers(1, 40))
def test_any_history_and_batch_size_replays_as_live(tmp_path_factory, monkeypatch, seed,
                                                   count, batch):
    folder = tmp_path_factory.mktemp("segments")
    check(folder, lambda: pqlsdk.Client(str(folder / "live.db"), rules=RULES),
          lambda: pqlsdk.Client(str(folder / "import.db"), rules=RULES),
          history(random.Random(seed), count), batch, monkeypatch)


def test_the_memory_path_answers_the_conditions(tmp_path, monkeypatch):
    # the in-memory path is the one taken (not a silent fall back to SQL for everything)
    asked: list[str] = []
    answer = batchfacts.BatchFacts.measure

    def counting(self, condition, limit):
        asked.append(condition.event)
        return answer(self, condition, limit)

    sql: list[str] = []
    fallback = pqlsdk.facts.SubjectFacts.measure

    def counting_sql(self, condition, limit):
        sql.append(condition.event)
        return fallback(self, condition, limit)

    monkeypatch.setattr(batchfacts.BatchFacts, "measure", counting)
    monkeypatch.setattr(pqlsdk.facts.SubjectFacts, "measure", counting_sql)
    client = pqlsdk.Client(str(tmp_path / "import.db"), rules=RULES)
    import_jsonl(client, write(tmp_path / "h.jsonl", history(random.Random(2), 300)))
    assert len(asked) > 100
    # only the where-filter without a window ("wide") and re-armed checks read SQL
    assert len(sql) < len(asked) / 2, (len(sql), len(asked))


def test_a_subject_with_more_stored_events_than_the_read_limit_is_checked_by_sql(
        tmp_path, make_client, monkeypatch):
    """A busy subject (more stored events in its window than a segment reads into memory)
    is checked by SQL instead, with the same result as live."""
    monkeypatch.setattr(batchfacts, "READ_LIMIT", 3)
    asked: list[bool] = []
    stored = batchfacts.SegmentEvents.stored

    def counting(self, subject, event, span):
        found = stored(self, subject, event, span)
        asked.append(found.complete)
        return found

    monkeypatch.setattr(batchfacts.SegmentEvents, "stored", counting)
    check(tmp_path, lambda: pqlsdk.Client(str(tmp_path / "live.db"), rules=RULES),
          lambda: make_client(RULES), history(random.Random(11), 600), 64, monkeypatch)
    assert False in asked and True in asked  # both ways were taken
