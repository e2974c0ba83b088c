"""The benchmark suite: one table, every figure against a baseline measured in the same run.

    python benchmarks/run.py            # full sizes (several minutes)
    python benchmarks/run.py --quick    # small sizes, under a minute
    python benchmarks/run.py --only import --only "track()"   # some sections
    python benchmarks/run.py --compare benchmarks/results/OLD.json   # ratio changes
    python benchmarks/run.py --compare OLD.json --new NEW.json        # two saved runs

Each run's table is written as JSON (``--json PATH``; by default under
``benchmarks/results/``, which git ignores), so ``--compare`` can show in review which ratio
moved. A row measured on PostgreSQL carries ``engine: postgresql`` and is a ratio to
PostgreSQL's own bare insert; the others are SQLite's against SQLite's.

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
import results
import scoring
import statements
import sustained
import threads

import funnel
import track

#: Sections measured on PostgreSQL (their rows are ratios to PostgreSQL's own baseline).
POSTGRESQL_SECTIONS = {"PostgreSQL"}

SUITE = [
    ("track()", lambda quick: track.measure(quick, rounds=7 if quick else 15)),
    ("delivery", lambda quick: delivery.measure(quick, rounds=3 if quick else 11)),
    ("scoring", lambda quick: scoring.measure(quick, rounds=3 if quick else 11)),
    ("import", import_bench.measure),
    ("four processes", concurrency.measure),
    # its PostgreSQL comparison is measured in the PostgreSQL section
    ("threads", lambda quick: threads.measure(quick, rounds=3 if quick else 7,
                                              postgres=False)),
    ("statements", statements.measure),
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


def run(quick: bool, only: list[str]) -> tuple[list[results.Row], float]:
    """Measure the suite (or the sections named in ``only``): its rows and seconds taken."""
    began = time.perf_counter()
    rows: list[results.Row] = []
    unknown = set(only) - {section for section, _ in SUITE}
    if unknown:
        raise SystemExit(f"--only: no section {', '.join(sorted(unknown))}; the sections are "
                         f"{', '.join(section for section, _ in SUITE)}")
    for section, measure in SUITE:
        if only and section not in only:
            continue
        engine = "postgresql" if section in POSTGRESQL_SECTIONS else "sqlite"
        # a section may measure both engines: its PostgreSQL rows say so in their label
        rows += [row._replace(engine="postgresql") if row.what.startswith("PostgreSQL")
                 else row for row in results.rows_of(section, measure(quick), engine)]
        print(f"  ... {section} done", file=sys.stderr)
    return rows, time.perf_counter() - began


def show(rows: list[results.Row], title: str) -> None:
    """Print the table."""
    width = max((len(row.what) for row in rows), default=4)
    print(title)
    print(f"{'':16}{'what':<{width}}  figure")
    for row in rows:
        print(f"{row.section:<16}{row.what:<{width}}  {row.figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--only", action="append", default=[], metavar="SECTION",
                        help="measure only this section (repeatable)")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write this run's table (default: "
                             "benchmarks/results/<UTC time>.json)")
    parser.add_argument("--compare", metavar="OLD.json",
                        help="print each row's ratio change against a saved run")
    parser.add_argument("--new", metavar="NEW.json",
                        help="with --compare: compare this saved run instead of measuring")
    args = parser.parse_args()
    if args.new and not args.compare:
        parser.error("--new needs --compare OLD.json")
    if args.compare and not os.path.exists(args.compare):
        parser.error(f"--compare: no such file {args.compare}")
    if args.new:
        _, rows = results.load(args.new)
    else:
        rows, seconds = run(args.quick, args.only)
        show(rows, f"pqlsdk benchmarks{' (--quick)' if args.quick else ''} on {machine()}")
        print(f"({seconds:.0f}s)")
        path = args.json or results.default_path(args.quick)
        results.save(path, rows, args.quick, machine(), seconds)
        print(f"table written to {path}", file=sys.stderr)
    if args.compare:
        header, old = results.load(args.compare)
        print(f"\nratio changes against {args.compare} ({header.get('when', '?')}):")
        if args.only:
            old = [row for row in old if row.section in args.only]
            rows = [row for row in rows if row.section in args.only]
        for line in results.compare(old, rows):
            print(line)


if __name__ == "__main__":
    main()
