"""The command line, through click's CliRunner and one real `python -m pqlsdk` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pqlsdk.cli import main

from .history import messages

RULES_TOML = """
[[rules]]
name = "reports"
stage = "mql"
  [[rules.all]]
  event = "report_generated"
  at_least = 2

[[rules]]
name = "crm"
description = "Connected a CRM"
  [[rules.all]]
  event = "integration_connected"
  where = { provider = ["salesforce"] }
  [[rules.all]]
  trait = "plan"
  in = ["trial"]

[scoring]
[[scoring.behavior]]
event = "report_generated"
points = 10
"""


@pytest.fixture
def files(tmp_path):
    rules = tmp_path / "pql_rules.toml"
    rules.write_text(RULES_TOML)
    events = tmp_path / "events.jsonl"
    lines = [
        {"type": "identify", "userId": "ada", "traits": {"plan": "trial",
                                                          "lead_source": "ads"},
         "timestamp": "2026-11-01T09:00:00Z", "messageId": "1"},
        {"type": "track", "userId": "ada", "event": "report_generated",
         "timestamp": "2026-11-01T10:00:00Z", "messageId": "2"},
        {"type": "track", "userId": "ada", "event": "report_generated",
         "timestamp": "2026-11-02T10:00:00Z", "messageId": "3"},
        {"type": "track", "userId": "bob", "event": "report_generated",
         "timestamp": "2026-11-02T11:00:00Z", "messageId": "4"},
        {"type": "page", "userId": "bob", "timestamp": "2026-11-02T11:00:00Z"},
    ]
    events.write_text("".join(json.dumps(line) + "\n" for line in reversed(lines)))
    return {"rules": str(rules), "events": str(events), "db": str(tmp_path / "pql.db")}


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_check_summarizes_a_good_file(files):
    result = run("check", files["rules"])
    assert result.exit_code == 0, result.output
    assert "2 rule(s) OK" in result.output
    assert "- crm (user -> pql): Connected a CRM" in result.output
    assert "events: integration_connected; traits: plan" in result.output
    data = json.loads(run("check", files["rules"], "--json").output)
    assert [r["name"] for r in data["rules"]] == ["reports", "crm"]


def test_check_names_file_rule_and_key_and_exits_2(files, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES_TOML.replace("at_least = 2", "at_least = -2"))
    result = run("check", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: rule 'reports': all[0].at_least: must be a whole number >= 0" in (
        result.output)


def test_import_then_status_qualifications_funnel_and_rules_report(files):
    db, rules = files["db"], files["rules"]
    imported = run("import", files["events"], "--db", db, "--rules", rules)
    assert imported.exit_code == 0, imported.output
    assert "read 5 line(s): applied 5, 0 already imported, 0 bad; " \
           "1 qualification(s)" in imported.output

    status = run("status", "ada", "--db", db, "--rules", rules)
    assert status.exit_code == 0, status.output
    assert "user ada: stage mql" in status.output
    assert "✓ reports: qualified 2026-11-02 10:00 UTC → mql" in status.output
    assert "score: 20" in status.output
    as_json = json.loads(run("status", "ada", "--db", db, "--rules", rules, "--json").output)
    assert as_json["stage"] == "mql" and as_json["score"]["behavior"] == 20

    listed = json.loads(run("qualifications", "--db", db, "--json").output)
    assert [(q["rule"], q["subject_id"]) for q in listed] == [("reports", "ada")]
    table = run("qualifications", "--db", db, "--rule", "reports").output
    assert "2026-11-02 10:00" in table and "ada" in table

    funnel = json.loads(run("funnel", "--db", db, "--by", "lead_source", "--json").output)
    assert [s["entered"] for s in funnel["stages"]][1:3] == [2, 1]
    assert sorted(funnel["segments"]) == ["(none)", "ads"]
    assert "conversion" in run("funnel", "--db", db).output

    outcomes = json.loads(run("rules-report", "--db", db, "--rules", rules, "--json").output)
    assert [(o["rule"], o["qualified"]) for o in outcomes] == [("reports", 1), ("crm", 0)]


def test_import_from_stdin_and_bad_lines_exit_2(files):
    good = Path(files["events"]).read_text()
    result = run("import", "-", "--db", files["db"], "--rules", files["rules"],
                 input=good + "{broken\n")
    assert result.exit_code == 2
    assert "line 6: not valid JSON" in result.output
    assert "applied 5" in result.output  # the page line too (issue 20)
    again = run("import", files["events"], "--db", files["db"], "--rules", files["rules"],
                "--json")
    assert json.loads(again.output)["applied"] == 0


def test_strict_import_stops_at_the_first_bad_line(files, tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text("{}\n" + Path(files["events"]).read_text())
    result = run("import", str(source), "--db", files["db"], "--rules", files["rules"],
                 "--strict")
    assert result.exit_code == 2
    assert "line 1: type is missing" in result.output


def test_reading_a_missing_database_or_unknown_user_exits_2(files):
    assert run("status", "ada", "--db", files["db"] + ".nope").exit_code == 2
    run("import", files["events"], "--db", files["db"], "--rules", files["rules"])
    missing = run("status", "zed", "--db", files["db"], "--rules", files["rules"])
    assert missing.exit_code == 2 and "no user 'zed' has been seen" in missing.output
    assert run("funnel", "--db", files["db"], "--since", "soon").exit_code == 2
    assert run("funnel", "--db", files["db"], "--subject", "team").exit_code == 2


def test_every_command_has_help_with_an_example():
    for command in ("check", "import", "status", "qualifications", "funnel",
                    "rules-report", "report"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.output and "pqlsdk " + command in result.output


def test_python_dash_m_pqlsdk_runs_as_a_real_process(files, tmp_path):
    source = tmp_path / "history.jsonl"
    source.write_text("".join(json.dumps(m) + "\n" for m in messages(300)))
    done = subprocess.run(
        [sys.executable, "-m", "pqlsdk", "import", str(source), "--db", files["db"],
         "--rules", files["rules"], "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 300
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    bad = subprocess.run([sys.executable, "-m", "pqlsdk", "check", "/nonexistent.toml"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such rules file" in bad.stderr


def test_the_progress_bar_passes_every_batch_through(capsys):
    from pqlsdk.cli import _progress

    assert list(_progress(range(0, 6000, 2000), 6000)) == [0, 2000, 4000]
    assert "replaying" in capsys.readouterr().err


def test_imported_qualifications_reach_segment_only_with_deliver(files, segment_server, tmp_path):
    quiet = run("import", files["events"], "--db", files["db"], "--rules", files["rules"],
                "--segment-write-key", "k", "--segment-host", segment_server.url)
    assert quiet.exit_code == 0 and segment_server.messages == []
    assert run("import", files["events"], "--db", str(tmp_path / "other.db"), "--rules",
               files["rules"], "--deliver").exit_code == 2  # no write key

    delivered = run("import", files["events"], "--db", str(tmp_path / "sent.db"), "--rules",
                    files["rules"], "--deliver", "--segment-write-key", "k",
                    "--segment-host", segment_server.url)
    assert delivered.exit_code == 0, delivered.output
    track, identify = segment_server.messages
    assert (track["event"], track["userId"], track["properties"]["rule"]) == (
        "Lead Qualified", "ada", "reports")
    assert track["timestamp"] == "2026-11-02T10:00:00.000+00:00"
    assert identify["traits"] == {"lifecycle_stage": "mql"}
