"""SQL statements per call on the hot paths, counted on SQLite's write connection.

    python benchmarks/statements.py

Counts are exact (sqlite3's trace callback sees each statement the connection runs,
BEGIN and COMMIT included), so they need no baseline: a change in them is a change in the
code. The speed figures in track.py and delivery.py show what each statement costs.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk

from track import NOW, RULES, cli


class _Segment:
    """Enough of a segment.analytics.Client for forward_events to write its rows."""

    write_key = "bench"
    send = False


def count(client: pqlsdk.Client, call) -> tuple[int, collections.Counter[str]]:
    """Statements ``call()`` runs on the client's write connection, and their first words."""
    seen: list[str] = []
    conn = client.store.db.conn
    conn.set_trace_callback(seen.append)
    try:
        call()
    finally:
        conn.set_trace_callback(None)
    kinds = collections.Counter(" ".join(sql.split()[:3]) for sql in seen)
    return len(seen), kinds


def measure(quick: bool) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    client = pqlsdk.Client(os.path.join(folder, "pql.db"), rules=RULES, sync_mode=True)
    for _ in range(20):
        client.track("light", "dashboard_viewed", timestamp=NOW)
    client.identify("light", {"plan": "paid"}, account_id="acct-1", timestamp=NOW)
    rows = []
    cases = [
        ("first event of a new user", lambda: client.track("new-1", "report_generated",
                                                          timestamp=NOW)),
        ("first event of a new user in a new account",
         lambda: client.track("new-2", "report_generated", account_id="acct-new",
                              timestamp=NOW)),
        ("returning light user, three rules", lambda: client.track(
            "light", "report_generated", timestamp=NOW)),
        ("returning user, an event no rule reads", lambda: client.track(
            "light", "page_viewed", timestamp=NOW)),
        ("identify, one trait changed", lambda: client.identify(
            "light", {"plan": "trial"}, timestamp=NOW)),
    ]
    for what, call in cases:
        total, kinds = count(client, call)
        rows.append((f"track statements: {what}" if "identify" not in what else what,
                     f"{total} ({', '.join(f'{k} x{v}' for k, v in kinds.most_common())})"))
    client.close()
    mirror = pqlsdk.Client(os.path.join(folder, "mirror.db"), rules=RULES,
                           segment=_Segment(), forward_events=True, sync_mode=True)
    mirror.track("light", "dashboard_viewed", timestamp=NOW)
    total, kinds = count(mirror, lambda: mirror.track("light", "page_viewed", timestamp=NOW))
    rows.append(("track statements: forward_events=True, an event no rule reads",
                 f"{total} ({', '.join(f'{k} x{v}' for k, v in kinds.most_common())})"))
    mirror.close(timeout=0.1)
    return rows


if __name__ == "__main__":
    cli(measure, __doc__)
