"""History import against a bare executemany of the same rows, in one run.

    python benchmarks/import_bench.py [--quick]     # 1,000,000 (quick: 100,000) events
    python benchmarks/import_bench.py --events 10000000 --in-order-only   # a long backfill

The import parses Segment-spec JSONL, sorts it (sorted runs), replays it in time order
through the three typical rules in batched transactions; the baseline inserts the same rows
with one ``executemany`` in one transaction into the same schema. The figure is import
rate / baseline rate (goal: at least 0.5), once for the file in time order (as Segment's
archives are) and once for the same lines shuffled. Each import runs in a fresh process,
whose own peak resident memory is reported (``VmHWM``: ``ru_maxrss`` of a spawned process
also counts the peak of the parent it was started from, here the benchmark holding the
baseline's rows, 4 GB at 10,000,000 events).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk.importer import import_jsonl
from pqlsdk.timestamps import to_micros

from track import NOW, RULES

KINDS = ["report_generated", "dashboard_viewed", "teammate_invited", "integration_connected"]


def history(path: str, count: int) -> list[tuple]:
    """Write ``count`` track messages to ``path`` in time order (as Segment's archives
    are); return the same rows for the baseline."""
    rng = random.Random(4)
    users = max(10, count // 100)
    start = NOW - timedelta(days=90)
    rows = []
    seconds = sorted(rng.randrange(90 * 86400) for _ in range(count))
    with open(path, "w") as handle:
        for n in range(count):
            user = f"user-{rng.randrange(users)}"
            account = f"acct-{int(user[5:]) // 5}"
            event = rng.choice(KINDS)
            at = start + timedelta(seconds=seconds[n])
            properties = {}
            if event == "teammate_invited":
                properties = {"invitee_email": f"p{rng.randrange(9)}@x.io"}
            elif event == "integration_connected":
                properties = {"provider": rng.choice(["salesforce", "hubspot", "zapier"])}
            handle.write(json.dumps({
                "type": "track", "userId": user, "event": event, "properties": properties,
                "timestamp": at.isoformat(), "messageId": f"m{n}",
                "context": {"groupId": account}}) + "\n")
            rows.append((f"m{n}", user, account, event, to_micros(at),
                         json.dumps(properties, sort_keys=True)))
    return rows


def shuffled_copy(source: str) -> str:
    """The lines of ``source`` in a random (seeded) order, written beside it; its path."""
    mixed = os.path.join(os.path.dirname(source), "shuffled.jsonl")
    with open(source) as handle:
        lines = handle.readlines()
    random.Random(5).shuffle(lines)
    with open(mixed, "w") as handle:
        handle.writelines(lines)
    return mixed


def measure(quick: bool, events: int | None = None, shuffled: bool = True
            ) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows (``events`` overrides the size; without
    ``shuffled`` only the file in time order is imported)."""
    count = events or (100_000 if quick else 1_000_000)
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    source = os.path.join(folder, "history.jsonl")
    rows = history(source, count)

    bare_path = os.path.join(folder, "bare.db")
    pqlsdk.Client(bare_path).close()
    conn = sqlite3.connect(bare_path, isolation_level=None)
    started = time.perf_counter()
    conn.execute("BEGIN")
    # the same rows as the import writes them: in the tenant of the account, else the user
    conn.executemany("INSERT INTO events (tenant_key, message_id, user_id, account_id, event, "
                     "ts, properties) VALUES (coalesce(?3, ?2), ?1, ?2, ?3, ?4, ?5, ?6)", rows)
    conn.execute("COMMIT")
    bare = time.perf_counter() - started
    conn.close()

    del rows
    ctx = multiprocessing.get_context("spawn")  # a fresh process: its peak memory is the import's
    with ctx.Pool(1) as pool:
        took, applied, qualified, peak = pool.apply(_import, (folder, source))
    rows_out = [
        (f"bare executemany of {count:,} events, one transaction (baseline)",
         f"{count / bare:,.0f} rows/s"),
        (f"import of the same {count:,} events as JSONL, in time order, three rules "
         f"({qualified:,} qualifications)",
         f"{count / took:,.0f} msg/s = {bare / took:.2f}x the baseline rate "
         f"(peak memory {peak:.0f} MiB)"),
    ]
    if shuffled:
        mixed = shuffled_copy(source)
        with ctx.Pool(1) as pool:
            took_s, applied_s, _, peak_s = pool.apply(_import, (folder, mixed))
        assert applied_s == count, (applied, applied_s)
        rows_out.append(
            (f"import of the same {count:,} events shuffled (sorted runs spilled and merged)",
             f"{count / took_s:,.0f} msg/s = {bare / took_s:.2f}x the baseline rate "
             f"(peak memory {peak_s:.0f} MiB)"))
    shutil.rmtree(folder)
    assert applied == count, applied
    return rows_out


def _import(folder: str, source: str) -> tuple[float, int, int, float]:
    """Import ``source`` into a new file (in a process of its own): seconds, messages
    applied, qualifications, and the process's peak resident memory in MiB."""
    path = os.path.join(folder, f"import-{os.getpid()}-{time.monotonic_ns()}.db")
    client = pqlsdk.Client(path, rules=RULES)
    started = time.perf_counter()
    result = import_jsonl(client, source)
    took = time.perf_counter() - started
    client.close()
    os.remove(path)
    return took, result.applied, result.qualifications, peak_mib()


def peak_mib() -> float:
    """This process's own peak resident memory in MiB: ``VmHWM`` on Linux, which starts
    afresh at exec (``getrusage``'s ``ru_maxrss`` keeps the parent's peak across the
    spawn: the benchmark's baseline rows would count as the import's); ``ru_maxrss``
    elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, else KiB


if __name__ == "__main__":
    import argparse

    from track import show

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events, for CI")
    parser.add_argument("--events", type=int, help="how many events (default 1,000,000)")
    parser.add_argument("--in-order-only", action="store_true",
                        help="skip the shuffled file (half the time of a long run)")
    args = parser.parse_args()
    show(measure(args.quick, args.events, shuffled=not args.in_order_only))
