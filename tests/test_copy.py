"""``pqlsdk copy pql.db postgresql://...``: a file made by live traffic gives the same
answers on the server, and a second run adds nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

import pqlsdk
from pqlsdk import event
from pqlsdk.cli import main
from pqlsdk.copy import copy_file

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
RULES = [pqlsdk.Rule("engaged", event("report_generated", at_least=2), stage="mql"),
         pqlsdk.Rule("team", event("teammate_invited"), stage="pql"),
         pqlsdk.Rule("busy_team", event("report_generated", at_least=3), subject="account",
                     stage="pql")]


def _live_traffic(client: pqlsdk.Client) -> None:
    for n, user in enumerate(["u1", "u2", "u3", "u4", "u5"]):
        client.identify(user, {"lead_source": "ads" if n % 2 else "organic"},
                        account_id="acme" if n < 3 else None, timestamp=T0 + n * DAY)
        for k in range(n):
            client.track(user, "report_generated", {"k": k}, timestamp=T0 + (n + k) * DAY,
                         message_id=f"{user}-{k}")
    client.track("u1", "teammate_invited", timestamp=T0 + 6 * DAY)
    client.track("u2", "report_generated", timestamp=T0 + 7 * DAY)  # no message id
    client.set_stage("u4", stage="sql", reason="demo", timestamp=T0 + 8 * DAY)
    client.set_stage("u5", stage="unqualified", reason="no budget", timestamp=T0 + 9 * DAY)


def _crm_down(qualification: pqlsdk.Qualification) -> None:
    raise ConnectionError("CRM down")


def _answers(client: pqlsdk.Client) -> dict:
    users = ["u1", "u2", "u3", "u4", "u5"]
    return {
        "status": [client.status(u) for u in users] + [client.status(account_id="acme")],
        "qualifications": client.qualifications(),
        "history": [client.history(u) for u in users],
        "funnel": client.funnel(),
        "funnel_by": client.funnel(by="lead_source"),
        "pending": [(d.destination, d.payload) for d in client.deliveries()],
    }


def test_a_copied_file_gives_the_same_answers_and_a_second_run_adds_nothing(
        tmp_path, pg_schema):
    url, schema = pg_schema
    path = str(tmp_path / "pql.db")
    live = pqlsdk.Client(path, rules=RULES, on_qualified={"crm": _crm_down}, sync_mode=True)
    _live_traffic(live)  # the CRM is down: its rows stay pending, and the copy carries them
    live.close(timeout=0)
    on_file = pqlsdk.Client(path, rules=RULES)
    expected = _answers(on_file)
    on_file.close(timeout=0)
    assert expected["pending"]  # the outbox still holds rows for "crm"

    first = copy_file(path, url, schema=schema)
    assert first.copied["events"] == 12 and first.copied["qualifications"] >= 4

    on_server = pqlsdk.Client(url, schema=schema, rules=RULES)
    assert _answers(on_server) == expected
    on_server.close(timeout=0)

    again = copy_file(path, url, schema=schema)
    assert set(again.copied.values()) == {0}
    on_server = pqlsdk.Client(url, schema=schema, rules=RULES)
    assert _answers(on_server) == expected
    on_server.close(timeout=0)


def test_the_copy_command(tmp_path, pg_schema):
    url, schema = pg_schema
    path = str(tmp_path / "pql.db")
    client = pqlsdk.Client(path, rules=RULES)
    _live_traffic(client)
    client.close()
    result = CliRunner().invoke(main, ["copy", path, url, "--schema", schema])
    assert result.exit_code == 0, result.output
    assert "events: 12 row(s) copied" in result.output
    result = CliRunner().invoke(main, ["status", "u1", "--db", url])
    assert result.exit_code != 0 or "u1" in result.output
    refused = CliRunner().invoke(main, ["copy", path, str(tmp_path / "other.db")])
    assert refused.exit_code != 0 and "postgresql://" in refused.output


def test_a_mirrored_track_waiting_in_the_file_reaches_segment_from_the_server(
        tmp_path, pg_schema, segment_server, segment_client):
    url, schema = pg_schema
    path = str(tmp_path / "pql.db")
    live = pqlsdk.Client(path, segment=segment_client, forward_events=True, send=False)
    live.track("u0", "signup", timestamp=T0)  # shifts the event ids of the file
    with live.store.write() as tx:
        tx.conn.execute("DELETE FROM outbox")
    live.track("u1", "report_generated", {"k": 1}, account_id="acme", timestamp=T0 + DAY)
    live.close(timeout=0)
    pqlsdk.Client(url, schema=schema).track("other", "x", timestamp=T0)  # ids differ there
    copy_file(path, url, schema=schema)
    server = pqlsdk.Client(url, schema=schema, segment=segment_client, forward_events=True,
                           sync_mode=True)
    assert server.flush()
    [sent] = [m for m in segment_server.messages if m["userId"] == "u1"]
    assert (sent["event"], sent["properties"], sent["context"]["groupId"]) == (
        "report_generated", {"k": 1}, "acme")
    assert sent["timestamp"] == "2026-10-02T09:00:00.000+00:00"
    server.close(timeout=0)
