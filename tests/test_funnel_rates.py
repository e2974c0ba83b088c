"""Issue 20 item 6: the funnel rates the seeds name: ``to=`` (MQL→SQL, PQL→SQL), leaving
rejected subjects out, no rate for the last stage, and ``by=`` the trait's value when the
subject entered the stage (SPEC §8, §11)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


PATHS = {  # every subject first seen (a lead) on day 0, then moved by hand
    "a": [("mql", 1), ("sql", 3), ("customer", 5)],
    "b": [("mql", 1), ("unqualified", 2)],
    "c": [("pql", 1), ("sql", 2)],
    "d": [("mql", 1), ("pql", 2), ("opportunity", 4)],  # skips sql: reached it, and past
    "e": [("disqualified", 3)],
}


@pytest.fixture
def client(make_client):
    client = make_client([])
    for subject, moves in PATHS.items():
        client.identify(subject, {"lead_source": "ads"}, timestamp=day(0))
        for stage, when in moves:
            client.set_stage(subject, stage=stage, timestamp=day(when))
    return client


def rates(funnel):
    return {s.stage: (s.entered, s.reached, None if s.reach_rate is None
                      else round(s.reach_rate, 3)) for s in funnel.stages}


def test_funnel_to_sql_gives_the_share_that_reached_it(client):
    result = client.funnel(to="sql")
    assert result.to == "sql"
    assert rates(result) == {
        "subscriber": (0, 0, None),
        "lead": (5, 3, 0.6),          # a, c, d of five
        "mql": (3, 2, 0.667),         # a, d of a, b, d: the MQL→SQL rate
        "pql": (2, 2, 1.0),           # c, d
        "sql": (2, None, None),       # the target and later stages have no reach rate
        "opportunity": (1, None, None),
        "customer": (1, None, None),
    }
    # beside it, the next-stage rate as before; the last stage has none (not 0.0)
    plain = client.funnel()
    assert plain.stage("mql").conversion == pytest.approx(2 / 3)  # a to sql, d to pql
    assert plain.stage("customer").conversion is None
    assert (plain.stage("mql").reached, plain.stage("mql").reach_rate) == (None, None)


def test_exclude_rejected_leaves_unqualified_and_disqualified_out(client):
    result = client.funnel(to="sql", exclude_rejected=True)
    assert rates(result)["lead"] == (3, 3, 1.0)
    assert rates(result)["mql"] == (2, 2, 1.0)
    assert client.funnel(exclude_rejected=True).stage("lead").entered == 3


def test_funnel_refuses_a_bad_target(client):
    with pytest.raises(pqlsdk.ValidationError, match="to must be one of lead"):
        client.funnel(to="unqualified")
    with pytest.raises(pqlsdk.ValidationError, match="exclude_rejected must be True"):
        client.funnel(exclude_rejected="yes")


def test_by_groups_by_the_value_at_stage_entry(make_client):
    client = make_client([])
    client.identify("a", {"lead_source": "ads"}, timestamp=day(0))
    client.set_stage("a", stage="mql", timestamp=day(1))
    client.identify("a", {"lead_source": "partner"}, timestamp=day(2))
    client.set_stage("a", stage="sql", timestamp=day(3))
    client.identify("b", {}, timestamp=day(0))  # never had one
    client.set_stage("b", stage="mql", timestamp=day(1))

    def entered(funnel):
        return {name: {s.stage: s.entered for s in stages if s.entered}
                for name, stages in funnel.segments.items()}

    before = entered(client.funnel(by="lead_source"))
    assert before == {"ads": {"lead": 1, "mql": 1}, "partner": {"sql": 1},
                      "(none)": {"lead": 1, "mql": 1}}
    # a later edit does not move old history
    client.identify("a", {"lead_source": "organic"}, timestamp=day(6))
    assert entered(client.funnel(by="lead_source")) == before
    # ads leads: a entered mql on day 1 and moved on (to sql) two days later
    assert client.funnel(by="lead_source").segments["ads"][2].median_time == timedelta(days=2)


@pytest.mark.sqlite_only
def test_stored_traits_count_from_first_seen_after_the_upgrade(tmp_path):
    import sqlite_utils

    from pqlsdk.store import sqlite as store

    path = str(tmp_path / "old.db")
    db = sqlite_utils.Database(path)
    before = store.MIGRATIONS.index(store._trait_history)
    for number, migration in enumerate(store.MIGRATIONS[:before]):
        migration(db)
        db.execute(f"PRAGMA user_version = {number + 1}")
    db.execute("INSERT INTO users (tenant_key, user_id, traits, first_seen, first_lead) "
               "VALUES ('ada', 'ada', '{\"lead_source\": \"ads\", \"seats\": 3}', 5, 5)")
    db.conn.commit()
    db.close()
    store.Store(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT trait, value, at FROM trait_changes ORDER BY trait"
                            ).fetchall() == [("lead_source", '"ads"', 5), ("seats", "3", 5)]


def test_cli_funnel_to(client, database):
    if "schema" in database:
        pytest.skip("the command line is covered on SQLite")
    from click.testing import CliRunner

    from pqlsdk.cli import main

    client.close()
    result = CliRunner().invoke(main, ["funnel", "--db", database["database"], "--to", "sql",
                                       "--exclude-rejected"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()}
    assert lines["stage"][-2:] == ["to", "sql"]
    assert lines["mql"][-1] == "100.0%" and lines["customer"][-1] == "-"
