"""Import robustness, on both engines: a message is a duplicate exactly when its live call
would be (import = live), one line's failure stays with that line, and only the store's own
failure stops an import.

Each test compares an import with the same calls made live through ``Client`` on a database
of its own, or poisons one line with a constraint the database enforces.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk.importer import import_jsonl

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
RULES = {"rules": [
    {"name": "two", "all": [{"event": "r", "at_least": 2}]},
    {"name": "busy", "subject": "account", "all": [{"event": "r", "at_least": 3,
                                                    "within": "1h"}]},
    {"name": "pro", "all": [{"trait": "plan", "equals": "pro"}]},
    {"name": "seats", "subject": "account", "all": [{"trait": "seats", "gte": 3}]},
]}


def stamp(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def live_database(engine, request, tmp_path):
    """A second database of the test's engine, for the live run to compare with."""
    if engine == "sqlite":
        yield {"database": str(tmp_path / "live.db")}
        return
    url = request.getfixturevalue("pg_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield {"database": url, "schema": schema}
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def call(client: pqlsdk.Client, message: dict) -> None:
    """Make ``message``'s live call (a Segment-spec message, as the import reads it)."""
    kind, mid, at = message["type"], message.get("messageId"), message["timestamp"]
    if kind == "track":
        client.track(message["userId"], message["event"], message.get("properties"),
                     account_id=message.get("context", {}).get("groupId"), timestamp=at,
                     message_id=mid)
    elif kind == "identify":
        client.identify(message["userId"], message.get("traits"), timestamp=at,
                        message_id=mid, anonymous_id=message.get("anonymousId"))
    elif kind == "group":
        client.group(message["userId"], message["groupId"], message.get("traits"),
                     timestamp=at, message_id=mid)
    else:
        client.alias(message["previousId"], message["userId"], timestamp=at, message_id=mid)


def live(client: pqlsdk.Client, messages: list[dict]) -> set[int]:
    """Make each call in turn; the indexes of those that raised (pqlsdk's own errors)."""
    failed = set()
    for index, message in enumerate(messages):
        try:
            call(client, message)
        except pqlsdk.PqlError:
            failed.add(index)
    return failed


def outcome(client: pqlsdk.Client) -> tuple[list, list]:
    """The qualifications and the stored events, comparable across databases."""
    qualifications = sorted(
        (q.rule, q.subject_type, q.subject_id, q.user_id, q.qualified_at.isoformat())
        for q in client.qualifications())
    with client.store.read() as tx:
        rows = tx.rows("events", "ts IS NOT NULL", [])
    events = sorted(repr((r["tenant_key"], r["user_id"], r["account_id"], r["event"], r["ts"],
                          r["message_id"])) for r in rows)
    return qualifications, events


def write(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def import_equals_live(make_client, live_database, tmp_path, before: list[dict],
                       messages: list[dict]) -> pqlsdk.importer.ImportResult:
    """``before`` made live on two databases, then ``messages`` live on one and imported
    into the other (shuffled: the import replays in time order): the same qualifications,
    events, and failing messages. Returns the import's result."""
    expected_client = make_client(RULES, **live_database)
    live(expected_client, before)
    failed = live(expected_client, messages)
    expected = outcome(expected_client)
    client = make_client(RULES)
    live(client, before)
    order = list(range(len(messages)))
    random.Random(7).shuffle(order)
    source = write(tmp_path / "h.jsonl", [json.dumps(messages[i]) for i in order])
    result = import_jsonl(client, source)
    assert outcome(client) == expected
    assert {order[number - 1] for number, _ in result.errors} == failed
    return result


# --- a message is a duplicate exactly when its live call would be ---------------------------


def test_a_track_from_an_aliased_id_naming_its_old_account_dedupes_as_live(
        make_client, live_database, tmp_path):
    """The event of ``anon1`` (in account a1) was stored live, then ``anon1`` was linked to
    ``u1`` of account a0. Importing that track again met the message id in a1 (where the
    track puts its event) though the dedupe looked in u1's tenant: on PostgreSQL the unique
    violation was retried as contention and stopped the import with StoreBusy."""
    before = [
        {"type": "track", "userId": "u1", "event": "r", "context": {"groupId": "a0"},
         "timestamp": stamp(0), "messageId": "m0"},
        {"type": "track", "userId": "anon1", "event": "r", "context": {"groupId": "a1"},
         "timestamp": stamp(1), "messageId": "m1"},
        {"type": "alias", "previousId": "anon1", "userId": "u1", "timestamp": stamp(2),
         "messageId": "m2"},
    ]
    messages = [before[1],
                {"type": "track", "userId": "u1", "event": "r", "timestamp": stamp(3),
                 "messageId": "m3"},
                {"type": "track", "userId": "u2", "event": "r", "context": {"groupId": "a1"},
                 "timestamp": stamp(4), "messageId": "m4"}]
    result = import_equals_live(make_client, live_database, tmp_path, before, messages)
    assert (result.applied, result.duplicates, result.errors) == (2, 1, ())


def test_a_message_id_another_user_of_the_account_stored_is_a_duplicate_as_live(
        make_client, live_database, tmp_path):
    """A message id is unique in its tenant: live, a second user's track with an id the
    account holds is a duplicate. The import checked it per user, so the bulk insert met
    the unique key (a line error on SQLite, the whole import stopped on PostgreSQL)."""
    messages = [
        {"type": "track", "userId": "u1", "event": "r", "context": {"groupId": "a1"},
         "timestamp": stamp(0), "messageId": "m1"},
        {"type": "track", "userId": "u2", "event": "r", "context": {"groupId": "a1"},
         "timestamp": stamp(1), "messageId": "m1"},
        {"type": "track", "userId": "u2", "event": "r", "timestamp": stamp(2),
         "messageId": "m2"},
    ]
    result = import_equals_live(make_client, live_database, tmp_path, [], messages)
    assert (result.applied, result.duplicates, result.errors) == (2, 1, ())


@pytest.mark.parametrize("first", ["identify", "track"])
def test_a_message_id_reused_by_another_kind_of_call_is_applied_as_live(
        make_client, live_database, tmp_path, first):
    """A track and an identify/group/alias do not share message ids live (a track's is
    its event's, a call's is remembered under its user): the import skipped the second
    because it kept both kinds in one dedupe."""
    identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
                "timestamp": stamp(0), "messageId": "m1"}
    track = {"type": "track", "userId": "u1", "event": "r", "timestamp": stamp(1),
             "messageId": "m1"}
    tracks = [{"type": "track", "userId": "u1", "event": "r", "timestamp": stamp(2),
               "messageId": "m2"}]
    if first == "track":
        identify["timestamp"], track["timestamp"] = stamp(1), stamp(0)
    messages = [identify, track, *tracks]
    result = import_equals_live(make_client, live_database, tmp_path, [], messages)
    assert (result.applied, result.duplicates, result.errors) == (3, 0, ())
    assert {q.rule for q in make_client(RULES).qualifications()} == {"two", "pro"}


def test_a_calls_message_id_follows_its_user_through_an_alias_as_live(
        make_client, live_database, tmp_path):
    """Live, an alias takes the message ids remembered under the previous id to the user:
    a later call of the user with one of them is a duplicate, in the same batch too."""
    messages = [
        {"type": "identify", "userId": "anon1", "traits": {"plan": "free"},
         "timestamp": stamp(0), "messageId": "m1"},
        {"type": "alias", "previousId": "anon1", "userId": "u1", "timestamp": stamp(1),
         "messageId": "m2"},
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
         "timestamp": stamp(2), "messageId": "m1"},
    ]
    result = import_equals_live(make_client, live_database, tmp_path, [], messages)
    assert (result.applied, result.duplicates, result.errors) == (2, 1, ())


@pytest.mark.parametrize("second", ["identify", "group"])
def test_another_users_call_reusing_a_message_id_is_applied_live_on_both_engines(
        make_client, second):
    """A call's message id is unique per user (as a track's is per tenant): on SQLite the
    key of ``import_done`` was the message id alone, so u2's identify (or group) reusing
    u1's id was silently dropped, while PostgreSQL applied it."""
    client = make_client(RULES)
    client.identify("u1", {"plan": "pro"}, message_id="x")
    if second == "identify":
        client.identify("u2", {"plan": "pro"}, message_id="x")
    else:
        client.group("u2", "acct", {"seats": 5}, message_id="x")
    client.identify("u1", {"plan": "free"}, message_id="x")  # u1's own retry: a duplicate
    expected = {("pro", "u1"), ("pro", "u2") if second == "identify" else ("seats", "acct")}
    assert {(q.rule, q.subject_id) for q in client.qualifications()} == expected
    assert client.export("u1")["traits"]["plan"] == "pro"


def test_another_users_calls_reusing_a_message_id_import_as_live(
        make_client, live_database, tmp_path):
    """The cross-user case of the import = live comparison: identify, group and alias of
    other users reusing one id are each applied; the same user's second is a duplicate."""
    messages = [
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
         "timestamp": stamp(0), "messageId": "x"},
        {"type": "identify", "userId": "u2", "traits": {"plan": "pro"},
         "timestamp": stamp(1), "messageId": "x"},
        {"type": "group", "userId": "u3", "groupId": "acct", "traits": {"seats": 5},
         "timestamp": stamp(2), "messageId": "x"},
        {"type": "alias", "previousId": "anon9", "userId": "u4", "timestamp": stamp(3),
         "messageId": "x"},
        {"type": "identify", "userId": "u2", "traits": {"plan": "free"},
         "timestamp": stamp(4), "messageId": "x"},
    ]
    result = import_equals_live(make_client, live_database, tmp_path, [], messages)
    assert (result.applied, result.duplicates, result.errors) == (4, 1, ())
    assert {(q.rule, q.subject_id) for q in make_client(RULES).qualifications()} == {
        ("pro", "u1"), ("pro", "u2"), ("seats", "acct")}


@pytest.mark.sqlite_only
def test_a_file_of_the_previous_schema_keeps_its_call_ids_and_keys_them_per_user(
        tmp_path, monkeypatch):
    """The migration re-keys ``import_done`` by (tenant_key, message_id): the ids a file of
    the previous schema remembered still make their user's retry a duplicate, another
    user's call with the same id is applied, and the per-user index is kept."""
    import sqlite3

    from pqlsdk.store import sqlite as sqlite_store

    path = str(tmp_path / "old.db")
    with monkeypatch.context() as old:
        before = sqlite_store.MIGRATIONS.index(sqlite_store._call_ids_per_user)
        old.setattr(sqlite_store, "MIGRATIONS", sqlite_store.MIGRATIONS[:before])
        sqlite_store.Store(path).close()
    with sqlite3.connect(path) as conn:  # what the previous release wrote
        assert conn.execute("SELECT count(*) FROM pragma_table_info('import_done') "
                            "WHERE pk > 0").fetchone()[0] == 1
        conn.execute("INSERT INTO import_done (tenant_key, message_id, user_id) VALUES "
                     "('u1', 'x', 'u1'), ('u1', 'y', 'u1')")
    client = pqlsdk.Client(path, rules=RULES)
    try:
        client.identify("u1", {"plan": "pro"}, message_id="x")  # remembered: a duplicate
        client.identify("u2", {"plan": "pro"}, message_id="x")  # another user's: applied
        assert [q.subject_id for q in client.qualifications()] == ["u2"]
        with client.store.read() as tx:
            rows = sorted((r["tenant_key"], r["message_id"], r["user_id"])
                          for r in tx.rows("import_done", "1 = 1", []))
        assert rows == [("u1", "x", "u1"), ("u1", "y", "u1"), ("u2", "x", "u2")]
        client.forget("u1")  # finds the migrated rows through the kept index
        with client.store.read() as tx:
            assert [r["user_id"] for r in tx.rows("import_done", "1 = 1", [])] == ["u2"]
    finally:
        client.close()
    with sqlite3.connect(path) as conn:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(import_done)")}
        assert "import_done_user" in indexes


def test_after_a_forget_another_users_message_reusing_its_id_imports_as_live(
        make_client, live_database, tmp_path):
    """Forgotten ids were hashed by message id alone, so the import skipped any user's
    message reusing one of the forgotten user's ids; live applies it. Now the hash holds
    the user too (and the forgotten user's own messages stay out)."""
    before = [
        {"type": "track", "userId": "u1", "event": "r", "timestamp": stamp(0),
         "messageId": "m1"},
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
         "timestamp": stamp(1), "messageId": "m2"},
    ]
    messages = [
        {"type": "track", "userId": "u2", "event": "r", "timestamp": stamp(2),
         "messageId": "m1"},
        {"type": "track", "userId": "u2", "event": "r", "timestamp": stamp(3),
         "messageId": "m3"},
        {"type": "identify", "userId": "u2", "traits": {"plan": "pro"},
         "timestamp": stamp(4), "messageId": "m2"},
    ]
    expected_client = make_client(RULES, **live_database)
    live(expected_client, before)
    expected_client.forget("u1")
    live(expected_client, messages)
    client = make_client(RULES)
    live(client, before)
    client.forget("u1")
    path = write(tmp_path / "h.jsonl", [json.dumps(m) for m in [*before, *messages]])
    result = import_jsonl(client, path)
    assert outcome(client) == outcome(expected_client)
    assert (result.applied, result.duplicates, result.errors) == (3, 2, ())
    assert {q.subject_id for q in client.qualifications()} == {"u2"}


def test_a_forgotten_users_messages_sent_under_an_id_linked_to_it_stay_out(
        make_client, tmp_path):
    """forget(U) remembers each id under U and under every id linked to U (the links are
    erased): re-importing a line sent as the anonymous id brings nothing back."""
    client = make_client(RULES)
    lines = [
        {"type": "track", "userId": "anon1", "event": "r", "timestamp": stamp(0),
         "messageId": "m1"},
        {"type": "alias", "previousId": "anon1", "userId": "u1", "timestamp": stamp(1),
         "messageId": "m2"},
        {"type": "track", "userId": "u1", "event": "r", "timestamp": stamp(2),
         "messageId": "m3"},
    ]
    path = write(tmp_path / "h.jsonl", [json.dumps(m) for m in lines])
    assert import_jsonl(client, path).applied == 3
    client.forget("u1")
    again = write(tmp_path / "again.jsonl", [json.dumps(m) for m in lines])
    result = import_jsonl(client, again)
    assert (result.applied, result.duplicates) == (0, 3)
    assert outcome(client) == ([], [])


def test_an_id_forgotten_by_the_previous_release_still_keeps_its_messages_out(
        make_client, tmp_path, monkeypatch):
    """A forget of the previous release hashed the message id alone: still read, it keeps
    that id out for every user (as it did)."""
    client = make_client(RULES)
    client.track("u1", "r", timestamp=stamp(0), message_id="m1")
    transaction = type(client.store.transact(lambda tx: tx))
    hashed = transaction.forgotten_hash
    with monkeypatch.context() as old:
        old.setattr(transaction, "forgotten_hash",
                    lambda self, message_id, user_id=None: hashed(self, message_id))
        client.forget("u1")
    lines = [{"type": "track", "userId": user, "event": "r", "timestamp": stamp(n),
              "messageId": "m1"} for n, user in enumerate(["u1", "u2"])]
    result = import_jsonl(client, write(tmp_path / "h.jsonl", [json.dumps(m) for m in lines]))
    assert (result.applied, result.duplicates) == (0, 2)


# --- one line's failure stays with that line ---------------------------------------------


def poison(database: dict, kind: str) -> None:
    """Make the database refuse one kind of event insert: an ``event`` named ``poison`` (a
    check), or a second event of a tenant at the same microsecond (a unique key)."""
    if kind == "check" and "schema" not in database:
        sql = ("CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event = 'poison' "
               "BEGIN SELECT RAISE(ABORT, 'poisoned event'); END")
    elif kind == "check":
        sql = (f"ALTER TABLE {database['schema']}.events ADD CONSTRAINT poison "
               f"CHECK (event <> 'poison')")
    else:
        table = f"{database['schema']}.events" if "schema" in database else "events"
        sql = f"CREATE UNIQUE INDEX poison ON {table} (tenant_key, ts)"
    if "schema" in database:
        import psycopg

        with psycopg.connect(database["database"], autocommit=True) as conn:
            conn.execute(sql)
    else:
        import sqlite3

        with sqlite3.connect(database["database"]) as conn:
            conn.execute(sql)


@pytest.mark.parametrize("batch", [7, 20_000])
@pytest.mark.parametrize("kind", ["check", "unique"])
def test_a_line_the_database_refuses_is_reported_and_every_other_applied(
        make_client, database, tmp_path, monkeypatch, kind, batch):
    """On PostgreSQL a constraint violation was a StoreError (a unique key met again when
    retried, StoreBusy) and stopped the whole import; now it is that line's error (the
    batch split in halves until the line is alone), as on SQLite."""
    monkeypatch.setattr(pqlsdk.importer, "BATCH", batch)
    client = make_client(RULES)
    poison(database, kind)
    messages = [{"type": "track", "userId": f"u{n % 3}", "event": "r",
                 "context": {"groupId": "a1"} if n % 2 else {}, "timestamp": stamp(n),
                 "messageId": f"m{n}"} for n in range(40)]
    bad = {"type": "track", "userId": "u1", "event": "poison", "timestamp": stamp(23),
           "messageId": "bad"}
    if kind == "unique":  # u1 has an event at 23 minutes (it is m22's twin in time)
        bad = {**bad, "event": "p", "timestamp": stamp(22)}
    lines = [json.dumps(m) for m in messages]
    lines.insert(30, json.dumps(bad))
    result = import_jsonl(client, write(tmp_path / "h.jsonl", lines))
    assert [number for number, _ in result.errors] == [31]
    assert "the database refused this call's data" in result.errors[0][1]
    assert (result.applied, result.duplicates) == (40, 0)
    with client.store.read() as tx:
        stored = {row["message_id"] for row in tx.rows("events", "ts IS NOT NULL", [])}
    assert stored == {f"m{n}" for n in range(40)}


def test_dense_bad_lines_are_each_reported_once_without_halving_down_to_one(
        make_client, database, tmp_path, monkeypatch):
    """Every 10th line refused by the database: each good line is applied once and each
    bad one reported once, and a failing batch of at most 64 lines is applied a line per
    transaction, so the messages handed to transactions stay a few times the file (halving
    down to single lines handed each good message ~10 times)."""
    client = make_client(RULES)
    poison(database, "check")
    count = 640
    lines = [json.dumps({"type": "track", "userId": f"u{n % 7}",
                         "event": "poison" if n % 10 == 9 else "r",
                         "timestamp": stamp(n), "messageId": f"m{n}"}) for n in range(count)]
    handed = []
    apply = pqlsdk.importer._Import.apply

    def counting(self, tx, key, batch):
        handed.append(len(batch))
        return apply(self, tx, key, batch)

    monkeypatch.setattr(pqlsdk.importer._Import, "apply", counting)
    result = import_jsonl(client, write(tmp_path / "h.jsonl", lines))
    bad = [n + 1 for n in range(count) if n % 10 == 9]
    assert [number for number, _ in result.errors] == bad
    assert (result.applied, result.duplicates) == (count - len(bad), 0)
    with client.store.read() as tx:
        stored = sorted(row["message_id"] for row in tx.rows("events", "ts IS NOT NULL", []))
    assert stored == sorted(f"m{n}" for n in range(count) if n % 10 != 9)
    # 640 -> 320 -> 160 -> 80 -> 40 (each alone): 5 levels of 640, then 640 alone
    assert sum(handed) == 6 * count
    assert handed.count(1) == count


def test_a_rerun_counts_the_lines_refused_before_as_duplicates_as_documented(
        make_client, database, tmp_path):
    """``ImportResult.duplicates`` is every good line a run neither applied nor reported:
    a second run of the same file goes past the checkpoint, so the lines the database
    refused in the first run are counted there, not reported again, and nothing is
    applied twice."""
    client = make_client(RULES)
    poison(database, "check")
    lines = [json.dumps({"type": "track", "userId": "u1",
                         "event": "poison" if n in (2, 5, 8) else "r",
                         "timestamp": stamp(n), "messageId": f"m{n}"}) for n in range(10)]
    path = write(tmp_path / "h.jsonl", lines)
    first = import_jsonl(client, path)
    assert (first.applied, first.duplicates, [n for n, _ in first.errors]) == (7, 0, [3, 6, 9])
    second = import_jsonl(client, path)
    assert (second.applied, second.duplicates, second.errors) == (0, 10, ())
    assert len(outcome(client)[1]) == 7


def test_a_key_past_the_index_size_is_that_lines_error_not_the_server_gone(
        make_client, engine, tmp_path):
    """A user id of 1,024 four-byte characters passes the id limit (characters) but not a
    PostgreSQL index row (2,704 bytes): reported as 'server unreachable', it stopped the
    import; now StoreRejected, a line error. SQLite stores it."""
    client = make_client(RULES)
    rng = random.Random(1)
    long_id = "".join(chr(rng.randrange(0x1F300, 0x1FAFF)) for _ in range(1024))
    lines = [json.dumps({"type": "track", "userId": user, "event": "r",
                         "timestamp": stamp(n), "messageId": f"m{n}"})
             for n, user in enumerate(["u1", long_id, "u1"])]
    result = import_jsonl(client, write(tmp_path / "h.jsonl", lines))
    if engine == "sqlite":
        assert (result.applied, result.errors) == (3, ())
        return
    assert [number for number, _ in result.errors] == [2]
    assert "refused this call's data" in result.errors[0][1]
    assert result.applied == 2
    assert [q.user_id for q in client.qualifications()] == ["u1"]
    with pytest.raises(pqlsdk.StoreRejected):
        client.track(long_id, "r", timestamp=stamp(9))


def test_the_stores_own_failure_still_stops_the_import(make_client, tmp_path, monkeypatch):
    """Only what is the store's problem stops an import (the batches before it stay)."""
    monkeypatch.setattr(pqlsdk.importer, "BATCH", 5)
    client = make_client(RULES)
    insert_events = type(client.store.transact(lambda tx: tx)).insert_events
    calls = []

    def failing(tx, rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise pqlsdk.StoreUnavailable("the server went away")
        return insert_events(tx, rows)

    monkeypatch.setattr(type(client.store.transact(lambda tx: tx)), "insert_events", failing)
    lines = [json.dumps({"type": "track", "userId": "u1", "event": "r",
                         "timestamp": stamp(n), "messageId": f"m{n}"}) for n in range(20)]
    with pytest.raises(pqlsdk.StoreUnavailable):
        import_jsonl(client, write(tmp_path / "h.jsonl", lines))
    assert len(outcome(client)[1]) == 10


# --- a short fuzz: awkward lines in a good file ------------------------------------------

IDS = ["u0", "u1", "u2", "anon0", "anon1", "a0", "a1"]  # ids also used as accounts
GOOD = {"type": "track", "userId": "u0", "event": "r", "timestamp": stamp(1500),
        "messageId": "h"}
#: Lines that are bad whatever comes before them.
HOSTILE = [
    b'{"type": "track", "userId": "caf\xe9", "event": "r", "timestamp": "2026-06-02T00:00:00Z"}',
    json.dumps({**GOOD, "userId": "x\ud800"}).encode(),
    json.dumps(GOOD)[:-1].encode() + b', "properties": {"n": ' + b"9" * 5000 + b"}}",
    json.dumps(GOOD)[:-1].encode() + b', "properties": {"d": ' + b"[" * 5000 + b"]" * 5000
    + b"}}",
    json.dumps({**GOOD, "timestamp": "0001-01-01T00:00:00+01:00"}).encode(),
    b'{"type": "track", "userId": ',
    json.dumps({**GOOD, "userId": "x\u0000y"}).encode(),
    json.dumps({**GOOD, "properties": {"k": "a\u0000"}}).encode(),
    json.dumps({**GOOD, "userId": "u" * 5000}).encode(),
    json.dumps({**GOOD, "event": ""}).encode(),
    json.dumps({**GOOD, "properties": [1, 2]}).encode(),
    json.dumps({**GOOD, "context": {"groupId": "g\u0000"}}).encode(),
    json.dumps({**GOOD, "properties": {"f": 1e999}}).encode(),
    json.dumps({"type": "alias", "previousId": "p", "timestamp": stamp(1)}).encode(),
    json.dumps({"type": "group", "userId": "u0", "timestamp": stamp(1)}).encode(),
    json.dumps({"type": "identify", "userId": "u0", "traits": [1],
                "timestamp": stamp(1)}).encode(),
    json.dumps({"type": "stage", "userId": "u0", "stage": "nope",
                "timestamp": stamp(1)}).encode(),
    json.dumps({**GOOD, "timestamp": True}).encode(),
    b"[]", b"null", b'"text"',
]


def history(rng: random.Random, count: int, start: int) -> list[dict]:
    """Calls in strictly increasing time: tracks (some naming an account), identifies (some
    linking an anonymous id), groups and aliases among a few ids that are also accounts,
    message ids reused across users, kinds and accounts."""
    out = []
    minute = start
    for n in range(count):
        minute += rng.choice([1, 5, 15])
        message_id = rng.choice([f"m{start}-{n}"] * 3 + [f"m{start}-{rng.randrange(n + 1)}",
                                                         "shared"])
        user, roll = rng.choice(IDS), rng.random()
        if roll < 0.1:
            message = {"type": "alias", "previousId": rng.choice(IDS), "userId": user}
        elif roll < 0.2:
            message = {"type": "identify", "userId": user,
                       "traits": {"plan": rng.choice(["pro", "free"])}}
            if rng.random() < 0.3:
                message["anonymousId"] = rng.choice(IDS)
        elif roll < 0.3:
            message = {"type": "group", "userId": user, "groupId": rng.choice(IDS),
                       "traits": {"seats": rng.randrange(5)}}
        else:
            message = {"type": "track", "userId": user, "event": rng.choice("rrp"),
                       "properties": {}}
            if rng.random() < 0.4:
                message["context"] = {"groupId": rng.choice(IDS)}
        out.append({**message, "timestamp": stamp(minute), "messageId": message_id})
    return out


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_awkward_lines_stay_with_their_lines_and_the_rest_imports_as_live(
        make_client, live_database, tmp_path, monkeypatch, seed):
    """Random calls (links that fail, ids reused across users, kinds and accounts, users
    moving between accounts) after live ones, shuffled, with lines that are bad anyway
    mixed in: the import finishes, reports exactly the bad lines and the calls that fail
    live, and ends as the live calls do."""
    monkeypatch.setattr(pqlsdk.importer, "BATCH", 7)
    rng = random.Random(seed)
    before, messages = history(rng, 30, 0), history(rng, 100, 1000)
    expected_client = make_client(RULES, **live_database)
    live(expected_client, before)
    failed = live(expected_client, messages)
    client = make_client(RULES)
    live(client, before)
    order: list[int | None] = list(range(len(messages)))
    rng.shuffle(order)
    lines = [json.dumps(messages[i]).encode() for i in order if i is not None]
    for raw in rng.sample(HOSTILE, 8):
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, raw)
        order.insert(at, None)
    source = tmp_path / "h.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    result = import_jsonl(client, str(source))
    reported = {number for number, _ in result.errors}
    assert {n for n, i in enumerate(order, 1) if i is None} <= reported
    assert {order[n - 1] for n in reported if order[n - 1] is not None} == failed
    assert outcome(client) == outcome(expected_client)
