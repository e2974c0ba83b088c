"""The benchmark suite: one table, every figure against a baseline measured in the same run.

    python benchmarks/run.py            # full sizes (several minutes)
    python benchmarks/run.py --quick    # small sizes, under a minute

Machines here are shared and noisy, so each figure is a ratio to a bare SQLite operation
(or a plain run) timed alongside it, never an absolute time on its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import time

import async_latency
import backtest_bench
import concurrency
import delivery
import embedded_file
import evaluate
import import_bench
import postgres
import scoring
import sustained

import funnel
import track

SUITE = [
    ("track()", lambda quick: track.measure(quick, rounds=7 if quick else 15)),
    ("delivery", lambda quick: delivery.measure(quick, rounds=3 if quick else 11)),
    ("scoring", lambda quick: scoring.measure(quick, rounds=3 if quick else 11)),
    ("import", import_bench.measure),
    ("four processes", concurrency.measure),
    ("evaluate", evaluate.measure),
    ("funnel", funnel.measure),
    ("embedded file", lambda quick: embedded_file.measure(quick, rounds=5 if quick else 11)),
    ("async (uvicorn)", async_latency.measure),
    ("backtest", lambda quick: backtest_bench.measure(quick, rounds=3 if quick else 11,
                                                      calls=150 if quick else 300)),
    ("sustained", sustained.measure),
    ("PostgreSQL", postgres.measure),
]


def machine() -> str:
    """One line about where the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    quick = parser.parse_args().quick
    began = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    for section, measure in SUITE:
        for what, figure in measure(quick):
            rows.append((section, what, figure))
        print(f"  ... {section} done", file=sys.stderr)
    width = max(len(what) for _, what, _ in rows)
    print(f"pqlsdk benchmarks{' (--quick)' if quick else ''} on {machine()}")
    print(f"{'':16}{'what':<{width}}  figure")
    for section, what, figure in rows:
        print(f"{section:<16}{what:<{width}}  {figure}")
    print(f"({time.perf_counter() - began:.0f}s)")


if __name__ == "__main__":
    main()
