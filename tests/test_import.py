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
        json.dumps({"type": "batch", "userId": "u", "timestamp": "2026-09-01T00:00:00Z"}),
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
    assert result.skipped == {"batch": 1}  # page, screen and alias are imported (issue 20)
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


GOOD = {"type": "track", "userId": "ada", "event": "report_generated",
        "timestamp": "2026-09-01T00:00:00Z"}
#: The bad lines a fault campaign found stalled an import, as raw bytes, with the reason.
BAD_LINES = [
    (b'{"type": "track", "userId": "caf\xe9", "event": "x", '
     b'"timestamp": "2026-09-01T00:00:00Z"}', "not UTF-8 (byte 0xe9"),
    (json.dumps({**GOOD, "userId": "x\ud800"}).encode(), "surrogate"),
    (json.dumps(GOOD)[:-1].encode() + b', "properties": {"n": ' + b"9" * 5000 + b"}}",
     "number too long"),
    (json.dumps(GOOD)[:-1].encode() + b', "properties": {"deep": ' + b"[" * 5000
     + b"]" * 5000 + b"}}", "nested too deeply"),
    (json.dumps({**GOOD, "timestamp": "0001-01-01T00:00:00+01:00"}).encode(),
     "timestamp"),
    (b'{"type": "track", "userId": ', "not valid JSON"),
]


def write_bytes(path, lines: list[bytes]) -> str:
    with open(path, "wb") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    return str(path)


def history_lines(items) -> list[bytes]:
    return [json.dumps(item).encode() for item in items]


def test_every_kind_of_bad_line_is_reported_and_the_rest_imported(tmp_path):
    good = history_lines(HISTORY[:60])
    lines = good[:30] + [raw for raw, _ in BAD_LINES] + good[30:]
    source = write_bytes(tmp_path / "mixed.jsonl", lines)
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    result = import_jsonl(client, source)
    assert [number for number, _ in result.errors] == list(range(31, 31 + len(BAD_LINES)))
    for (number, reason), (_, expected) in zip(result.errors, BAD_LINES, strict=True):
        assert expected in reason, (number, reason)
    assert (result.read, result.applied) == (60 + len(BAD_LINES), 60)
    assert count_rows(client.store.path, "import_staging") == 0
    client.close()


def test_the_cli_reports_each_bad_line_and_exits_2(tmp_path):
    source = write_bytes(tmp_path / "mixed.jsonl",
                         history_lines(HISTORY[:5]) + [raw for raw, _ in BAD_LINES])
    db = str(tmp_path / "pql.db")
    done = subprocess.run([sys.executable, "-m", "pqlsdk", "import", source, "--db", db,
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for offset in range(len(BAD_LINES)):
        assert f"line {6 + offset}: " in done.stderr
    assert count_rows(db, "events") == sum(m["type"] == "track" for m in HISTORY[:5])


def test_a_bad_line_after_line_2000_leaves_nothing_staged_unreplayed(tmp_path, monkeypatch):
    # With the line check off, the lone surrogate reaches SQLite and fails its batch of
    # 2,000: the batch is staged again line by line, so only that line is left out.
    monkeypatch.setattr(pqlsdk.importer, "_text_check", lambda *values: None)
    lines = history_lines(HISTORY[:2500])
    lines.insert(2000, json.dumps({**GOOD, "userId": "x\ud800"}).encode())
    source = write_bytes(tmp_path / "h.jsonl", lines)
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    result = import_jsonl(client, source)
    assert [number for number, _ in result.errors] == [2001]
    assert "surrogate" in result.errors[0][1]
    assert result.applied == 2500
    assert count_rows(client.store.path, "import_staging") == 0
    client.close()


def test_a_message_that_fails_to_apply_is_reported_and_its_batch_still_lands(tmp_path,
                                                                             monkeypatch):
    source = write_jsonl(tmp_path / "h.jsonl", HISTORY[:300])
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    victim = HISTORY[150]
    replay = client.engine.replay

    def failing(tx, call, **options):
        if call.at == pqlsdk.timestamps.coerce(victim["timestamp"]):
            raise OverflowError("a value the store cannot hold")
        return replay(tx, call, **options)

    monkeypatch.setattr(client.engine, "replay", failing)
    result = import_jsonl(client, source)
    assert result.errors == ((151, "a value out of range (a value the store cannot hold), "
                                   "e.g. a timestamp past year 1 or 9999 in UTC"),)
    assert result.applied == 299
    assert count_rows(client.store.path, "import_staging") == 0
    client.close()


def test_a_gzipped_file_imports_like_the_plain_one(tmp_path, live):
    import gzip

    plain = write_jsonl(tmp_path / "h.jsonl", HISTORY)
    archive = tmp_path / "h.jsonl.gz"
    with open(plain, "rb") as src, gzip.open(archive, "wb") as dst:
        dst.write(src.read())
    unnamed = tmp_path / "segment-archive"  # known by its magic bytes, whatever its name
    unnamed.write_bytes(archive.read_bytes())
    for source in (archive, unnamed):
        client = pqlsdk.Client(str(tmp_path / f"{source.name}.db"), rules=RULES)
        result = import_jsonl(client, str(source))
        assert (result.read, result.applied, result.errors) == (4000, 4000, ())
        assert outcome(client) == live
        client.close()


def test_a_truncated_gzip_keeps_the_lines_before_the_damage(tmp_path):
    import gzip

    archive = tmp_path / "h.jsonl.gz"
    with gzip.open(archive, "wb") as dst:
        dst.write(b"".join(line + b"\n" for line in history_lines(HISTORY[:2000])))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    result = import_jsonl(client, str(archive))
    [(number, reason)] = result.errors
    assert "gzip stream is damaged or truncated" in reason
    assert 0 < result.applied < 2000
    assert number == result.read + 1
    client.close()


@pytest.mark.parametrize("kind", ["missing", "directory", "not gzip"])
def test_a_missing_or_unreadable_file_is_refused_before_any_database_is_made(tmp_path, kind):
    source = tmp_path / "export.jsonl.gz"
    if kind == "directory":
        source.mkdir()
    elif kind == "not gzip":
        source.write_text(json.dumps(GOOD) + "\n")
    db = tmp_path / "pql.db"
    done = subprocess.run([sys.executable, "-m", "pqlsdk", "import", str(source), "--db",
                           str(db)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert str(source) in done.stderr
    assert {"missing": "no such file", "directory": "is a directory",
            "not gzip": "not gzip"}[kind] in done.stderr
    assert not db.exists()


def test_gzip_on_stdin_is_read_too(tmp_path):
    import gzip

    data = gzip.compress(b"".join(line + b"\n" for line in history_lines(HISTORY[:50])))
    db = str(tmp_path / "pql.db")
    done = subprocess.run([sys.executable, "-m", "pqlsdk", "import", "-", "--db", db,
                           "--json"], input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 50
