"""pqlsdk evaluate (cron, two hosts at once) and pqlsdk deliveries [--failed] [--retry]."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

import pqlsdk
from pqlsdk.cli import main

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES_TOML = """
[[rules]]
name = "quiet_after_reports"
stage = "mql"
  [[rules.all]]
  event = "report_generated"
  at_least = 1
  [[rules.all]]
  not = { event = "cancel_clicked", within = "1d" }
  [[rules.all]]
  trait = "plan"
  in = ["trial"]
"""


def _history(tmp_path, users):
    rules = tmp_path / "pql_rules.toml"
    rules.write_text(RULES_TOML)
    db = str(tmp_path / "pql.db")
    with pqlsdk.Client(db, str(rules), sync_mode=True) as client:
        for n in range(users):
            client.track(f"u{n}", "report_generated", timestamp=T0)
            client.track(f"u{n}", "cancel_clicked", timestamp=T0)
            client.identify(f"u{n}", {"plan": "trial"}, timestamp=T0)
        assert client.qualifications() == []  # the cancel is too recent
    return db, str(rules)


def test_two_evaluate_processes_at_once_qualify_each_subject_once(tmp_path):
    db, rules = _history(tmp_path, 300)
    hooks = tmp_path / "hooks.py"
    hooks.write_text(textwrap.dedent(f"""
        import os

        def notify(q):
            with open({str(tmp_path / 'notified.txt')!r}, "a") as out:
                out.write(f"{{os.getpid()}} {{q.subject_id}}\\n")
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    as_of = (T0 + timedelta(days=2)).isoformat()
    command = [sys.executable, "-m", "pqlsdk", "evaluate", "--db", db, "--rules", rules,
               "--as-of", as_of, "--callback", "hooks:notify", "--json",
               "--busy-timeout", "60"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    reported = [json.loads(out) for out, _ in outputs]
    found = [q["subject_id"] for r in reported for q in r["qualified"]]
    assert sorted(found) == sorted(f"u{n}" for n in range(300))  # between them, once each
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT subject_id) FROM "
                            "qualifications").fetchone() == (300, 300)
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    notified = (tmp_path / "notified.txt").read_text().split()[1::2]
    assert sorted(notified) == sorted(found)
    assert all(r["delivered"] for r in reported)


def test_evaluate_without_rules_is_bad_input(tmp_path):
    db, _ = _history(tmp_path, 1)
    result = CliRunner().invoke(main, ["evaluate", "--db", db])
    assert result.exit_code == 2
    assert "--rules" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--db", db, "--rules", "x.toml",
                                       "--callback", "nocolon"])
    assert result.exit_code == 2


def test_evaluate_prints_what_it_qualified(tmp_path):
    db, rules = _history(tmp_path, 2)
    result = CliRunner().invoke(main, ["evaluate", "--db", db, "--rules", rules,
                                       "--as-of", (T0 + timedelta(days=2)).isoformat()])
    assert result.exit_code == 0, result.output
    assert "2 new qualification(s)" in result.output
    assert "user u0: quiet_after_reports -> mql" in result.output
    again = CliRunner().invoke(main, ["evaluate", "--db", db, "--rules", rules])
    assert "0 new qualification(s)" in again.output


def boom(q):
    raise RuntimeError(f"crm refused {q.subject_id}")


def test_deliveries_lists_failed_rows_and_retries_them(tmp_path):
    db = str(tmp_path / "pql.db")
    rules = [pqlsdk.Rule("r", pqlsdk.event("report_generated", at_least=1), stage="mql")]
    with pqlsdk.Client(db, rules, on_qualified=boom, sync_mode=True, max_retries=1) as client:
        client.track("ada", "report_generated", timestamp=T0)
    result = CliRunner().invoke(main, ["deliveries", "--db", db, "--failed"])
    assert result.exit_code == 0, result.output
    assert "callback:tests.test_cli_ops.boom" in result.output
    assert "RuntimeError: crm refused ada" in result.output
    assert "failed" in result.output
    as_json = json.loads(CliRunner().invoke(main, ["deliveries", "--db", db, "--json"]).output)
    assert as_json["health"]["failed"] == 1
    [row] = as_json["deliveries"]
    assert row["status"] == "failed" and row["user_id"] == "ada"
    retried = CliRunner().invoke(main, ["deliveries", "--db", db, "--retry", "--json"])
    body = json.loads(retried.output)
    assert body["revived"] == 1
    assert body["health"]["failed"] == 0 and body["health"]["pending"] == 1
    after = CliRunner().invoke(main, ["deliveries", "--db", db, "--failed", "--json"])
    assert json.loads(after.output)["deliveries"] == []


def test_deliveries_on_a_missing_file_is_bad_input(tmp_path):
    result = CliRunner().invoke(main, ["deliveries", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2


def test_evaluate_forwards_what_it_found_to_segment(tmp_path, segment_server):
    db, rules = _history(tmp_path, 2)
    result = CliRunner().invoke(main, [
        "evaluate", "--db", db, "--rules", rules, "--json",
        "--as-of", (T0 + timedelta(days=2)).isoformat(),
        "--segment-write-key", "cron-key", "--segment-host", segment_server.url])
    assert result.exit_code == 0, result.output
    found = {q["id"] for q in json.loads(result.output)["qualified"]}
    assert len(found) == 2
    sent = {m["messageId"] for m in segment_server.messages if m.get("event") ==
            "Lead Qualified"}
    assert sent == found
    assert segment_server.batches[0]["body"]["writeKey"] == "cron-key"
