"""backtest() and suggest() over stored history, against a bare ordered read of the events;
and what a shadow rule adds to track() next to what the same rule adds live.

    python benchmarks/backtest_bench.py            # 1,000,000 events, 20 event kinds
    python benchmarks/backtest_bench.py --quick    # 100,000 events

Baseline: ``SELECT user_id, event, ts FROM events ORDER BY user_id, ts`` read fully in
Python, on the same file, timed in the same run (best of three each). The backtest replays
the three rules of ``examples/pql_rules.toml`` (two user rules, one account rule: one pass
per subject type). suggest's memory peak is Python's (tracemalloc, in a separate run).
The track() figure alternates rounds of three Clients on one file: no rule, ten
rules live, the same ten with ``shadow = true`` (rules not met: the per-call cost; ten, so
that what they add stands above the machine's noise), in CPU time of this process.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk.store.sqlite import fill_tenant_keys
from pqlsdk.timestamps import to_micros

from funnel import best_of
from track import NOW, cli

EXAMPLE_RULES = os.path.join(os.path.dirname(__file__), "..", "examples", "pql_rules.toml")
KINDS = ["report_generated", "teammate_invited", "integration_connected", "page_viewed",
         *(f"feature_{k}" for k in range(16))]
WEIGHTS = [20, 2, 1, 15, *([4] * 16)]
PROVIDERS = ["slack", "salesforce", "zapier", "hubspot"]
SHADOW_RULE = {"name": "engaged", "all": [
    {"event": "report_generated", "at_least": 500, "within": "7d"},
    {"event": "teammate_invited", "distinct": "invitee_email", "at_least": 3}]}


def populate(path: str, events: int, per_user: int = 50) -> list[str]:
    """``events`` events of 20 kinds over users of ``per_user`` events each (5 users an
    account); a hidden driver (two distinct invitees) makes half of its users customers."""
    pqlsdk.Client(path).close()
    rng = random.Random(5)
    users = [f"user-{n}" for n in range(events // per_user)]
    start = to_micros(NOW) - 120 * 86_400_000_000
    span = 90 * 86_400_000_000
    rows, stages = [], []
    for i, user in enumerate(users):
        account = f"acct-{i // 5}"
        invited: set[str] = set()
        times = sorted(start + rng.randrange(span) for _ in range(per_user))
        second = None
        for ts, kind in zip(times, rng.choices(KINDS, WEIGHTS, k=per_user), strict=True):
            props = "{}"
            if kind == "teammate_invited":
                email = f"m{rng.randrange(6)}@{account}.io"
                invited.add(email)
                if len(invited) == 2 and second is None:
                    second = ts
                props = f'{{"invitee_email": "{email}"}}'
            elif kind == "integration_connected":
                props = f'{{"provider": "{rng.choice(PROVIDERS)}"}}'
            rows.append((user, account, kind, ts, props))
        if (second is not None and rng.random() < 0.5) or rng.random() < 0.03:
            at = (second or times[0]) + rng.randrange(14 * 86_400_000_000)
            stages.append(("user", user, "lead", "customer", at, "import", None))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO users (user_id, account_id, traits, first_seen) VALUES (?, ?, ?, ?)",
        [(u, f"acct-{i // 5}", f'{{"plan": "{rng.choice(["free", "trial", "paid"])}"}}',
          start) for i, u in enumerate(users)])
    conn.executemany(
        "INSERT INTO accounts (account_id, traits, first_seen) VALUES (?, ?, ?)",
        [(f"acct-{i}", f'{{"seats": {rng.randrange(1, 30)}}}', start)
         for i in range(len(users) // 5 + 1)])
    conn.executemany("INSERT INTO events (user_id, account_id, event, ts, properties) "
                     "VALUES (?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO stage_changes (subject_type, subject_id, from_stage, "
                     "to_stage, at, source, reason) VALUES (?, ?, ?, ?, ?, ?, ?)", stages)
    fill_tenant_keys(conn)  # what pqlsdk would have written (issue 19)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return users


def cpu_per_call(fn, calls: int) -> float:
    """CPU seconds of this process per call (SQLite runs in-process and WAL commits do
    not fsync at synchronous=NORMAL): less disturbed by other work than wall time."""
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls


def shadow_cost(path: str, users: list[str], rounds: int, calls: int
                ) -> tuple[float, float, float]:
    """Per-call track() seconds: no rule, ten rules live, the same ten as shadows (medians
    of rounds that alternate the three, in a rotating order)."""
    ten = [{**SHADOW_RULE, "name": f"engaged_{k}"} for k in range(10)]
    # one file for the three: copies measured a few percent apart on their own
    clients = [pqlsdk.Client(path, rules=rules) for rules in (
        None, {"rules": ten}, {"rules": [{**r, "shadow": True} for r in ten]})]
    rng = random.Random(3)
    results: list[list[float]] = [[], [], []]
    for n in range(rounds):
        for k in (n % 3, (n + 1) % 3, (n + 2) % 3):
            client = clients[k]
            results[k].append(cpu_per_call(lambda c=client: c.track(
                rng.choice(users), "report_generated", timestamp=NOW), calls))
    for client in clients:
        client.close()
    none, live, shadow = (statistics.median(r) for r in results)
    return none, live, shadow


def measure(quick: bool, rounds: int | None = None, calls: int = 300
            ) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    events = 100_000 if quick else 1_000_000
    rounds = rounds or (5 if quick else 11)
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    path = os.path.join(folder, "pql.db")
    setup = time.perf_counter()
    users = populate(path, events)
    setup = time.perf_counter() - setup
    conn = sqlite3.connect(path)

    def bare() -> None:
        for _ in conn.execute("SELECT user_id, event, ts FROM events ORDER BY user_id, ts"):
            pass

    client = pqlsdk.Client(path, rules=EXAMPLE_RULES)
    base = best_of(bare)
    users_only = best_of(lambda: client.backtest())
    accounts = best_of(lambda: client.backtest(subject="account"))
    found: list = []
    suggest = best_of(lambda: found.append(client.suggest()), runs=2)
    tracemalloc.start()
    client.suggest()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    top = found[-1][0] if found and found[-1] else None
    client.close()
    conn.close()
    none, live, shadow = shadow_cost(path, users, rounds, calls)
    shutil.rmtree(folder)
    live_add, shadow_add = live - none, shadow - none
    return [
        (f"bare ordered read of {events:,} events (baseline; setup {setup:.0f}s)",
         f"{base:.2f}s"),
        ("backtest(), the 2 user rules of examples/pql_rules.toml", f"{users_only / base:.2f}x"),
        ("backtest(subject='account'), its account rule", f"{accounts / base:.2f}x"),
        ("backtest() of all 3 example rules (both passes)",
         f"{(users_only + accounts) / base:.2f}x"),
        (f"suggest() over {len(KINDS)} event kinds", f"{suggest / base:.2f}x"),
        ("suggest(): peak Python memory (tracemalloc)", f"{peak / 2**20:.0f} MiB"),
        ("suggest(): its top candidate",
         "-" if top is None else f"{top.rule.name} (lift {top.lift:.2f})"),
        ("track() with no rule (baseline, CPU time)", f"{none * 1e6:.0f} us/call"),
        ("track(): what ten live rules add", f"{live_add * 1e6:.0f} us/call"),
        ("track(): what the same ten add as shadow rules",
         f"{shadow_add * 1e6:.0f} us/call ({shadow_add / live_add:.2f}x the live rules')"
         if live_add > 0 else f"{shadow_add * 1e6:.0f} us/call"),
    ]


if __name__ == "__main__":
    cli(measure, __doc__, rounds=11)
