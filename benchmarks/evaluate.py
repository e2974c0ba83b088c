"""evaluate(as_of=) over many subjects, against one bare indexed query per subject.

    python benchmarks/evaluate.py [--quick]        # 100,000 (quick: 10,000) users

The rules are the three typical ones plus a time-based one (gone quiet for a week); the
baseline runs one indexed count per subject with plain sqlite3, in the same run.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk
from pqlsdk.timestamps import to_micros

from track import NOW, RULES, cli, populate

QUIET = {"name": "gone_quiet", "all": [
    {"event": "report_generated", "at_least": 3},
    {"not": {"event": "report_generated", "within": "7d"}},
]}


def measure(quick: bool) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    subjects = 10_000 if quick else 100_000
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    path = os.path.join(folder, "pql.db")
    users = populate(path, subjects * 10, 0, per_user=10)
    conn = sqlite3.connect(path)
    until = to_micros(NOW + timedelta(days=30))
    began = time.perf_counter()
    for n, user in enumerate(users):  # each user's events are in its account's tenant
        conn.execute("SELECT count(*) FROM events WHERE tenant_key = ? AND user_id = ? "
                     "AND event = ? AND ts <= ?",
                     (f"acct-{n // 5}", user, "report_generated", until)).fetchone()
    bare = time.perf_counter() - began
    conn.close()
    client = pqlsdk.Client(path, rules={"rules": [*RULES["rules"], QUIET]})
    began = time.perf_counter()
    found = client.evaluate(as_of=NOW + timedelta(days=30))
    took = time.perf_counter() - began
    client.close()
    count = len(users) + len(users) // 5
    return [
        (f"one bare indexed count per user, {len(users):,} users (baseline)",
         f"{bare:.2f}s"),
        (f"evaluate(as_of=) over {count:,} subjects, four rules "
         f"({len(found):,} qualified)",
         f"{took:.2f}s = {took / bare:.1f}x ({took / count * 1e6:.0f} us/subject)"),
    ]


if __name__ == "__main__":
    cli(measure, __doc__)
