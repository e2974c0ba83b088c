"""Generate a history to backtest: 90 days of a B2B product's usage and its CRM's verdicts.

    python examples/generate_history.py history.jsonl          # 1,000 users, ~50k lines
    pqlsdk import history.jsonl --db pql.db --rules examples/pql_rules.toml
    pqlsdk backtest examples/pql_rules.toml --db pql.db
    pqlsdk suggest --db pql.db

Segment-spec ``identify``, ``group`` and ``track`` lines, plus the CRM's stage changes
(``{"type": "stage", ...}``: deals won become ``customer``). A hidden driver decides who
buys: a user who invites two or more distinct teammates buys with probability 0.5 within
two weeks, anyone else with probability 0.04. The example rules only partly capture it;
``pqlsdk backtest`` shows how well each does, and ``pqlsdk suggest`` finds the driver.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timedelta, timezone

START = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAYS = 90
EVENTS = ["report_generated", "dashboard_viewed", "export_csv", "search", "page_viewed"]


def stamp(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def generate(users: int, seed: int) -> list[dict]:
    """Every line of the history, in no particular order (import sorts by time)."""
    rng = random.Random(seed)
    lines: list[dict] = []
    for n in range(users):
        user, account = f"user-{n}", f"acct-{n // 4}"
        first = START + timedelta(days=rng.uniform(0, DAYS - 30))
        plan = rng.choice(["free", "trial", "trial", "paid"])
        lines.append({"type": "identify", "userId": user, "timestamp": stamp(first),
                      "traits": {"plan": plan, "email": f"{user}@example.com"}})
        lines.append({"type": "group", "userId": user, "groupId": account,
                      "timestamp": stamp(first), "traits": {"seats": rng.randrange(1, 30)}})
        activity = rng.uniform(0.1, 2.0)  # events per day
        at, k = first, 0
        invited: set[str] = set()
        first_second_invite = None
        while True:
            at += timedelta(days=rng.expovariate(activity))
            if at > START + timedelta(days=DAYS):
                break
            roll = rng.random()
            if roll < 0.015:
                email = f"mate{rng.randrange(8)}@{account}.io"
                properties: dict = {"invitee_email": email}
                event = "teammate_invited"
                invited.add(email)
                if len(invited) == 2 and first_second_invite is None:
                    first_second_invite = at
            elif roll < 0.04:
                event = "integration_connected"
                properties = {"provider": rng.choice(["slack", "salesforce", "zapier",
                                                      "hubspot"])}
            else:
                event = rng.choice(EVENTS)
                properties = {}
            lines.append({"type": "track", "userId": user, "event": event,
                          "properties": properties, "timestamp": stamp(at),
                          "context": {"groupId": account}, "messageId": f"{user}-{k}"})
            k += 1
        # the hidden driver
        if first_second_invite is not None and rng.random() < 0.5:
            won = first_second_invite + timedelta(days=rng.uniform(1, 14))
        elif rng.random() < 0.04:
            won = first + timedelta(days=rng.uniform(1, 60))
        else:
            continue
        lines.append({"type": "stage", "userId": user, "stage": "customer",
                      "reason": "closed won", "timestamp": stamp(won),
                      "messageId": f"{user}-won"})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="history.jsonl")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    lines = generate(args.users, args.seed)
    with open(args.out, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    print(f"wrote {len(lines)} lines to {args.out}; next:\n"
          f"  pqlsdk import {args.out} --db pql.db --rules examples/pql_rules.toml\n"
          f"  pqlsdk backtest examples/pql_rules.toml --db pql.db\n"
          f"  pqlsdk suggest --db pql.db")


if __name__ == "__main__":
    main()
