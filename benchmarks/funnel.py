"""funnel() over many stage changes against a bare GROUP BY scan of the same table.

    python benchmarks/funnel.py            # 100,000 and 1,000,000 stage changes
    python benchmarks/funnel.py --quick    # 20,000 and 100,000

Both are timed in the same run on the same file; the ratio should stay flat as the table
grows tenfold (linear growth).
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk.stages import STAGES
from pqlsdk.store.sqlite import fill_tenant_keys
from pqlsdk.timestamps import to_micros

from track import NOW, cli


def populate(path: str, changes: int) -> None:
    """Subjects walking up the funnel (about 3 changes each), some rejected on the way;
    each subject row carries its first entry per stage, as pqlsdk keeps it."""
    pqlsdk.Client(path).close()
    rng = random.Random(9)
    start = to_micros(NOW) - 180 * 86_400_000_000
    rows, users, n = [], [], 0
    while len(rows) < changes:
        user, at = f"u{n}", start + rng.randrange(90 * 86_400_000_000)
        firsts = [None] * len(STAGES)
        firsts[1] = at
        users.append([user, f'{{"lead_source": "{rng.choice(["ads", "organic", "event"])}"}}',
                      at, firsts])
        stage, level = None, 1
        rows.append(("user", user, None, "lead", at, "first_seen", None))
        while rng.random() < 0.6 and level < len(STAGES) - 1:
            level += rng.choice((1, 1, 2))
            level = min(level, len(STAGES) - 1)
            at += rng.randrange(1, 20 * 86_400_000_000)
            stage, prev = STAGES[level], stage or "lead"
            firsts[level] = firsts[level] or at
            rows.append(("user", user, prev, stage, at, "manual", None))
        if rng.random() < 0.1:
            rows.append(("user", user, stage, "unqualified", at + 1, "manual", "no budget"))
        n += 1
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    columns = ", ".join(f"first_{stage}" for stage in STAGES)
    conn.executemany(
        f"INSERT INTO users (user_id, traits, first_seen, {columns}) "
        f"VALUES (?, ?, ?, {', '.join('?' * len(STAGES))})",
        [(u, traits, at, *firsts) for u, traits, at, firsts in users])
    conn.executemany("INSERT INTO stage_changes (subject_type, subject_id, from_stage, "
                     "to_stage, at, source, reason) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    fill_tenant_keys(conn)  # what pqlsdk would have written (issue 19)
    conn.execute("COMMIT")
    conn.close()


def best_of(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _track_p99(client: pqlsdk.Client, calls: int, until: Callable[[], bool] = lambda: True
               ) -> tuple[float, int]:
    """The 99th percentile of track() calls (seconds), paced 1 ms apart: at least
    ``calls`` of them, and more until ``until()``; and how many."""
    times: list[float] = []
    i = 0
    while i < calls or not until():
        i += 1
        started = time.perf_counter()
        client.track(f"p99-{i % 500}", "report_generated", {"n": i})
        times.append(time.perf_counter() - started)
        time.sleep(0.001)
    times.sort()
    return times[int(len(times) * 0.99) - 1], len(times)


def track_beside_funnel(path: str, calls: int) -> tuple[str, str]:
    """track()'s p99 while another thread runs funnel() over and over, against its p99
    alone, on the same file in the same run."""
    import threading

    client = pqlsdk.Client(path)
    alone, _ = _track_p99(client, calls)
    stop, reports = threading.Event(), []

    def report() -> None:
        while not stop.is_set():
            client.funnel(by="lead_source")
            reports.append(1)

    thread = threading.Thread(target=report)
    thread.start()
    beside, made = _track_p99(client, calls, lambda: len(reports) >= 2)
    stop.set()
    thread.join()
    alone_again, _ = _track_p99(client, made)
    client.close()
    baseline = (alone + alone_again) / 2
    return (f"track() p99 over {made:,} calls while funnel(by=...) runs in another thread "
            f"({len(reports)} reports) vs alone ({baseline * 1e6:,.0f} µs)",
            f"{beside / baseline:.2f}x")


def measure(quick: bool) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    sizes = (20_000, 100_000) if quick else (100_000, 1_000_000)
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    rows = []
    for size in sizes:
        path = os.path.join(folder, f"funnel-{size}.db")
        populate(path, size)
        client = pqlsdk.Client(path)
        conn = sqlite3.connect(path)
        bare = best_of(lambda conn=conn: conn.execute(
            "SELECT subject_id, count(*) FROM stage_changes WHERE subject_type = 'user' "
            "GROUP BY subject_id").fetchall())
        plain = best_of(client.funnel)
        split = best_of(lambda client=client: client.funnel(by="lead_source"))
        rows += [
            (f"funnel() over {size:,} stage changes vs a bare GROUP BY scan ({bare:.3f}s)",
             f"{plain / bare:.2f}x"),
            (f"funnel(by='lead_source') over {size:,} stage changes", f"{split / bare:.2f}x"),
        ]
        conn.close()
        client.close()
    rows.append(track_beside_funnel(path, 500 if quick else 2_000))
    return rows


if __name__ == "__main__":
    cli(measure, __doc__)
