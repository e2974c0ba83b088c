"""Import: replay = live on a shuffled file, idempotence, resume, bad lines."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

import pqlsdk
from pqlsdk.importer import import_jsonl

from .conftest import count_rows
from .history import RULES, apply_live, messages, outcome, tied_messages

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


def test_replay_of_a_shuffled_file_equals_live(tmp_path, live, make_client, monkeypatch):
    shuffled = HISTORY[:]
    random.Random(3).shuffle(shuffled)
    source = write_jsonl(tmp_path / "history.jsonl", shuffled)
    client = make_client(RULES)
    monkeypatch.setattr(pqlsdk.importer, "CHUNK", 700)  # six runs spilled and merged
    result = import_jsonl(client, source)
    assert (result.read, result.applied, result.errors) == (4000, 4000, ())
    assert outcome(client) == live


def test_replay_with_timestamps_shared_by_one_user_equals_live(tmp_path, make_client):
    # Six users, 40% of messages at the same instant as the one before: a user's or an
    # account's later event at the same microsecond must not count for the earlier one.
    rules = {**RULES, "rules": [*RULES["rules"], {"name": "reads_quietly", "all": [
        {"event": "report_generated", "at_least": 3},
        {"event": "page_viewed", "at_most": 4}]}]}
    history = tied_messages(1500)
    live = pqlsdk.Client(str(tmp_path / "live.db"), rules=rules)
    apply_live(live, history)
    expected = outcome(live)
    live.close()
    assert len(expected[0]) > 10
    source = write_jsonl(tmp_path / "history.jsonl", history)
    client = make_client(rules)
    result = import_jsonl(client, source)
    assert (result.applied, result.errors) == (1500, ())
    assert outcome(client) == expected


def test_replay_of_a_file_in_time_order_equals_live(tmp_path, live, make_client):
    ordered = sorted(HISTORY, key=lambda m: pqlsdk.timestamps.coerce(m["timestamp"]))
    source = write_jsonl(tmp_path / "history.jsonl", ordered)
    client = make_client(RULES)
    result = import_jsonl(client, source)
    assert (result.read, result.applied, result.errors) == (4000, 4000, ())
    assert outcome(client) == live


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


def test_an_interrupted_import_resumes_to_the_same_result(tmp_path, live, monkeypatch):
    monkeypatch.setattr(pqlsdk.importer, "BATCH", 2000)  # two batches
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

        pqlsdk.importer.BATCH = 2000  # two batches
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
    victim = pqlsdk.timestamps.to_micros(pqlsdk.timestamps.coerce(HISTORY[150]["timestamp"]))
    insert_events = type(client.store._tx).insert_events

    def failing(tx, rows):
        if any(row[5] == victim for row in rows):  # (tenant, id, user, account, event, ts)
            raise OverflowError("a value the store cannot hold")
        return insert_events(tx, rows)

    monkeypatch.setattr(type(client.store._tx), "insert_events", failing)
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


def test_tracks_that_move_users_between_accounts_land_where_live_puts_them(tmp_path,
                                                                           make_client):
    """A track naming another account moves its user (and the user's stored events) to that
    account's tenant mid-batch: the events of the batch before it go along, as live."""
    history = []
    for n, message in enumerate(messages(1200, seed=5)):
        if message["type"] == "track" and n % 7 == 0:  # the user's account at the time
            message = {**message, "context": {"groupId": f"acct-{n % 3}"}}
        history.append(message)

    def placed(client):
        with client.store.read() as tx:
            rows = tx.rows("events", "user_id IS NOT NULL", [])
        return sorted((r["tenant_key"], r["user_id"], r["account_id"] or "", r["message_id"])
                      for r in rows)

    live = pqlsdk.Client(str(tmp_path / "live.db"), rules=RULES)
    for m in history:
        if m["type"] == "track":
            live.track(m["userId"], m["event"], m["properties"], timestamp=m["timestamp"],
                       message_id=m["messageId"],
                       account_id=m.get("context", {}).get("groupId"))
        else:
            apply_live(live, [m])
    expected = outcome(live), placed(live)
    live.close()
    moved = {(t, u) for t, u, _, _ in expected[1] if t != u}
    assert len(moved) > 10 and len(expected[0][0]) > 10  # users moved and qualified
    client = make_client(RULES)
    result = import_jsonl(client, write_jsonl(tmp_path / "h.jsonl", history))
    assert (result.applied, result.errors) == (1200, ())
    assert (outcome(client), placed(client)) == expected


LIFE_RULES = [
    # re-arms: each firing its own qualification, counting only events after the last one
    pqlsdk.Rule("active_again", pqlsdk.event("report_generated", at_least=3, within="7d"),
                stage="mql", rearm="3d"),
    pqlsdk.Rule("pricing_reader", pqlsdk.event("page", where={"name": "Pricing"},
                                               at_least=2), stage="mql"),
    pqlsdk.Rule("mobile", pqlsdk.event("screen", at_least=1)),
    # holds on a subject first seen: checked when the import creates one
    pqlsdk.Rule("no_plan_yet", pqlsdk.trait("plan", exists=False)),
    pqlsdk.Rule("new_account", pqlsdk.trait("name", exists=False), subject="account"),
]


def life_history(count: int, seed: int = 9) -> list[dict]:
    """Issue 20's lines mixed in: anonymous tracks and pages, identify linking an anonymous
    id, alias, page/screen, CRM stage lines, tracks naming accounts; time order unique."""
    rng = random.Random(seed)
    at = pqlsdk.timestamps.coerce("2026-09-01T00:00:00Z")
    out = []
    for n in range(count):
        at += timedelta(seconds=rng.randrange(60, 7200))
        k = rng.randrange(16)  # an anonymous id belongs to one user (linked to no other)
        user, anon = f"u{k % 12}", f"anon-{k}"
        stamp = at.isoformat().replace("+00:00", "Z")
        roll = rng.random()
        if roll < 0.05:
            message = {"type": "identify", "userId": user, "anonymousId": anon,
                       "traits": {"plan": rng.choice(["free", "trial"])}}
        elif roll < 0.08:
            message = {"type": "alias", "previousId": anon, "userId": user}
        elif roll < 0.10:
            message = {"type": "stage", "userId": user,
                       "stage": rng.choice(["unqualified", "lead", "sql"]), "reason": "crm"}
        elif roll < 0.30:
            message = {"type": rng.choice(["page", "screen"]),
                       rng.choice(["userId", "anonymousId"]): rng.choice([user, anon]),
                       "name": rng.choice(["Pricing", "Docs"])}
        else:
            message = {"type": "track", "event": "report_generated",
                       rng.choice(["userId", "anonymousId"]): rng.choice([user, anon])}
            if rng.random() < 0.2:
                message["context"] = {"groupId": f"acct-{rng.randrange(3)}"}
        message.update({"timestamp": stamp, "messageId": f"life-{n}"})
        out.append(message)
    return out


def test_issue_20_lines_replay_in_bulk_as_each_call_alone(tmp_path, make_client, database,
                                                          monkeypatch):
    """Anonymous ids, alias, identify linking ids, page/screen, stage lines, re-arming and
    first-seen rules: the bulk path's result equals applying each track alone through
    Engine.replay (the live call's code), message by message."""
    source = write_jsonl(tmp_path / "life.jsonl", life_history(1500))
    bulk_client = make_client(LIFE_RULES)
    result = import_jsonl(bulk_client, source)
    assert (result.applied, result.errors) == (1500, ())
    got = outcome(bulk_client), firings(bulk_client)

    def one_by_one(engine, tx, tracks, deliver=False):
        outcome_ = pqlsdk.engine.Outcome()
        for t in tracks:
            call = pqlsdk.calls.Call("track", t.user_id, pqlsdk.timestamps.from_micros(t.ts),
                                     t.account_id, t.event, {}, t.properties, t.message_id)
            outcome_ = outcome_.merge(engine.replay(tx, call, deliver=deliver))
        return outcome_

    monkeypatch.setattr(pqlsdk.engine.Engine, "replay_tracks", one_by_one)
    if "schema" in database:  # a second schema on the same server, dropped after
        alone = make_client(LIFE_RULES, schema=database["schema"] + "_alone")
    else:
        alone = make_client(LIFE_RULES, database=str(tmp_path / "alone.db"))
    try:
        assert import_jsonl(alone, source).applied == 1500
        expected = outcome(alone), firings(alone)
    finally:
        alone.close()
        if "schema" in database:
            import psycopg

            with psycopg.connect(database["database"], autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {database['schema']}_alone CASCADE")
    rules = {q[0] for q in expected[0][0]}
    assert {"active_again", "pricing_reader", "mobile", "no_plan_yet",
            "new_account"} <= rules, rules
    assert max(f for _, f in expected[1]) >= 1  # a rule re-armed and fired again
    assert got == expected


def firings(client) -> list[tuple[str, int]]:
    with client.store.read() as tx:
        rows = tx.rows("qualifications", "shadow = 0", [])
    return sorted((r["subject_id"] + "/" + r["rule"], r["firing"]) for r in rows)
