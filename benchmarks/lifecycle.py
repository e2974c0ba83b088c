"""Issue 20's figures, each against a baseline measured in the same run.

    python benchmarks/lifecycle.py            # 100,000 qualified subjects
    python benchmarks/lifecycle.py --quick    # 10,000

1. ``track()`` under an id linked by ``alias`` (resolved to its user on every call) vs a plain
   ``track()`` under the user's own id, on the same file, rounds alternating: goal within 5%.
2. ``overdue()`` over N qualified subjects waiting for sales vs a bare indexed range query
   over the same hand-off rows (``sqlite3``, tuples only): goal at most 2x.

Medians of per-round ratios; run it more than once (the machine is shared) and report the
range.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk.timestamps import to_micros

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)
RULES = {"rules": [
    {"name": "engaged", "stage": "mql",
     "all": [{"event": "report_generated", "at_least": 1000, "within": "14d"}]},
], "lifecycle": {"accept_within": "2d"}}


def alias_vs_plain(folder: str, rounds: int, per_round: int) -> list[float]:
    path = os.path.join(folder, "alias.db")
    client = pqlsdk.Client(path, rules=RULES)
    users = [f"user-{n}" for n in range(200)]
    for n, user in enumerate(users):
        client.track(user, "report_generated", timestamp=NOW)
        client.track(None, "page", anonymous_id=f"anon-{n}", timestamp=NOW)
        client.alias(f"anon-{n}", user, timestamp=NOW)
    ratios = []
    at = NOW
    for r in range(rounds):
        timings = {}
        for side in (("alias", "plain") if r % 2 == 0 else ("plain", "alias")):
            started = time.perf_counter()
            for k in range(per_round):
                n = k % len(users)
                at += timedelta(seconds=1)
                client.track(f"anon-{n}" if side == "alias" else users[n], "report_generated",
                             timestamp=at)
            timings[side] = time.perf_counter() - started
        ratios.append(timings["alias"] / timings["plain"])
    client.close()
    return ratios


def overdue_vs_range(folder: str, subjects: int, rounds: int) -> tuple[list[float], float]:
    path = os.path.join(folder, "overdue.db")
    pqlsdk.Client(path, rules=RULES).close()
    conn = sqlite3.connect(path, isolation_level=None)
    start = to_micros(NOW - timedelta(days=30))
    conn.execute("BEGIN")
    conn.executemany(  # the rows track() writes for a qualified user (its own tenant)
        "INSERT INTO users (tenant_key, user_id, traits, first_seen, stage, first_lead, "
        "first_mql) VALUES (?1, ?1, '{}', ?2, 'mql', ?2, ?2)",
        [(f"user-{n}", start + n * 1000) for n in range(subjects)])
    conn.executemany(
        "INSERT INTO user_directory (tenant_key, account_id) VALUES (?, NULL)",
        [(f"user-{n}",) for n in range(subjects)])
    conn.executemany(
        "INSERT INTO handoffs (tenant_key, qualification_id, subject_type, subject_id, rule, "
        "qualified_at) VALUES (?2, ?1, 'user', ?2, 'engaged', ?3)",
        [(f"q-{n}", f"user-{n}", start + n * 1000) for n in range(subjects)])
    conn.execute("COMMIT")
    client = pqlsdk.Client(path, rules=RULES)
    as_of = NOW
    before = to_micros(as_of - timedelta(days=2))
    bare_sql = ("SELECT qualification_id, subject_type, subject_id, rule, qualified_at FROM "
                "handoffs WHERE qualified_at <= ? ORDER BY qualified_at, qualification_id")
    ratios = []
    found = 0
    for r in range(rounds):
        timings = {}
        for side in (("pqlsdk", "bare") if r % 2 == 0 else ("bare", "pqlsdk")):
            started = time.perf_counter()
            if side == "bare":
                rows = conn.execute(bare_sql, (before,)).fetchall()
            else:
                found = len(client.overdue(as_of=as_of))
            timings[side] = time.perf_counter() - started
        assert found == len(rows) == subjects
        ratios.append(timings["pqlsdk"] / timings["bare"])
    client.close()
    conn.close()
    return ratios, timings["bare"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    subjects = 10_000 if args.quick else 100_000
    folder = tempfile.mkdtemp(prefix="pqlsdk-lifecycle-")
    try:
        ratios = alias_vs_plain(folder, rounds=10 if args.quick else 20, per_round=500)
        print(f"track() under an alias id / plain track(): median {statistics.median(ratios):.3f}"
              f" (rounds {min(ratios):.3f}-{max(ratios):.3f}; goal <= 1.05)")
        ratios, bare = overdue_vs_range(folder, subjects, rounds=5)
        print(f"overdue() over {subjects:,} / bare indexed range query ({bare * 1000:.0f} ms):"
              f" median {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-"
              f"{max(ratios):.2f}; goal <= 2x)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
