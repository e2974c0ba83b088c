"""Forget means forgotten (no import brings a user back, no byte of it stays on disk), and
export gives a person their data."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk.cli import main
from pqlsdk.importer import import_jsonl

from .conftest import count_rows

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
EMAIL = "ursula.private@acme.example"
RULES = [pqlsdk.Rule("engaged", pqlsdk.event("report_generated", at_least=2), stage="mql")]


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def history(users=("ursula", "bob", "carol"), per_user=40) -> list[dict]:
    out = []
    for n in range(per_user):
        for user in users:
            out.append({"type": "track", "userId": user, "event": "report_generated",
                        "properties": {"by": f"{user}.private@acme.example", "n": n},
                        "timestamp": at(n), "messageId": f"{user}-{n}"})
    out += [{"type": "identify", "userId": user, "traits": {"email": f"{user}.private@acme"
                                                            f".example"},
             "timestamp": at(0), "messageId": f"id-{user}"} for user in users]
    return out


def write_jsonl(path, items) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def footprint(client_or_path, user: str) -> dict[str, int]:
    """Rows about ``user`` in every table of the file."""
    path = client_or_path if isinstance(client_or_path, str) else client_or_path.store.path
    found = {}
    with sqlite3.connect(path) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            rows = [row for row in conn.execute(f"SELECT * FROM {table}")
                    if any(user in str(value) for value in row)]
            if rows:
                found[table] = len(rows)
    return found


def test_forget_then_reimporting_the_same_file_does_not_bring_the_user_back(tmp_path):
    source = write_jsonl(tmp_path / "h.jsonl", history())
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)
    import_jsonl(client, source)
    assert client.status("ursula").stage == "mql"
    client.forget("ursula")
    assert footprint(client, "ursula") == {}
    again = import_jsonl(client, source)
    assert again.applied == 0
    assert footprint(client, "ursula") == {}
    with pytest.raises(pqlsdk.UnknownSubject):
        client.status("ursula")
    assert client.status("bob").stage == "mql"  # the others stay as they were
    assert count_rows(client.store.path, "events") == 80
    # the ids are remembered by keyed hashes only, not in the clear
    assert count_rows(client.store.path, "forgotten") == 41
    client.close()


def test_a_stopped_import_keeps_nothing_and_a_forgotten_user_stays_out_of_other_files(
        tmp_path):
    source = write_jsonl(tmp_path / "h.jsonl", history())
    client = pqlsdk.Client(str(tmp_path / "pql.db"), rules=RULES)

    def stop_before_replay(batches, total):
        raise KeyboardInterrupt
        yield  # pragma: no cover - a generator that stops at once

    with pytest.raises(KeyboardInterrupt):
        import_jsonl(client, source, progress=stop_before_replay)
    # the sorted runs were temporary files: nothing of a line not yet applied is kept
    assert footprint(client, "ursula") == {}
    assert import_jsonl(client, source).applied == 123
    client.forget("ursula")
    assert footprint(client, "ursula") == {}
    # another file holding the same messages and more: only the new user's land
    other = write_jsonl(tmp_path / "other.jsonl",
                        history() + history(users=("dave",), per_user=3))
    result = import_jsonl(client, other)
    assert (result.applied, result.duplicates) == (4, 123)
    assert footprint(client, "ursula") == {}
    assert client.status("bob").stage == "mql"
    client.close()


def copies(path: str, needle: bytes) -> dict[str, int]:
    found = {}
    for suffix in ("", "-wal"):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as handle:
                found[suffix or "db"] = handle.read().count(needle)
    return found


def fill(client) -> None:
    """Enough of ursula (and of others) to span pages, overflow pages and the WAL."""
    client.identify("ursula", {"email": EMAIL, "bio": EMAIL * 200}, timestamp=T0)
    for n in range(400):
        for user in ("ursula", "bob"):
            email = EMAIL if user == "ursula" else "bob@acme.example"
            client.track(user, "report_generated", {"by": email, "n": n},
                         timestamp=T0 + timedelta(seconds=n), message_id=f"{user}-{n}")


def test_no_byte_of_a_forgotten_user_is_left_in_the_file_or_its_wal(tmp_path, monkeypatch):
    # as if this SQLite build left secure_delete off (some turn it on by default): every new
    # connection starts with it off, so only pqlsdk's own setting can turn it on
    connect = sqlite3.connect

    def build_default_off(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", build_default_off)
    assert sqlite3.connect(":memory:").execute("PRAGMA secure_delete").fetchone()[0] == 0
    path = str(tmp_path / "pql.db")
    client = pqlsdk.Client(path, rules=RULES)
    fill(client)
    assert copies(path, EMAIL.encode())["-wal"] > 400
    client.forget("ursula")
    assert copies(path, EMAIL.encode()) == {"db": 0, "-wal": 0}  # the client still open
    client.track("bob", "report_generated", timestamp=T0)  # and it goes on working
    client.close()
    assert copies(path, EMAIL.encode()) == {"db": 0}
    assert count_rows(path, "events") == 401


def test_plain_deletes_would_leave_the_user_on_disk(tmp_path):
    """The control for the test above: its byte search finds what deletes leave."""
    path = str(tmp_path / "pql.db")
    client = pqlsdk.Client(path, rules=RULES)
    fill(client)
    client.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA secure_delete = OFF")
    conn.execute("DELETE FROM events WHERE user_id = 'ursula'")
    conn.execute("DELETE FROM users WHERE user_id = 'ursula'")
    assert sum(copies(path, EMAIL.encode()).values()) > 0
    conn.close()


def test_export_gives_everything_about_the_user(make_client):
    client = make_client(RULES)
    client.identify("ada", {"plan": "trial"}, account_id="acme", timestamp=at(0))
    client.track("ada", "report_generated", {"n": 1}, timestamp=at(1), message_id="m1")
    client.track("ada", "report_generated", {"n": 2}, timestamp=at(2))
    client.track("bob", "report_generated", timestamp=at(3))
    data = client.export("ada")
    assert data["user_id"] == "ada"
    assert data["account_id"] == "acme"
    assert data["traits"] == {"plan": "trial"}
    assert [(e["event"], e["properties"]) for e in data["events"]] == [
        ("report_generated", {"n": 1}), ("report_generated", {"n": 2})]
    assert data["events"][0]["message_id"] == "m1"
    assert [(s["from_stage"], s["to_stage"], s["source"]) for s in data["stages"]] == [
        (None, "lead", "first_seen"), ("lead", "mql", "rule:engaged")]
    assert [q["rule"] for q in data["qualifications"]] == ["engaged"]
    json.dumps(data)  # JSON-ready
    with pytest.raises(pqlsdk.UnknownSubject):
        client.export("nobody")


def test_export_gives_what_the_lifecycle_keeps_and_answers_for_a_linked_id(make_client):
    """An access request gets every kind of row ``forget`` erases: the ids linked to the
    user, its trait history, the context its calls carried, its hand-offs; asked by an id
    linked to the user, it gives that user's data."""
    client = make_client(RULES)
    client.track("anon-7", "report_generated", context={"ip": "10.0.0.9"},
                 timestamp=at(0))
    client.identify("ada", {"plan": "trial"}, anonymous_id="anon-7",
                    context={"ip": "10.0.0.1"}, timestamp=at(1))
    client.identify("ada", {"plan": "pro"}, timestamp=at(2))
    client.track("ada", "report_generated", timestamp=at(3))  # engaged: a hand-off
    data = client.export("anon-7")
    assert data["user_id"] == "ada"
    assert [link["id"] for link in data["linked_ids"]] == ["anon-7"]
    assert [(t["trait"], t["value"]) for t in data["trait_history"]] == [
        ("plan", "trial"), ("plan", "pro")]
    assert {"kind": "identify", "context": {"ip": "10.0.0.1"}}.items() <= (
        data["contexts"][0].items())
    assert [e.get("context") for e in data["events"]] == [{"ip": "10.0.0.9"}, None]
    assert [h["rule"] for h in data["handoffs"]] == ["engaged"]
    assert data == client.export("ada")
    json.dumps(data)


def test_cli_export_then_forget(tmp_path):
    db = str(tmp_path / "pql.db")
    client = pqlsdk.Client(db, rules=RULES)
    client.identify("ada", {"email": "ada@example.com"}, timestamp=at(0))
    client.track("ada", "report_generated", timestamp=at(1))
    client.close()
    runner = CliRunner()
    exported = runner.invoke(main, ["export", "ada", "--db", db, "--busy-timeout", "2"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["traits"] == {"email": "ada@example.com"}
    forgotten = runner.invoke(main, ["forget", "ada", "--db", db])
    assert forgotten.exit_code == 0, forgotten.output
    assert footprint(db, "ada") == {}
    missing = runner.invoke(main, ["export", "ada", "--db", db])
    assert missing.exit_code == 2
    assert "no user 'ada'" in missing.output
