"""Per-call cost of ``Client.track()`` against a bare SQLite INSERT, measured in one run.

    python benchmarks/track.py            # 1,000,000 events already stored
    python benchmarks/track.py --quick    # 100,000 events, for CI

Both sides write the same row into the same schema (a copy of one file, same indexes, same
size) in WAL mode with synchronous=NORMAL; the baseline is a bare ``sqlite3`` autocommit
INSERT. Rounds alternate the sides so machine noise hits both; the figure is the median of
the per-round ratios. Three typical rules read the tracked event; the light users have ~100
events each, the heavy user 100,000 of the tracked kind.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk.store.sqlite import fill_tenant_keys

RULES = {"rules": [
    {"name": "team_activation", "all": [
        {"event": "report_generated", "at_least": 5, "within": "14d"},
        {"event": "teammate_invited", "distinct": "invitee_email", "at_least": 3},
        {"trait": "plan", "in": ["free", "trial"]},
    ]},
    {"name": "crm_connected", "all": [
        {"event": "report_generated", "at_least": 10, "within": "30d"},
        {"event": "integration_connected", "where": {"provider": ["salesforce", "hubspot"]}},
    ]},
    {"name": "power_team", "subject": "account", "all": [
        {"event": "report_generated", "at_least": 50, "within": "7d"},
        {"trait": "seats", "gte": 10},
    ]},
]}
NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
KINDS = ["report_generated", "dashboard_viewed", "export", "comment_added"]


def populate(path: str, events: int, heavy: int, per_user: int = 100) -> list[str]:
    """A database of ``events`` events over light users (``per_user`` events each) plus one
    heavy user; returns the light users."""
    client = pqlsdk.Client(path, rules=RULES)
    client.close()
    users = [f"user-{n}" for n in range((events - heavy) // per_user)]
    start = pqlsdk.timestamps.to_micros(NOW - timedelta(days=90))
    span = 90 * 86400 * 1_000_000
    rng = random.Random(7)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO users (tenant_key, user_id, account_id, traits, first_seen) "
        "VALUES (?2, ?1, ?2, ?3, ?4)",
        [(u, f"acct-{i // 5}", '{"plan": "paid"}', start) for i, u in enumerate(users)]
        + [("heavy", "acct-heavy", '{"plan": "trial"}', start)],
    )
    conn.executemany(
        "INSERT INTO accounts (tenant_key, account_id, traits, first_seen) "
        "VALUES (?1, ?1, '{}', ?2)",
        [(f"acct-{i}", start) for i in range(len(users) // 5 + 1)] + [("acct-heavy", start)],
    )
    rows = (
        (u, f"acct-{i // 5}", rng.choice(KINDS), start + rng.randrange(span), "{}")
        for i, u in enumerate(users) for _ in range(per_user)
    )
    # each row in its tenant (the user's account), as track() writes it
    conn.executemany("INSERT INTO events (tenant_key, user_id, account_id, event, ts, "
                     "properties) VALUES (?2, ?1, ?2, ?3, ?4, ?5)", rows)
    conn.executemany(
        "INSERT INTO events (tenant_key, user_id, account_id, event, ts, properties) "
        "VALUES (?2, ?1, ?2, ?3, ?4, ?5)",
        (("heavy", "acct-heavy", "report_generated", start + rng.randrange(span), "{}")
         for _ in range(heavy)),
    )
    fill_tenant_keys(conn)  # the users' directory rows (issue 19)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return users


def per_call(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def measure(quick: bool, rounds: int = 15, calls: int = 300) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    events = 100_000 if quick else 1_000_000
    heavy = 100_000 if not quick else 20_000

    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    path = os.path.join(folder, "pql.db")
    setup = time.perf_counter()
    users = populate(path, events, heavy)
    base_path = os.path.join(folder, "baseline.db")
    shutil.copy(path, base_path)
    setup = time.perf_counter() - setup

    base = sqlite3.connect(base_path, isolation_level=None)
    base.execute("PRAGMA journal_mode = WAL")
    base.execute("PRAGMA synchronous = NORMAL")
    # the same row track() writes: in the user's tenant (its account), keyed by it
    insert = ("INSERT INTO events (tenant_key, message_id, user_id, account_id, event, ts, "
              "properties) VALUES (?, ?, ?, ?, ?, ?, ?)")
    tenant = {u: f"acct-{i // 5}" for i, u in enumerate(users)}
    client = pqlsdk.Client(path, rules=RULES)
    rng = random.Random(11)
    ts = NOW

    def bare() -> None:
        user = rng.choice(users)
        base.execute(insert, (tenant[user], None, user, tenant[user], "report_generated",
                              pqlsdk.timestamps.to_micros(ts), "{}"))

    def light() -> None:
        client.track(rng.choice(users), "report_generated", timestamp=ts)

    def unread() -> None:
        client.track(rng.choice(users), "page_viewed", timestamp=ts)

    def heavy_user() -> None:
        client.track("heavy", "report_generated", timestamp=ts)

    newcomers = iter(range(10**9))

    def first_event() -> None:  # a signup: the user, its stage and history, the event
        client.track(f"new-{next(newcomers)}", "report_generated", timestamp=ts)

    light_ratios, heavy_ratios, floor_ratios, first_ratios, base_times = [], [], [], [], []
    for _ in range(rounds):
        b = per_call(bare, calls)
        t_light = per_call(light, calls)
        t_heavy = per_call(heavy_user, calls)
        t_floor = per_call(unread, calls)
        t_first = per_call(first_event, calls)
        b = (b + per_call(bare, calls)) / 2
        base_times.append(b)
        light_ratios.append(t_light / b)
        heavy_ratios.append(t_heavy / b)
        floor_ratios.append(t_floor / b)
        first_ratios.append(t_first / b)
    client.close()
    base.close()
    shutil.rmtree(folder)

    light_r, heavy_r = statistics.median(light_ratios), statistics.median(heavy_ratios)
    return [
        (f"bare sqlite3 INSERT into {events:,} events (baseline)",
         f"{statistics.median(base_times) * 1e6:.1f} us/call (setup {setup:.0f}s)"),
        ("track(), an event no rule reads", f"{statistics.median(floor_ratios):.2f}x"),
        ("track(), a user's first event, three rules (goal <= 1.5x)",
         f"{statistics.median(first_ratios):.2f}x"),
        ("track(), light user, three rules (goal <= 1.3x)", f"{light_r:.2f}x"),
        (f"track(), heavy user ({heavy:,} events of that kind)",
         f"{heavy_r:.2f}x ({heavy_r / light_r:.2f}x light)"),
    ]


def show(rows: list[tuple[str, str]]) -> None:
    """Print ``(what, figure)`` rows as a table."""
    width = max(len(what) for what, _ in rows)
    for what, figure in rows:
        print(f"{what:<{width}}  {figure}")


def cli(measure: Callable[..., list[tuple[str, str]]], doc: str | None,
        rounds: int | None = None) -> None:
    """The command line every benchmark script shares: ``--quick``, and ``--rounds`` and
    ``--calls`` for those that alternate rounds of calls."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)
        parser.add_argument("--calls", type=int, default=300, help="calls per side per round")
    args = parser.parse_args()
    if rounds is None:
        show(measure(args.quick))
    else:
        show(measure(args.quick, args.rounds, args.calls))

if __name__ == "__main__":
    cli(measure, __doc__, rounds=15)
