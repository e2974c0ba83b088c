"""Eight threads calling track() on distinct users: shared commits vs a commit per call.

    python benchmarks/threads.py [--quick]

A threaded server (gunicorn gthread, a thread pool under an async app) calls track() from
many threads at once. With shared commits (the default) the calls waiting at one moment
are applied in one transaction, each returning once it committed; ``shared_commits=False``
is the earlier behaviour, a transaction per call. Both sides run in the same process, in
alternating rounds, on copies of the same file; the baseline is one thread doing bare
autocommit INSERTs. Figures: events/s of 8 threads against 8 threads without sharing (goal
>= 1.5x), the cost per event against a bare autocommit insert, and p99 latency.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk

from track import NOW, RULES, cli

THREADS = 8


def _round(client: pqlsdk.Client, calls: int, tag: str) -> tuple[float, list[float]]:
    """``calls`` track() per thread from 8 threads: (events/s, latencies)."""
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS + 1)

    def worker(n: int) -> None:
        mine = latencies[n]
        user = f"{tag}-user-{n}"
        start.wait()
        for _ in range(calls):
            began = time.perf_counter()
            client.track(user, "report_generated", timestamp=NOW)
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return THREADS * calls / elapsed, [x for part in latencies for x in part]


def _bare(path: str, calls: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    began = time.perf_counter()
    for n in range(calls):
        conn.execute("INSERT INTO events (user_id, event, ts, properties) VALUES (?, ?, ?, ?)",
                     (f"bare-{n % 8}", "report_generated", n, "{}"))
    elapsed = time.perf_counter() - began
    conn.close()
    return elapsed / calls


def measure(quick: bool, rounds: int = 5, calls: int = 300) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    if quick:
        rounds, calls = 3, 100
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    shared = pqlsdk.Client(os.path.join(folder, "shared.db"), rules=RULES)
    single = pqlsdk.Client(os.path.join(folder, "single.db"), rules=RULES,
                           shared_commits=False)
    bare_path = os.path.join(folder, "bare.db")
    pqlsdk.Client(bare_path).close()
    ratios, costs, on_lat, off_lat, per_batch = [], [], [], [], []
    for n in range(rounds):
        off, lat_off = _round(single, calls, f"r{n}")
        before = (shared._commits.batches, shared._commits.calls)
        on, lat_on = _round(shared, calls, f"r{n}")
        batches = shared._commits.batches - before[0]
        per_batch.append((shared._commits.calls - before[1]) / max(1, batches))
        bare = _bare(bare_path, THREADS * calls)
        ratios.append(on / off)
        costs.append((1 / on) / bare)
        on_lat += lat_on
        off_lat += lat_off
    shared.close()
    single.close()

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98] * 1e6

    return [
        (f"{THREADS} threads, distinct users: events/s, shared commits vs a commit per call "
         f"(goal >= 1.5x)",
         f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}; "
         f"{statistics.median(per_batch):.1f} calls per commit)"),
        (f"{THREADS} threads, shared commits: cost per event vs one bare autocommit INSERT "
         f"(stretch <= 0.65x)",
         f"{statistics.median(costs):.2f}x"),
        (f"p99 latency, {THREADS} threads, shared commits vs a commit per call",
         f"{p99(on_lat):.0f} us vs {p99(off_lat):.0f} us = {p99(on_lat) / p99(off_lat):.2f}x"),
    ]


if __name__ == "__main__":
    cli(measure, __doc__, rounds=5)
