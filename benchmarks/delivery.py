"""Cost of delivery: track() with the outbox on vs off, and how fast the worker drains it.

    python benchmarks/delivery.py            # 100,000 events stored, 10,000 rows drained
    python benchmarks/delivery.py --quick

Both sides of each ratio are measured in the same run, alternating rounds, against a local
HTTP server on 127.0.0.1 that answers like Segment's /v1/batch.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from segment.analytics import Client as SegmentClient

import pqlsdk
from pqlsdk.outbox import wall_micros
from pqlsdk.sinks import event_message

from track import NOW, RULES, cli, per_call, populate

# the three typical rules, plus one that qualifies each user on its third report of the run,
# so that the "on" side writes outbox rows for a good share of its calls
DELIVERY_RULES = {"rules": [*RULES["rules"], {"name": "three_reports", "all": [
    {"event": "report_generated", "at_least": 3, "within": "1h"}]}]}


class Recorder(BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with Recorder.lock:
            Recorder.received += len(body["batch"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def measure(quick: bool, rounds: int = 11, calls: int = 300) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    events = 20_000 if quick else 100_000
    drain = 2_000 if quick else 10_000

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    segment = SegmentClient(write_key="bench", host=url, sync_mode=True)

    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    paths = {name: os.path.join(folder, f"{name}.db") for name in ("off", "on", "mirror")}
    users = populate(paths["off"], events, 0)
    for name in ("on", "mirror"):
        populate(paths[name], events, 0)

    clients = {
        "off": pqlsdk.Client(paths["off"], rules=DELIVERY_RULES),
        "on": pqlsdk.Client(paths["on"], rules=DELIVERY_RULES, segment=segment,
                            on_qualified=lambda q: None),
        "mirror": pqlsdk.Client(paths["mirror"], rules=DELIVERY_RULES, segment=segment,
                                forward_events=True, on_qualified=lambda q: None),
    }
    rng = random.Random(3)

    def caller(client: pqlsdk.Client):
        return lambda: client.track(rng.choice(users), "report_generated", timestamp=NOW)

    ratios: dict[str, list[float]] = {"on": [], "mirror": []}
    for _ in range(rounds):
        off = per_call(caller(clients["off"]), calls)
        on = per_call(caller(clients["on"]), calls)
        mirror = per_call(caller(clients["mirror"]), calls)
        off = (off + per_call(caller(clients["off"]), calls)) / 2
        ratios["on"].append(on / off)
        ratios["mirror"].append(mirror / off)
    qualified = len(clients["on"].qualifications())
    for client in clients.values():
        client.close(timeout=30)

    # drain: rows written while nothing delivers, then one Client's worker empties the outbox
    drain_path = os.path.join(folder, "drain.db")
    writer = pqlsdk.Client(drain_path)
    with writer.store.write() as tx:
        stamp = wall_micros()
        tx.enqueue([
            ("segment", "track", f"u{i}",
             json.dumps([event_message("track", f"u{i}", "2026-11-01T00:00:00.000+00:00",
                                       f"m-{i}", None, event="report_generated",
                                       properties={"n": i})]), stamp)
            for i in range(drain)
        ])
    writer.close()
    Recorder.received = 0
    started = time.perf_counter()
    reader = pqlsdk.Client(drain_path, segment=segment)
    assert reader.flush(timeout=300), "the outbox did not drain"
    elapsed = time.perf_counter() - started
    reader.close()
    server.shutdown()
    assert Recorder.received == drain, (Recorder.received, drain)

    total = rounds * calls
    return [
        (f"track(), delivery on vs off ({qualified:,} of {total:,} calls qualify: "
         "a callback row and a Segment row each)", f"{statistics.median(ratios['on']):.2f}x"),
        ("track(), forward_events=True vs delivery off (a row per call)",
         f"{statistics.median(ratios['mirror']):.2f}x"),
        (f"worker drains {drain:,} outbox rows to a local Segment",
         f"{drain / elapsed:,.0f} rows/s"),
    ]


if __name__ == "__main__":
    cli(measure, __doc__, rounds=11)
