"""Four processes tracking into one SQLite file, against one process alone, in one run.

    python benchmarks/concurrency.py [--quick]

Each process tracks light users' events through the three typical rules and records each
call's latency; the figures are total events/s and p50/p99 latency, four processes vs one.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk

from track import NOW, RULES, cli, populate


def worker(path: str, calls: int, seed: int, users: list[str], start, out) -> None:
    client = pqlsdk.Client(path, rules=RULES)
    rng = random.Random(seed)
    latencies = []
    start.wait()
    for _ in range(calls):
        began = time.perf_counter()
        client.track(rng.choice(users), "report_generated", timestamp=NOW)
        latencies.append(time.perf_counter() - began)
    client.close()
    out.put(latencies)


def run(path: str, processes: int, calls: int, users: list[str]) -> tuple[float, list[float]]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(path, calls, n, users, start, out))
             for n in range(processes)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # let every process import and open the file before the clock starts
    began = time.perf_counter()
    start.set()
    latencies = [x for _ in procs for x in out.get(timeout=600)]
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    return processes * calls / elapsed, latencies


def measure(quick: bool) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    calls = 1_000 if quick else 5_000
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    one_path, four_path = (os.path.join(folder, name) for name in ("one.db", "four.db"))
    users = populate(one_path, 50_000, 0)
    populate(four_path, 50_000, 0)
    one_rate, one_lat = run(one_path, 1, 4 * calls, users)
    four_rate, four_lat = run(four_path, 4, calls, users)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1e6

    return [
        ("one process: track() events/s (baseline)", f"{one_rate:,.0f}/s"),
        ("four processes, one file: total events/s", f"{four_rate:,.0f}/s = "
                                                     f"{four_rate / one_rate:.2f}x one"),
        ("p50 latency, four processes vs one",
         f"{pct(four_lat, 50):.0f} us vs {pct(one_lat, 50):.0f} us = "
         f"{pct(four_lat, 50) / pct(one_lat, 50):.2f}x"),
        ("p99 latency, four processes vs one",
         f"{pct(four_lat, 99):.0f} us vs {pct(one_lat, 99):.0f} us = "
         f"{pct(four_lat, 99) / pct(one_lat, 99):.2f}x"),
    ]


if __name__ == "__main__":
    cli(measure, __doc__)
