"""A deterministic history of Segment-spec messages, in time order, for replay tests."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

START = datetime(2026, 9, 1, tzinfo=timezone.utc)

RULES = {
    "rules": [
        {"name": "reports_weekly", "stage": "mql",
         "all": [{"event": "report_generated", "at_least": 4, "within": "7d"}]},
        {"name": "team_activation", "stage": "pql", "all": [
            {"event": "teammate_invited", "distinct": "email", "at_least": 2},
            {"event": "integration_connected", "where": {"provider": ["slack", "salesforce"]}},
            {"trait": "plan", "in": ["free", "trial"]},
        ]},
        {"name": "busy_account", "subject": "account", "stage": "sql", "all": [
            {"event": "report_generated", "at_least": 12, "within": "14d"},
            {"trait": "seats", "gte": 5},
        ]},
        {"name": "hot_lead", "stage": "mql", "all": [{"score": "total", "gte": 30}]},
    ],
    "scoring": {
        "half_life": "14d",
        "behavior": [{"event": "report_generated", "points": 3, "max": 30}],
        "fit": [{"trait": "lead_source", "equals": "ads", "points": 5}],
    },
}


def messages(count: int, seed: int = 1) -> list[dict]:
    """``count`` messages with strictly increasing timestamps (so time order is unique)."""
    rng = random.Random(seed)
    users = [f"user-{n}" for n in range(max(4, count // 40))]
    accounts = [f"acct-{n}" for n in range(max(2, len(users) // 4))]
    at = START
    out = []
    for n in range(count):
        at += timedelta(seconds=rng.randrange(1, 900))
        user = rng.choice(users)
        stamp = at.isoformat().replace("+00:00", "Z")
        roll = rng.random()
        if roll < 0.06:
            message = {"type": "identify", "userId": user, "traits": {
                "plan": rng.choice(["free", "trial", "paid"]),
                "lead_source": rng.choice(["ads", "organic"])}}
        elif roll < 0.10:
            message = {"type": "group", "userId": user, "groupId": rng.choice(accounts),
                       "traits": {"seats": rng.randrange(1, 12)}}
        else:
            event = rng.choices(["report_generated", "teammate_invited",
                                 "integration_connected", "page_viewed"],
                                weights=[6, 2, 1, 3])[0]
            properties = {}
            if event == "teammate_invited":
                properties = {"email": f"p{rng.randrange(6)}@x.io"}
            elif event == "integration_connected":
                properties = {"provider": rng.choice(["slack", "salesforce", "zapier"])}
            message = {"type": "track", "userId": user, "event": event,
                       "properties": properties}
        message.update({"timestamp": stamp, "messageId": f"m-{seed}-{n}"})
        out.append(message)
    return out


def tied_messages(count: int, seed: int = 2) -> list[dict]:
    """``count`` messages in time order where many share a timestamp, also for one user or
    one account (time order is then the order of the list, as in a file)."""
    rng = random.Random(seed)
    out = []
    at = START
    for message in messages(count, seed):
        if rng.random() < 0.6:
            at += timedelta(seconds=rng.randrange(1, 1800))
        out.append({**message, "timestamp": at.isoformat().replace("+00:00", "Z"),
                    "userId": f"user-{rng.randrange(6)}"})
    return out


def apply_live(client, history: list[dict]) -> None:
    """What the application would have called, message by message, in time order."""
    for m in history:
        if m["type"] == "track":
            client.track(m["userId"], m["event"], m["properties"], timestamp=m["timestamp"],
                         message_id=m["messageId"])
        elif m["type"] == "identify":
            client.identify(m["userId"], m["traits"], timestamp=m["timestamp"])
        else:
            client.group(m["userId"], m["groupId"], m["traits"], timestamp=m["timestamp"])


def outcome(client) -> tuple:
    """Everything replay must reproduce: qualifications, stages and their histories."""
    qualifications = sorted((q.rule, q.subject_type, q.subject_id, q.user_id,
                             q.qualified_at.isoformat()) for q in client.qualifications())
    with client.store.read() as tx:  # either engine
        changes = tx.rows("stage_changes", "subject_id IS NOT NULL", [])
        users = tx.rows("users", "user_id IS NOT NULL", [])
    history = sorted(((r["subject_type"], r["subject_id"], r["from_stage"], r["to_stage"],
                       r["at"], r["source"]) for r in changes), key=repr)
    stages = sorted((r["user_id"], r["stage"]) for r in users)
    return qualifications, history, stages
