"""The start of a call (issue 21h) against the way it was: in one process, on one store,
rounds alternating (ABBA) between ``Transaction.lock_user`` and the three reads it
replaced (the alias, then the directory, then the user's snapshot; on PostgreSQL the alias
read in a round trip of its own).

    python benchmarks/call_start.py            # SQLite on 1,000,000 events, and PostgreSQL
    python benchmarks/call_start.py --quick    # SQLite on 100,000 events

Figures are medians of the per-round ratios new / old (below 1: the new start is faster),
wall time and, on SQLite, this process's CPU time.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import pqlsdk
from pqlsdk.store.postgres import PgTransaction
from pqlsdk.store.sqlite import Transaction

from track import NOW, RULES, cli, populate


def _old_start(tx: Any, user_id: str, account_id: str | None) -> str:
    """The start before issue 21h: the alias read, then ``lock_subjects``."""
    user_id = tx.alias_of(user_id) or user_id
    tx.lock_subjects(user_id, account_id)
    return user_id


def _alternate(cls: type, calls: dict[str, Callable[[], Any]], rounds: int, per_round: int
               ) -> dict[str, tuple[list[float], list[float]]]:
    """Per call kind, the per-round (wall, CPU) ratios new / old."""
    new = cls.lock_user
    found: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in calls}
    try:
        for n in range(rounds):
            for kind, call in calls.items():
                sides = {}
                for name, start in ([("old", _old_start), ("new", new)] if n % 2 == 0
                                    else [("new", new), ("old", _old_start)]):
                    cls.lock_user = start
                    wall, cpu = time.perf_counter(), time.process_time()
                    for _ in range(per_round):
                        call()
                    sides[name] = (time.perf_counter() - wall, time.process_time() - cpu)
                found[kind][0].append(sides["new"][0] / sides["old"][0])
                found[kind][1].append(sides["new"][1] / sides["old"][1])
    finally:
        cls.lock_user = new
    return found


def _rows(engine: str, found: dict[str, tuple[list[float], list[float]]], cpu: bool
          ) -> list[tuple[str, str]]:
    rows = []
    for kind, (wall, used) in found.items():
        figure = (f"{statistics.median(wall):.2f}x wall "
                  f"({min(wall):.2f}-{max(wall):.2f})")
        if cpu:
            figure += f", {statistics.median(used):.2f}x CPU"
        rows.append((f"{engine}: start of a call, new / old, {kind}", figure))
    return rows


def measure(quick: bool, rounds: int = 20, calls: int = 200) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    path = os.path.join(folder, "pql.db")
    users = populate(path, 100_000 if quick else 1_000_000, 1_000)
    client = pqlsdk.Client(path, rules=RULES)
    rng = random.Random(5)
    newcomers = iter(range(10**9))
    found = _alternate(Transaction, {
        "light user": lambda: client.track(rng.choice(users), "report_generated",
                                           timestamp=NOW),
        "an event no rule reads": lambda: client.track(rng.choice(users), "page_viewed",
                                                       timestamp=NOW),
        "first event": lambda: client.track(f"new-{next(newcomers)}", "report_generated",
                                            timestamp=NOW),
    }, rounds, calls)
    client.close()
    shutil.rmtree(folder)
    rows = _rows("SQLite", found, cpu=True)
    if quick:
        return rows
    from pgserver import NoServer, server_url

    try:
        url, server = server_url()
    except NoServer as exc:
        return [*rows, ("PostgreSQL", f"not measured: {exc}")]
    try:
        client = pqlsdk.Client(url, schema="bench_call_start", rules=RULES)
        known = [f"user-{n}" for n in range(300)]
        for n, user in enumerate(known):
            client.identify(user, {"plan": "paid"}, account_id=f"acct-{n // 5}",
                            timestamp=NOW)
        found = _alternate(PgTransaction, {"light user": lambda: client.track(
            rng.choice(known), "report_generated", timestamp=NOW)}, rounds, calls // 2)
        client.close()
    finally:
        if server is not None:
            server.stop()
    return rows + _rows("PostgreSQL", found, cpu=False)


if __name__ == "__main__":
    cli(measure, __doc__, rounds=20)
