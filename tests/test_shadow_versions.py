"""Shadow rules (recorded live, never moving a stage nor delivered) and rule versions."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

import pqlsdk
from pqlsdk import store
from pqlsdk.cli import main
from pqlsdk.qualifier import qualification_id
from pqlsdk.rules import load_rules, rule_version

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)


def rules(shadow: bool, at_least: int = 2, description: str = "") -> dict:
    rule = {"name": "engaged", "stage": "mql", "description": description,
            "all": [{"event": "report_generated", "at_least": at_least, "within": "7d"}]}
    if shadow:
        rule["shadow"] = True
    return {"rules": [rule]}


def test_a_shadow_qualification_moves_no_stage_and_reaches_no_one(make_client,
                                                                   segment_server,
                                                                   segment_client):
    seen = []
    client = make_client(rules(shadow=True), on_qualified=seen.append, segment=segment_client,
                         sync_mode=True)
    assert client.track("ada", "report_generated", timestamp=T0) == []
    assert client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=1)) == []
    client.flush()
    assert seen == [] and segment_server.messages == []
    assert client.status("ada").stage == "lead"
    assert client.qualifications() == []
    (shadow,) = client.qualifications(shadow=True)
    assert shadow.shadow and shadow.rule == "engaged"
    assert shadow.qualified_at == T0 + timedelta(hours=1)
    assert shadow.rule_version == client.rules.rules[0].version
    assert shadow.id == qualification_id("engaged", "user", "ada", shadow=True)
    assert shadow.id != qualification_id("engaged", "user", "ada")
    assert [h.to_stage for h in client.history("ada")] == ["lead"]
    assert client.deliveries() == []
    (row,) = client.rule_report()
    assert (row.rule, row.shadow, row.qualified) == ("engaged", True, 1)
    # evaluate() and more events do not record it twice
    client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=2))
    client.evaluate(as_of=T0 + timedelta(hours=3))
    assert len(client.qualifications(shadow=True)) == 1


def test_removing_shadow_qualifies_live_on_the_next_event_once(make_client, segment_server,
                                                               segment_client):
    client = make_client(rules(shadow=True), sync_mode=True)
    for hour in range(2):
        client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=hour))
        client.track("bob", "report_generated", timestamp=T0 + timedelta(hours=hour))
    client.close()
    seen = []
    promoted = make_client(rules(shadow=False), on_qualified=seen.append,
                           segment=segment_client, sync_mode=True)
    (live,) = promoted.track("ada", "report_generated", timestamp=T0 + timedelta(hours=3))
    assert not live.shadow and live.id == qualification_id("engaged", "user", "ada")
    assert promoted.status("ada").stage == "mql"
    assert [q.subject_id for q in seen] == ["ada"]
    assert promoted.track("ada", "report_generated", timestamp=T0 + timedelta(hours=4)) == []
    # bob meets it when evaluate() looks, once
    found = promoted.evaluate(as_of=T0 + timedelta(hours=5))
    assert [q.subject_id for q in found] == ["bob"]
    assert promoted.evaluate(as_of=T0 + timedelta(hours=6)) == []
    promoted.flush()
    assert sorted(q.subject_id for q in seen) == ["ada", "bob"]
    sent = [m for m in segment_server.messages if m.get("event") == "Lead Qualified"]
    assert len(sent) == 2
    report = {(o.rule, o.shadow): o.qualified for o in promoted.rule_report()}
    assert report == {("engaged", False): 2, ("engaged", True): 2}


def test_the_version_follows_the_definition_not_the_description_nor_shadow():
    base = load_rules(rules(shadow=False)).rules[0]
    assert load_rules(rules(shadow=False)).rules[0].version == base.version  # a restart
    assert load_rules(rules(shadow=False, description="new words")).rules[0].version == \
        base.version
    assert load_rules(rules(shadow=True)).rules[0].version == base.version
    assert load_rules(rules(shadow=False, at_least=3)).rules[0].version != base.version
    same = pqlsdk.Rule("other", pqlsdk.event("report_generated", at_least=2.0, within="1w"),
                       stage="mql")
    assert rule_version(same) == base.version  # 2 == 2.0, 1w == 7d, a group of one
    moved = pqlsdk.Rule("engaged", pqlsdk.event("report_generated", at_least=2, within="7d"),
                        stage="sql")
    assert moved.version != base.version


def test_versions_split_the_rule_report_and_the_cli_shows_the_change(make_client, db_path,
                                                                     tmp_path):
    client = make_client(rules(shadow=False))
    client.track("ada", "report_generated", timestamp=T0)
    client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=1))
    client.close()
    edited = make_client(rules(shadow=False, at_least=1))
    edited.track("bob", "report_generated", timestamp=T0 + timedelta(days=2))
    (row,) = edited.rule_report()
    assert [(v.qualified, v.first) for v in row.versions] == [
        (1, T0 + timedelta(hours=1)), (1, T0 + timedelta(days=2))]
    assert row.versions[1].version == edited.rules.rules[0].version
    edited.close()
    path = tmp_path / "rules.toml"
    path.write_text('[[rules]]\nname = "engaged"\nstage = "mql"\n[[rules.all]]\n'
                    'event = "report_generated"\nat_least = 1\nwithin = "7d"\n')
    out = CliRunner().invoke(main, ["rules-report", "--db", db_path, "--rules", str(path)])
    assert out.exit_code == 0, out.output
    assert f"version {row.versions[0].version}" in out.output
    assert "2026-10-03 to 2026-10-03" in out.output


def test_the_migration_keeps_older_qualifications(db_path):
    conn = sqlite3.connect(db_path)
    db = store.connect(db_path, 5)
    for migration in store.MIGRATIONS[:4]:
        migration(db)
    db.execute("INSERT INTO qualifications (id, rule, stage, subject_type, subject_id, "
               "user_id, qualified_at, evidence) VALUES ('q1', 'old', 'pql', 'user', 'u1', "
               "'u1', 1, '{\"label\": \"x\", \"value\": 1, \"bound\": \"\", \"met\": true}')")
    db.conn.execute("PRAGMA user_version = 4")
    db.conn.close()
    conn.close()
    client = pqlsdk.Client(db_path)
    (old,) = client.qualifications()
    assert (old.id, old.rule_version, old.shadow) == ("q1", None, False)
    version = client.store.db.conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == len(store.MIGRATIONS)
    client.close()


def test_the_version_is_the_same_in_another_process():
    import os
    import subprocess
    import sys

    code = ("import pqlsdk; print(pqlsdk.load_rules({'rules': [{'name': 'engaged', "
            "'stage': 'mql', 'all': [{'event': 'report_generated', 'at_least': 2, "
            "'within': '7d', 'where': {'plan': ['a', 'b']}}]}]}).rules[0].version)")
    versions = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout.strip()
        for seed in ("1", "2", "3")
    }
    here = load_rules({"rules": [{"name": "engaged", "stage": "mql", "all": [
        {"event": "report_generated", "at_least": 2, "within": "7d",
         "where": {"plan": ["a", "b"]}}]}]}).rules[0].version
    assert versions == {here}
