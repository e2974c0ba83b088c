"""Issue 20 item 7: sales' reasons as data (``set_stage(criteria=...)``, rejections by
criterion in ``rule_report``) and ``purge`` of old disqualified users (SPEC §11)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

import pqlsdk
from pqlsdk import event
from pqlsdk.cli import main
from pqlsdk.importer import import_jsonl

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("team", event("teammate_invited"), stage="pql")]


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def test_criteria_are_kept_beside_the_reason_and_counted_per_rule(make_client, tmp_path):
    client = make_client(RULES)
    for user in ("ada", "bob", "cy", "dee"):
        client.track(user, "teammate_invited", timestamp=day(0))
    change = client.set_stage("ada", stage="unqualified", reason="no budget",
                              criteria={"budget": False, "authority": True},
                              timestamp=day(1))
    assert change.criteria == {"budget": False, "authority": True}
    client.set_stage("bob", stage="disqualified", reason="student",
                     criteria={"budget": False, "need": False}, timestamp=day(1))
    client.set_stage("cy", stage="sql", criteria={"budget": True}, timestamp=day(1))
    path = tmp_path / "crm.jsonl"
    path.write_text(json.dumps({"type": "stage", "userId": "dee", "stage": "unqualified",
                                "reason": "timing", "criteria": {"timing": False},
                                "timestamp": day(2).isoformat(), "messageId": "s1"}) + "\n")
    import_jsonl(client, str(path))
    assert client.history("ada")[-1].criteria == {"budget": False, "authority": True}
    assert client.history("dee")[-1].criteria == {"timing": False}
    assert client.history("cy")[-1].criteria == {"budget": True}
    [team] = client.rule_report()
    # three rejections; budget False in two, need and timing in one each; an accepted
    # lead's criteria are not rejections
    assert team.rejected_by == {"budget": 2, "need": 1, "timing": 1}
    assert team.to_dict()["rejected_by"]["budget"] == 2
    assert client.export("ada")["stages"][-1]["criteria"] == {"budget": False,
                                                               "authority": True}
    with pytest.raises(pqlsdk.ValidationError, match="criteria must be a dict"):
        client.set_stage("ada", stage="lead", criteria=["budget"])


def test_purge_is_a_dry_run_unless_asked_and_forgets_like_forget(make_client):
    client = make_client(RULES)
    for user in ("old", "recent", "back"):
        client.track(user, "teammate_invited", timestamp=day(0))
    client.set_stage("old", stage="disqualified", timestamp=day(1))
    client.set_stage("recent", stage="disqualified", timestamp=day(100))
    client.set_stage("back", stage="disqualified", timestamp=day(1))
    client.set_stage("back", stage="lead", reason="new budget", timestamp=day(50))
    # as of day 190: old was disqualified 189 days ago; recent 90; back is a lead again
    assert client.purge(stage="disqualified", older_than="180d", as_of=day(190)) == ["old"]
    assert client.status("old").stage == "disqualified"  # the dry run changed nothing
    assert client.purge(stage="disqualified", older_than="180d", as_of=day(190),
                        dry_run=False) == ["old"]
    with pytest.raises(pqlsdk.UnknownSubject):
        client.status("old")
    assert client.qualifications(rule="team") and all(
        q.subject_id != "old" for q in client.qualifications())
    assert client.history("old") == []
    assert client.status("recent").stage == "disqualified"
    with pytest.raises(pqlsdk.ValidationError, match="older_than"):
        client.purge(stage="disqualified", older_than=180)


def test_cli_purge(make_client, database):
    if "schema" in database:
        pytest.skip("the command line is covered on SQLite")
    client = make_client(RULES)
    client.track("old", "teammate_invited", timestamp=day(0))
    client.set_stage("old", stage="disqualified", timestamp=day(1))
    client.close()
    runner = CliRunner()
    base = ["purge", "--db", database["database"], "--stage", "disqualified",
            "--older-than", "180d", "--as-of", day(190).isoformat()]
    dry = runner.invoke(main, [*base, "--json"])
    assert dry.exit_code == 0 and json.loads(dry.output) == {"would_purge": ["old"]}
    done = runner.invoke(main, [*base, "--yes", "--json"])
    assert done.exit_code == 0 and json.loads(done.output) == {"purged": ["old"]}
    again = runner.invoke(main, [*base, "--json"])
    assert json.loads(again.output) == {"would_purge": []}
    bad = runner.invoke(main, ["purge", "--db", database["database"], "--stage", "nope",
                               "--older-than", "1d"])
    assert bad.exit_code == 2 and "stage must be one of" in bad.output


def test_cli_rules_report_shows_firings_and_rejections_by_criterion(make_client, database,
                                                                    tmp_path):
    if "schema" in database:
        pytest.skip("the command line is covered on SQLite")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "team"\nstage = "pql"\nrearm = "30d"\n'
                     '[[rules.all]]\nevent = "teammate_invited"\n')
    client = make_client(str(rules))
    for user in ("ada", "bob", "cy"):
        client.track(user, "teammate_invited", timestamp=day(0))       # 3 firings
    client.track("ada", "teammate_invited", timestamp=day(31))          # re-armed: 4th
    client.set_stage("bob", stage="unqualified", timestamp=day(1),
                     criteria={"budget": False, "timing": False})
    client.set_stage("cy", stage="unqualified", timestamp=day(2), criteria={"budget": False})
    client.close()
    out = CliRunner().invoke(main, ["rules-report", "--db", database["database"],
                                    "--rules", str(rules)])
    assert out.exit_code == 0, out.output
    head, row, by_criterion = out.output.splitlines()
    assert head.split()[:4] == ["rule", "qualified", "fired", "sql"]
    # 3 subjects, 4 firings, none reached sql/opp/cust, 2 unqualified, 0 disqualified
    assert row.split() == ["team", "3", "4", "0", "0", "0", "2", "0"]
    assert by_criterion == "  rejected by criterion: budget (2), timing (1)"
