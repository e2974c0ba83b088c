"""A generated history whose truth the tests know: a hidden driver decides who converts.

Each user generates reports on random days; a user who ever makes ``BURST`` reports within
7 days (the driver) becomes a ``customer`` with probability ``P_DRIVEN`` a few days later;
any other user converts with probability ``P_OTHER`` at a random moment. The tests compute
the expected figures from these lists on their own, without pqlsdk.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
END = T0 + timedelta(days=150)
BURST = 5
P_DRIVEN = 0.6
P_OTHER = 0.05
WINDOW = timedelta(days=7)


def generate(users: int = 300, seed: int = 7) -> dict:
    """Per user: report times, other event times, and the conversion time (or None)."""
    rng = random.Random(seed)
    out = {}
    for n in range(users):
        user = f"u{n:03d}"
        start = T0 + timedelta(days=rng.randrange(0, 60), hours=rng.randrange(24))
        per_week = rng.uniform(0.3, 8)  # how much this user reports
        reports = []
        at = start
        for _ in range(rng.randrange(2, 14)):
            at += timedelta(days=rng.expovariate(per_week / 7))
            if at > T0 + timedelta(days=100):
                break
            reports.append(at.replace(microsecond=0))
        pages = [(start + timedelta(days=rng.uniform(0, 40))).replace(microsecond=0)
                 for _ in range(rng.randrange(1, 5))]
        fired = first_burst(reports)
        converted = None
        if fired is not None and rng.random() < P_DRIVEN:
            converted = fired + timedelta(days=rng.uniform(0.5, 4))
        elif fired is None and rng.random() < P_OTHER:
            converted = start + timedelta(days=rng.uniform(1, 60))
        if converted is not None:
            converted = converted.replace(microsecond=0)
        out[user] = {"reports": reports, "pages": pages, "converted": converted}
    return out


def first_burst(times: list[datetime], at_least: int = BURST,
                window: timedelta = WINDOW) -> datetime | None:
    """When ``at_least`` of ``times`` first fall within ``window`` (ends inclusive)."""
    for j in range(len(times)):
        if sum(1 for t in times[:j + 1] if times[j] - window <= t) >= at_least:
            return times[j]
    return None


def record(client, history: dict) -> None:
    """Record the history through the public API."""
    for user, h in history.items():
        for at in h["reports"]:
            client.track(user, "report_generated", timestamp=at)
        for at in h["pages"]:
            client.track(user, "page_viewed", timestamp=at)
        if h["converted"] is not None:
            client.set_stage(user, stage="customer", reason="paid", timestamp=h["converted"])
