"""The command line of issue 12: import of stage changes, backtest, suggest, the HTML page."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from datetime import timedelta

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk.cli import main
from pqlsdk.html_report import INTERVAL, LEAD_BAR

from .test_html_report import CHROMIUM, needs_chromium
from .truth import T0, generate

RULES_TOML = """
[[rules]]
name = "burst"
stage = "mql"
  [[rules.all]]
  event = "report_generated"
  at_least = 5
  within = "7d"

[[rules]]
name = "pages"
shadow = true
  [[rules.all]]
  event = "page_viewed"
  at_least = 2
"""


def iso(at) -> str:
    return at.isoformat().replace("+00:00", "Z")


def history_lines(history: dict) -> list[dict]:
    lines = []
    for user, h in history.items():
        lines += [{"type": "track", "userId": user, "event": "report_generated",
                   "timestamp": iso(at), "messageId": f"{user}-r{k}"}
                  for k, at in enumerate(h["reports"])]
        lines += [{"type": "track", "userId": user, "event": "page_viewed",
                   "timestamp": iso(at), "messageId": f"{user}-p{k}"}
                  for k, at in enumerate(h["pages"])]
        if h["converted"] is not None:
            lines.append({"type": "stage", "userId": user, "stage": "customer",
                          "reason": "closed won", "timestamp": iso(h["converted"]),
                          "messageId": f"{user}-won"})
    return lines


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rules = folder / "pql_rules.toml"
    rules.write_text(RULES_TOML)
    source = folder / "history.jsonl"
    history = generate(120)
    source.write_text("\n".join(json.dumps(m) for m in history_lines(history)) + "\n")
    db = str(folder / "pql.db")
    result = CliRunner().invoke(main, ["import", str(source), "--db", db, "--rules",
                                       str(rules), "--json"])
    assert result.exit_code == 0, result.output
    return db, str(rules), str(source), history


def test_import_takes_stage_changes_idempotently(imported):
    db, rules, source, history = imported
    converters = {u for u, h in history.items() if h["converted"] is not None}
    again = CliRunner().invoke(main, ["import", source, "--db", db, "--rules", rules,
                                      "--json"])
    assert json.loads(again.output)["applied"] == 0
    with pqlsdk.Client(db) as client:
        user = sorted(converters)[0]
        moves = [(h.to_stage, h.source, h.reason) for h in client.history(user)]
        assert ("customer", "import", "closed won") in moves
        assert sum(1 for m in moves if m[0] == "customer") == 1
        assert client.funnel().stage("customer").entered == len(converters)


def test_import_creates_accounts_and_refuses_bad_stage_lines(tmp_path):
    source = tmp_path / "crm.jsonl"
    source.write_text("\n".join([
        json.dumps({"type": "stage", "groupId": "acme", "stage": "opportunity",
                    "timestamp": "2026-10-01T00:00:00Z", "reason": "demo booked"}),
        json.dumps({"type": "stage", "userId": "ada", "stage": "paying",
                    "timestamp": "2026-10-01T00:00:00Z"}),
        json.dumps({"type": "stage", "userId": "ada", "groupId": "acme", "stage": "sql",
                    "timestamp": "2026-10-01T00:00:00Z"}),
    ]) + "\n")
    db = str(tmp_path / "pql.db")
    result = CliRunner().invoke(main, ["import", str(source), "--db", db])
    assert result.exit_code == 2
    assert "line 2: stage must be one of" in result.output
    assert "line 3: a stage message needs exactly one of userId or groupId" in result.output
    with pqlsdk.Client(db) as client:
        assert [(h.to_stage, h.source) for h in client.history(account_id="acme")] == [
            ("lead", "first_seen"), ("opportunity", "import")]


def test_stage_lines_meet_the_same_edge_checks_as_the_api(tmp_path):
    at = "2026-10-01T00:00:00Z"
    source = tmp_path / "crm.jsonl"
    source.write_text("\n".join(json.dumps(m) for m in [
        {"type": "stage", "userId": "a\u0000b", "stage": "sql", "timestamp": at},
        {"type": "stage", "userId": "x" * 5000, "stage": "sql", "timestamp": at},
        {"type": "stage", "userId": "ada", "stage": "sql", "timestamp": at,
         "reason": "r\u0000"},
        {"type": "stage", "userId": "ada", "stage": "sql", "timestamp": at,
         "messageId": "m\u0000"},
        {"type": "stage", "userId": "ada", "stage": "sql", "timestamp": at,
         "reason": "budget approved", "messageId": "crm-1"},
    ]) + "\n")
    db = str(tmp_path / "pql.db")
    result = CliRunner().invoke(main, ["import", str(source), "--db", db])
    assert result.exit_code == 2
    for line, name in ((1, "user_id"), (2, "user_id"), (3, "reason"), (4, "messageId")):
        assert re.search(rf"line {line}: {name}\b", result.output), result.output
    with pqlsdk.Client(db) as client:  # only the good line was imported, and it is reachable
        assert [(h.to_stage, h.reason) for h in client.history("ada")] == [
            ("lead", None), ("sql", "budget approved")]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT user_id FROM users").fetchall() == [("ada",)]


def test_backtest_prints_a_table_and_json(imported):
    db, rules, _, _ = imported
    table = CliRunner().invoke(main, ["backtest", rules, "--db", db, "--until",
                                      iso(T0 + timedelta(days=150))])
    assert table.exit_code == 0, table.output
    assert re.search(r"^burst\s+[0-9a-f]{12}\s+\d+\s+\d+\s+\d+\.\d%", table.output, re.M)
    assert "pages (shadow)" in table.output
    as_json = CliRunner().invoke(main, ["backtest", rules, "--db", db, "--json", "--until",
                                        iso(T0 + timedelta(days=150))])
    data = json.loads(as_json.output)
    with pqlsdk.Client(db) as client:
        direct = client.backtest(rules, until=T0 + timedelta(days=150))
    assert data == json.loads(json.dumps(direct.to_dict()))
    assert data["rules"][0]["converted"] > 0


def test_backtest_against_current_and_bad_options(imported, tmp_path):
    db, rules, _, _ = imported
    looser = tmp_path / "looser.toml"
    looser.write_text(RULES_TOML.replace("at_least = 5", "at_least = 3"))
    out = CliRunner().invoke(main, ["backtest", str(looser), "--db", db, "--rules", rules,
                                    "--against", "current", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["added"] and data["dropped"] == []
    bad = CliRunner().invoke(main, ["backtest", rules, "--db", db, "--outcome", "paying"])
    assert bad.exit_code == 2 and "outcome must be" in bad.output
    alone = CliRunner().invoke(main, ["backtest", str(looser), "--db", db, "--against",
                                      "current"])
    assert alone.exit_code == 2


def test_suggest_prints_paste_ready_toml(imported):
    db, _, _, _ = imported
    out = CliRunner().invoke(main, ["suggest", "--db", db, "--min-support", "10", "--top", "3",
                                    "--until", iso(T0 + timedelta(days=150))])
    assert out.exit_code == 0, out.output
    assert out.output.count("[[rules]]") == 3 and "# 1. lift " in out.output
    as_json = CliRunner().invoke(main, ["suggest", "--db", db, "--json", "--top", "2"])
    assert len(json.loads(as_json.output)) <= 2


@pytest.fixture(scope="module")
def page(imported, tmp_path_factory):
    db, rules, _, _ = imported
    out = tmp_path_factory.mktemp("page") / "backtest.html"
    result = CliRunner().invoke(main, ["backtest", rules, "--db", db, "--html", str(out),
                                       "--until", iso(T0 + timedelta(days=150))])
    assert result.exit_code == 0, result.output
    return out


def test_the_backtest_page_is_self_contained(page, imported, tmp_path):
    html = page.read_text()
    assert re.search(r"<(script|link)\b", html) is None
    assert "http://" not in html and "https://" not in html
    assert '<table id="backtest">' in html and '<table id="suggestions">' in html
    assert html.count('class="interval"') == 2 and 'class="lead-bar"' in html
    db, rules, _, _ = imported
    report = tmp_path / "report.html"
    done = CliRunner().invoke(main, ["report", "--db", db, "--rules", rules, "--html",
                                     str(report)])
    assert done.exit_code == 0, done.output
    assert '<svg id="precision"' in report.read_text()


@needs_chromium
def test_chromium_renders_the_backtest(page, imported, tmp_path):
    from PIL import Image

    assert CHROMIUM is not None, "CI must install chromium"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1000,1600"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    db, rules, _, _ = imported
    with pqlsdk.Client(db) as client:
        burst = client.backtest(rules, until=T0 + timedelta(days=150)).rule("burst")
    flat = dom.stdout.replace("\n", "")
    assert (f"<td>burst</td><td>{burst.version}</td><td>{burst.qualified}</td>"
            f"<td>{burst.converted}</td><td>{burst.precision:.1%}</td>") in flat
    shot = tmp_path / "backtest.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    by_color = {rgb: n for n, rgb in Image.open(shot).convert("RGB").getcolors(1 << 20)}
    interval = tuple(int(INTERVAL[i:i + 2], 16) for i in (1, 3, 5))
    lead = tuple(int(LEAD_BAR[i:i + 2], 16) for i in (1, 3, 5))
    assert by_color.get(interval, 0) > 500, "the precision intervals were not painted"
    assert by_color.get(lead, 0) > 2_000, "the lead-time histogram was not painted"
    assert os.path.getsize(shot) > 0
