"""Import: replay = live on a shuffled file, idempotence, resume, bad lines."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

import pqlsdk
from pqlsdk.importer import import_jsonl

from .conftest import count_rows
from .history import RULES, apply_live, messages, outcome

HISTORY = messages(4000)


def write_jsonl(path, items, extra_lines=()):
    with open(path, "w") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")
    return str(path)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("live") / "live.db")
    client = pqlsdk.Client(path, rules=RULES)
    apply_live(client, HISTORY)
    result = outcome(client)
    client.close()
    assert len(result[0]) > 50, "the history should qualify plenty of subjects"
    return result


def test_replay_of_a_shuffled_file_equals_live(tmp_path, live):
    shuffled = HISTORY[:]
    random.Random(3).shuffle(shuffled)
    source = write_jsonl(tmp_path / "history.jsonl", shuffled)
    client = pqlsdk.Client(str(tmp_path / "replay.db"), rules=RULES)
    result = import_jsonl(client, source)
    assert (result.read, result.applied, result.errors) == (4000, 4000, ())
    assert outcome(client) == live
    client.close()


def test_reimporting_the_same_file_adds_nothing(tmp_path):
    source = write_jsonl(tmp_path / "history.jsonl", HISTORY[:800])
    db = str(tmp_path / "pql.db")
    client = pqlsdk.Client(db, rules=RULES)
    first = import_jsonl(client, source)
    before = outcome(client), count_rows(db, "events")
    again = import_jsonl(client, source)
    assert (again.applied, again.duplicates, again.qualifications) == (0, 800, 0)
    assert (outcome(client), count_rows(db, "events")) == before
    assert first.qualifications == len(client.qualifications())
    client.close()


def test_messages_without_message_id_are_deduplicated_by_content(tmp_path):
    plain = [{k: v for k, v in m.items() if k != "messageId"} for m in HISTORY[:200]]
    source = write_jsonl(tmp_path / "plain.jsonl", plain)
    db = str(tmp_path / "pql.db")
    client = pqlsdk.Client(db, rules=RULES)
    import_jsonl(client, source)
    events = count_rows(db, "events")
    assert import_jsonl(client, source).applied == 0
    assert count_rows(db, "events") == events
    client.close()


def test_an_interrupted_import_resumes_to_the_same_result(tmp_path, live):
    source = write_jsonl(tmp_path / "history.jsonl", HISTORY)
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)

    def ctrl_c_after_one_batch(batches, total):
        for number, batch in enumerate(batches):
            if number == 1:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        import_jsonl(client, source, progress=ctrl_c_after_one_batch)
    assert 0 < count_rows(client.store.path, "events") < 4000
    import_jsonl(client, source)
    assert outcome(client) == live
    client.close()


def test_a_killed_import_resumes_to_the_same_result(tmp_path, live):
    source = write_jsonl(tmp_path / "history.jsonl", HISTORY)
    db = str(tmp_path / "pql.db")
    script = textwrap.dedent(f"""
        import os, signal
        import pqlsdk
        from pqlsdk.importer import import_jsonl
        from tests.history import RULES

        def die_after_one_batch(batches, total):
            for number, batch in enumerate(batches):
                if number == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield batch

        client = pqlsdk.Client({db!r}, rules=RULES)
        import_jsonl(client, {source!r}, progress=die_after_one_batch)
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert 0 < count_rows(db, "events") < 4000
    client = pqlsdk.Client(db, rules=RULES)
    import_jsonl(client, source)
    assert outcome(client) == live
    client.close()


def test_bad_lines_are_reported_and_good_lines_land(tmp_path):
    good = HISTORY[:50]
    source = write_jsonl(tmp_path / "mixed.jsonl", good[:25], [
        "{not json",
        json.dumps({"type": "track", "event": "x", "timestamp": "2026-09-01T00:00:00Z"}),
        json.dumps({"type": "track", "userId": "u", "event": "x", "timestamp": "someday"}),
        json.dumps({"type": "page", "userId": "u", "timestamp": "2026-09-01T00:00:00Z"}),
        json.dumps({"type": "group", "userId": "u", "timestamp": "2026-09-01T00:00:00Z"}),
        json.dumps({"type": "track", "userId": "u", "event": "x",
                    "timestamp": "2026-09-01T00:00:00Z", "properties": [1]}),
    ])
    with open(source, "a") as handle:
        for item in good[25:]:
            handle.write(json.dumps(item) + "\n")
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    result = import_jsonl(client, source)
    assert [number for number, _ in result.errors] == [26, 27, 28, 30, 31]
    reasons = dict(result.errors)
    assert "not valid JSON" in reasons[26]
    assert "userId or anonymousId is required" in reasons[27]
    assert "timestamp must be a datetime or an ISO-8601 string" in reasons[28]
    assert "groupId is required" in reasons[30]
    assert "properties must be a dict" in reasons[31]
    assert result.skipped == {"page": 1}
    assert result.applied == 50
    with pytest.raises(pqlsdk.importer.ImportStopped, match="line 26: not valid JSON"):
        import_jsonl(pqlsdk.Client(str(tmp_path / "strict.db"), rules=RULES), source,
                     strict=True)
    client.close()


def test_anonymous_id_stands_in_for_a_missing_user_id(tmp_path):
    source = write_jsonl(tmp_path / "anon.jsonl", [
        {"type": "track", "anonymousId": "anon-1", "event": "report_generated",
         "timestamp": "2026-09-01T00:00:00Z"}])
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    import_jsonl(client, source)
    assert client.status("anon-1").stage == "lead"
    client.close()


def test_import_restores_the_connections_settings(tmp_path):
    source = write_jsonl(tmp_path / "h.jsonl", HISTORY[:100])
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    conn = client.store.db.conn
    before = [conn.execute(f"PRAGMA {p}").fetchone()[0]
              for p in ("cache_size", "wal_autocheckpoint")]
    import_jsonl(client, source)
    assert [conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("cache_size", "wal_autocheckpoint")] == before
    client.close()
