"""Fit + behaviour scoring, decay, and score thresholds in rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

import pqlsdk

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
SCORING = {
    "behavior": [
        {"event": "report_generated", "points": 5, "max": 25},
        {"event": "export", "points": 3, "within": "7d", "where": {"format": "csv"}},
    ],
    "fit": [
        {"trait": "company_size", "gte": 50, "points": 20},
        {"trait": "email", "ends_with": "@gmail.com", "points": -10},
    ],
}
MQL = {"name": "score_mql", "stage": "mql", "all": [{"score": "total", "gte": 40}]}


def test_behaviour_points_are_capped_filtered_and_windowed(make_client):
    client = make_client({"rules": [], "scoring": SCORING})
    for day in range(7):
        client.track("ada", "report_generated", timestamp=T0 + timedelta(days=day))
    client.track("ada", "export", {"format": "csv"}, timestamp=T0)
    client.track("ada", "export", {"format": "pdf"}, timestamp=T0 + timedelta(days=6))
    client.track("ada", "export", {"format": "csv"}, timestamp=T0 + timedelta(days=6))
    score = client.score("ada", as_of=T0 + timedelta(days=8))
    assert [(line.kind, line.points) for line in score.lines] == [
        ("behavior", 25), ("behavior", 3), ("fit", 0), ("fit", 0)]
    assert (score.behavior, score.fit, score.total) == (28, 0, 28)


def test_fit_points_positive_and_negative(make_client):
    client = make_client({"rules": [], "scoring": SCORING})
    client.identify("ada", {"company_size": 80, "email": "ada@gmail.com"})
    client.identify("bob", {"company_size": 10, "email": "bob@acme.io"})
    assert client.score("ada").fit == 10
    assert client.score("bob").fit == 0
    assert client.score("ada").lines[2].label == "company_size gte 50"


def test_half_life_decay_matches_a_hand_computed_example(make_client):
    client = make_client({"rules": [], "scoring": {
        "half_life": "30d", "behavior": [{"event": "report_generated", "points": 4}]}})
    now = T0 + timedelta(days=60)
    for age in (60, 30, 0):  # worth 1, 2 and 4 points now
        client.track("ada", "report_generated", timestamp=now - timedelta(days=age))
    assert client.score("ada", as_of=now).behavior == pytest.approx(7.0)
    # fifteen days later each has lost a factor of sqrt(2)
    later = client.score("ada", as_of=now + timedelta(days=15)).behavior
    assert later == pytest.approx(7.0 / 2 ** 0.5)


@freeze_time("2026-12-02 09:00:00")
def test_score_defaults_to_now_under_freezegun(make_client):
    client = make_client({"rules": [], "scoring": {
        "half_life": "30d", "behavior": [{"event": "e", "points": 8}]}})
    client.track("ada", "e", timestamp=T0)  # exactly 30 days before the frozen now
    assert client.score("ada").behavior == pytest.approx(4.0)


def test_score_threshold_makes_an_mql_on_an_event(make_client):
    client = make_client({"rules": [MQL], "scoring": SCORING})
    client.identify("ada", {"company_size": 80})
    for n in range(3):
        assert client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=n)) == []
    [q] = client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=3))
    assert q.stage == "mql" and q.evidence.parts[0].value == 40
    assert client.status("ada").stage == "mql"


def test_score_threshold_makes_an_mql_when_a_trait_changes_the_fit(make_client):
    client = make_client({"rules": [MQL], "scoring": SCORING})
    for n in range(5):
        client.track("ada", "report_generated", timestamp=T0 + timedelta(hours=n))
    assert client.qualifications() == []  # 25 points
    [q] = client.identify("ada", {"company_size": 200}, timestamp=T0 + timedelta(days=1))
    assert q.rule == "score_mql"


def test_explain_shows_the_score_against_its_bound(make_client):
    client = make_client({"rules": [MQL], "scoring": SCORING})
    client.track("ada", "report_generated", timestamp=T0)
    assert "✗ score total: 5 — wanted gte 40" in client.explain("ada", as_of=T0)


def test_python_rules_with_a_scoring_dict(make_client):
    rule = pqlsdk.Rule("hot", pqlsdk.score("behavior", gt=14), stage="mql")
    client = make_client([rule], scoring={"behavior": [{"event": "e", "points": 5}]})
    client.track("ada", "e")
    assert client.track("ada", "e") == []
    assert client.track("ada", "e")[0].rule == "hot"


def test_account_scores_use_account_traits_and_all_its_users_events(make_client):
    client = make_client({"rules": [], "scoring": SCORING})
    client.group("ada", "acme", {"company_size": 500})
    client.track("ada", "report_generated")
    client.track("bob", "report_generated", account_id="acme")
    score = client.score(account_id="acme")
    assert (score.fit, score.behavior) == (20, 10)


@pytest.mark.parametrize(
    ("scoring", "says"),
    [
        ({"half_life": "soon"}, "scoring.half_life: must be a duration"),
        ({"behavior": [{"event": "e"}]}, "scoring.behavior[0].points: is required"),
        ({"behavior": [{"event": "e", "points": "5"}]}, "scoring.behavior[0].points: must be"),
        ({"behavior": [{"event": "e", "points": 5, "max": 0}]},
         "scoring.behavior[0].max: must be a number > 0"),
        ({"behavior": [{"event": "e", "points": 5, "per": 1}]},
         "scoring.behavior[0].per: unknown key"),
        ({"behavior": [{"points": 5}]}, "scoring.behavior[0].event: must be a non-empty"),
        ({"fit": [{"trait": "size", "gte": 5}]}, "scoring.fit[0].points: is required"),
        ({"fit": [{"trait": "size", "bigger": 5, "points": 1}]},
         "scoring.fit[0].bigger: unknown key"),
        ({"fit": [{"trait": "size", "points": 1}]}, "scoring.fit[0]: needs at least one"),
        ({"fit": {"trait": "size"}}, "scoring.fit: must be an array"),
        ({"decay": "30d"}, "scoring.decay: unknown key"),
    ],
)
def test_bad_scoring_config_is_refused_with_its_key(scoring, says):
    with pytest.raises(pqlsdk.RuleError) as caught:
        pqlsdk.load_rules({"rules": [], "scoring": scoring})
    assert says in str(caught.value)
