"""The embedded file in production: the check at open, track() while pruning, and the cost
of synchronous="full", each against a baseline measured in the same run.

    python benchmarks/embedded_file.py            # the open check on a 1 GB file
    python benchmarks/embedded_file.py --quick    # a 32 MB file, for CI

- **open check**: ``check_header`` + connect + ``probe`` (what ``Client(...)`` adds to an
  open) on a file of the given size, median of 15 opens, against a bare
  ``sqlite3.connect`` + schema read of the same file. The 1 GB file is generated once in
  the temp dir and reused (``PQLSDK_BENCH_DIR`` to choose where). The page cache is warm
  (the machine is shared: caches are not dropped).
- **track() while pruning**: ``Client(retention="400d")`` whose pruner runs all the time
  (a new sweep right after each, not the default 60 s rest) on a file where half the
  events are older than the retention, against the same Client without retention on a copy
  of the same file; rounds alternate (in a rotating order) and the figure is the median
  ratio. The pruner works at most ``retention.DUTY`` of the time, so few old events go in
  the few seconds measured: ``client.prune()`` or ``pqlsdk prune`` clear a backlog.
- **synchronous**: ``track()`` with ``synchronous="full"`` against the default ``"normal"``,
  on copies of one file, alternating rounds; the median ratio.
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
from datetime import timedelta

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk import filecheck
from pqlsdk.store.sqlite import fill_tenant_keys
from pqlsdk.timestamps import to_micros

from track import NOW, RULES, cli, per_call

KINDS = ["report_generated", "dashboard_viewed", "export", "comment_added"]


def grow(path: str, target_bytes: int) -> int:
    """A pqlsdk file of at least ``target_bytes``: events with ~150 bytes of properties
    over 20,000 users; returns the number of events."""
    pqlsdk.Client(path, rules=RULES).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(3)
    start = to_micros(NOW - timedelta(days=800))
    span = 800 * 86400 * 1_000_000
    events = 0
    while os.path.getsize(path) + os.path.getsize(path + "-wal") < target_bytes:
        rows = [(f"user-{rng.randrange(20_000)}", f"acct-{rng.randrange(4_000)}",
                 rng.choice(KINDS), start + rng.randrange(span),
                 f'{{"page": "/reports/{rng.randrange(1000)}", "plan": "trial", '
                 f'"browser": "firefox", "referrer": "https://example.com/'
                 f'{rng.randrange(1000)}", "session": "{rng.getrandbits(128):032x}"}}')
                for _ in range(50_000)]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (tenant_key, user_id, account_id, event, ts, "
                         "properties) VALUES (?2, ?1, ?2, ?3, ?4, ?5)", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        events += len(rows)
    conn.close()
    return events


def open_check(quick: bool) -> list[tuple[str, str]]:
    """The check at open on a large file."""
    size = (32 if quick else 1024) * 1024 * 1024
    folder = os.environ.get("PQLSDK_BENCH_DIR") or tempfile.gettempdir()
    path = os.path.join(folder, f"pqlsdk-bench-{size >> 20}mb.db")
    made = ""
    if not os.path.exists(path) or os.path.getsize(path) < size:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        began = time.perf_counter()
        grow(path, size)
        made = f", generated in {time.perf_counter() - began:.0f}s"
    actual = os.path.getsize(path)

    def bare() -> None:
        conn = sqlite3.connect(path)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.close()

    def checked() -> None:
        conn = sqlite3.connect(path)
        filecheck.check_header(conn, path)
        conn.execute("PRAGMA cell_size_check = ON")
        filecheck.probe(conn)
        conn.close()

    def client() -> None:
        pqlsdk.Client(path, rules=RULES, sync_mode=True).close()

    bare_t, check_t, client_t = [], [], []
    for _ in range(15):
        bare_t.append(per_call(bare, 1))
        check_t.append(per_call(checked, 1))
        client_t.append(per_call(client, 1))
    rows = [
        (f"bare connect + schema read, {actual / 2**20:,.0f} MB file (baseline{made})",
         f"{statistics.median(bare_t) * 1e3:.2f} ms"),
        ("open check (header, schema, both ends of every b-tree)",
         f"{statistics.median(check_t) * 1e3:.2f} ms (max {max(check_t) * 1e3:.2f} ms; "
         f"goal <= 50 ms)"),
        ("Client(...) open and close, all included",
         f"{statistics.median(client_t) * 1e3:.2f} ms"),
    ]
    if not quick:  # what `pqlsdk doctor` costs on it, for the README
        conn = sqlite3.connect(path)
        began = time.perf_counter()
        problems = filecheck.integrity_check(conn)
        verdict = "ok" if not problems else "DAMAGED"
        rows.append(("pqlsdk doctor's full integrity_check (once)",
                     f"{time.perf_counter() - began:.1f} s ({verdict})"))
        conn.close()
    return rows


def _populate_with_old(path: str, events: int) -> list[str]:
    """``events`` events over 1,000 users, half older than 400 days."""
    pqlsdk.Client(path, rules=RULES).close()
    users = [f"user-{n}" for n in range(1000)]
    rng = random.Random(5)
    now = to_micros(NOW)
    day = 86400 * 1_000_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO users (user_id, account_id, traits, first_seen) VALUES (?, ?, ?, ?)",
        [(u, f"acct-{i // 5}", '{"plan": "trial"}', now - 800 * day)
         for i, u in enumerate(users)])
    conn.executemany("INSERT INTO events (user_id, account_id, event, ts, properties) "
                     "VALUES (?, ?, ?, ?, ?)",
                     ((users[i], f"acct-{i // 5}", rng.choice(KINDS),
                       now - rng.randrange(800 * day), f'{{"n": {n}}}')
                      for n, i in ((n, rng.randrange(len(users))) for n in range(events))))
    fill_tenant_keys(conn)  # what pqlsdk would have written (issue 19)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return users


def alternate(sides: dict[str, object], rounds: int, calls: int) -> dict[str, list[float]]:
    """Per side, the per-call time of each round; sides alternate within a round, in an
    order that rotates from round to round (so that no side always comes last)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(per_call(sides[name], calls))  # type: ignore[arg-type]
    return times


def _old_events(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE ts < ?",
                            (to_micros(NOW - timedelta(days=400)),)).fetchone()[0]


def pruning(quick: bool, rounds: int, calls: int) -> list[tuple[str, str]]:
    """track() with retention while the pruner runs, against without."""
    events = 100_000 if quick else 1_000_000
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    plain_path = os.path.join(folder, "plain.db")
    users = _populate_with_old(plain_path, events)
    pruned_path = os.path.join(folder, "pruned.db")
    base_path = os.path.join(folder, "base.db")
    shutil.copy(plain_path, pruned_path)
    shutil.copy(plain_path, base_path)
    old = _old_events(pruned_path)
    plain = pqlsdk.Client(plain_path, rules=RULES)
    kept = pqlsdk.Client(pruned_path, rules=RULES, retention="400d")
    assert kept._pruner is not None
    kept._pruner.rest = 0.05  # a sweep always under way while we measure
    base = sqlite3.connect(base_path, isolation_level=None)
    base.execute("PRAGMA synchronous = NORMAL")
    rng = random.Random(9)
    at = NOW

    def bare() -> None:
        base.execute("INSERT INTO events (user_id, account_id, event, ts, properties) "
                     "VALUES (?, 'acct-1', 'report_generated', ?, '{}')",
                     (rng.choice(users), to_micros(at)))

    def without() -> None:
        plain.track(rng.choice(users), "report_generated", timestamp=at)

    def with_retention() -> None:
        kept.track(rng.choice(users), "report_generated", timestamp=at)

    times = alternate({"bare": bare, "without": without, "with": with_retention}, rounds,
                      calls)
    plain.close()
    kept.close()
    pruned = old - _old_events(pruned_path)
    base.close()
    shutil.rmtree(folder)
    ratio = statistics.median(w / o for w, o in zip(times["with"], times["without"],
                                                     strict=True))
    without_x = statistics.median(o / b for o, b in zip(times["without"], times["bare"],
                                                        strict=True))
    return [
        (f"bare sqlite3 INSERT, {events:,} events (baseline)",
         f"{statistics.median(times['bare']) * 1e6:.1f} us/call"),
        ("track() without retention", f"{without_x:.2f}x"),
        ("track() with retention=400d while pruning runs, vs without",
         f"{ratio:.2f}x (goal <= 1.1x; {pruned:,} of {old:,} old events pruned "
         f"meanwhile)"),
    ]


def synchronous(quick: bool, rounds: int, calls: int) -> list[tuple[str, str]]:
    """track() with synchronous="full" against "normal"."""
    events = 20_000 if quick else 200_000
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    normal_path = os.path.join(folder, "normal.db")
    users = _populate_with_old(normal_path, events)
    full_path = os.path.join(folder, "full.db")
    shutil.copy(normal_path, full_path)
    normal = pqlsdk.Client(normal_path, rules=RULES)
    full = pqlsdk.Client(full_path, rules=RULES, synchronous="full")
    rng = random.Random(2)

    def track_normal() -> None:
        normal.track(rng.choice(users), "report_generated", timestamp=NOW)

    def track_full() -> None:
        full.track(rng.choice(users), "report_generated", timestamp=NOW)

    times = alternate({"normal": track_normal, "full": track_full}, rounds, calls)
    normal.close()
    full.close()
    shutil.rmtree(folder)
    ratio = statistics.median(f / n for f, n in zip(times["full"], times["normal"],
                                                     strict=True))
    return [
        ('track(), synchronous="normal" (the default; baseline)',
         f"{statistics.median(times['normal']) * 1e6:.1f} us/call"),
        ('track(), synchronous="full"',
         f"{ratio:.2f}x ({statistics.median(times['full']) * 1e6:.1f} us/call)"),
    ]


def measure(quick: bool, rounds: int = 11, calls: int = 200) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    return (open_check(quick) + pruning(quick, rounds, calls)
            + synchronous(quick, rounds, calls))


if __name__ == "__main__":
    cli(measure, __doc__, rounds=11)
