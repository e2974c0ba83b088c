"""The command line on the file itself: doctor, --busy-timeout, storage errors as messages."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from click.testing import CliRunner

from pqlsdk.cli import main

from .test_store_file import RULES, T0, build, pages_holding


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_doctor_says_ok_and_reports_size_and_growth(tmp_path):
    db = str(tmp_path / "pql.db")
    build(db)
    result = run("doctor", "--db", db)
    assert result.exit_code == 0, result.output
    assert f"{db}: ok" in result.output
    assert "events: 3,101" in result.output
    assert "bytes a day" in result.output
    data = json.loads(run("doctor", "--db", db, "--json").output)
    assert data["ok"] is True
    assert data["usage"]["events"] == 3101
    assert data["usage"]["bytes"] > 0


def test_doctor_finds_damage_and_says_how_to_recover(tmp_path):
    db = str(tmp_path / "pql.db")
    build(db)
    page_size, leaves = pages_holding(db, 0x0A, b"m-ada")
    with open(db, "r+b") as handle:  # a damage no read notices: only the full check does
        handle.seek(leaves[-1] * page_size + 3)
        handle.write((5).to_bytes(2, "big"))
    result = run("doctor", "--db", db)
    assert result.exit_code == 1
    assert "DAMAGED" in result.output
    assert ".recover" in result.output


def test_doctor_on_a_file_that_is_not_a_database_and_on_none(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n" * 100)
    result = run("doctor", "--db", str(notes))
    assert result.exit_code == 1
    assert "not a SQLite database" in result.output
    missing = run("doctor", "--db", str(tmp_path / "none.db"))
    assert missing.exit_code == 2
    assert not (tmp_path / "none.db").exists()


def test_busy_timeout_on_the_command_line_against_a_held_lock(tmp_path):
    db = str(tmp_path / "pql.db")
    import pqlsdk

    client = pqlsdk.Client(db, rules=RULES)
    client.track("ada", "report_generated", timestamp=T0)
    client.close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        reading = subprocess.run(
            [sys.executable, "-m", "pqlsdk", "qualifications", "--db", db, "--json",
             "--busy-timeout", "0.2"], capture_output=True, text=True, timeout=60)
        assert reading.returncode == 0, reading.stderr  # opening takes no write lock
        writing = subprocess.run(
            [sys.executable, "-m", "pqlsdk", "forget", "ada", "--db", db,
             "--busy-timeout", "0.2"], capture_output=True, text=True, timeout=60)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert writing.returncode == 1
    last = writing.stderr.strip().splitlines()[-1]  # a message, not a traceback
    assert last.startswith(f"Error: {db}: another connection held the write lock for more "
                           f"than 0.2 s"), writing.stderr
    assert "--busy-timeout" in last


def test_every_command_that_opens_the_database_takes_busy_timeout():
    for name, command in main.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        if "--db" in options:
            assert "--busy-timeout" in options, name
