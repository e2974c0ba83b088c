"""Cost of delivery: track() with the outbox on vs off, and how fast the worker drains it.

    python benchmarks/delivery.py            # 100,000 events stored, 10,000 rows drained
    python benchmarks/delivery.py --quick

Both sides of each ratio are measured in the same run, alternating rounds, against a local
HTTP server on 127.0.0.1 that answers like Segment's /v1/batch. The server runs in a process
of its own (as Segment's API is not in the application's process), keeping connections
alive as Segment's does; ``--collector-here`` runs it on a thread of this process instead
(the releases before issue 21f measured so: the ratio then carries the server's own work).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from segment.analytics import Client as SegmentClient

import pqlsdk
from pqlsdk.messages import event_message
from pqlsdk.outbox import wall_micros

from track import NOW, RULES, cli, per_call, populate

# the three typical rules, plus one that qualifies each user on its third report of the run,
# so that the "on" side writes outbox rows for a good share of its calls
DELIVERY_RULES = {"rules": [*RULES["rules"], {"name": "three_reports", "all": [
    {"event": "report_generated", "at_least": 3, "within": "1h"}]}]}


class Recorder(BaseHTTPRequestHandler):
    """Answers like Segment's /v1/batch and counts the messages; ``GET`` says how many."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Segment's API
    disable_nagle_algorithm = True  # else each answer's body waits out a delayed ACK
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with Recorder.lock:
            Recorder.received += len(body["batch"])
        self._answer(b"{}")

    def do_GET(self) -> None:
        self._answer(str(Recorder.received).encode())

    def _answer(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class Collector:
    """The local Segment stand-in: in a child process (default) or on a thread here."""

    here = "--collector-here" in sys.argv

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        if self.here:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
            threading.Thread(target=self.server.serve_forever, args=(0.05,),
                             daemon=True).start()
            port = self.server.server_address[1]
        else:
            self.process = subprocess.Popen([sys.executable, __file__, "--serve"],
                                            stdout=subprocess.PIPE, text=True)
            assert self.process.stdout is not None
            port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{port}"

    @property
    def received(self) -> int:
        """Messages received so far."""
        if self.process is None:
            return Recorder.received
        import urllib.request

        with urllib.request.urlopen(self.url) as answer:
            return int(answer.read())

    def close(self) -> None:
        """Stop the server."""
        if self.process is None:
            self.server.shutdown()
        else:
            self.process.kill()
            self.process.wait()


def serve() -> None:
    """The collector's process: print the port, serve until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    print(server.server_address[1], flush=True)
    server.serve_forever(0.05)


def measure(quick: bool, rounds: int = 11, calls: int = 300) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    events = 20_000 if quick else 100_000
    drain = 2_000 if quick else 10_000

    collector = Collector()
    segment = SegmentClient(write_key="bench", host=collector.url, sync_mode=True)

    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    paths = {name: os.path.join(folder, f"{name}.db") for name in ("off", "on", "mirror")}
    users = populate(paths["off"], events, 0)
    for name in ("on", "mirror"):
        populate(paths[name], events, 0)

    clients = {
        "off": pqlsdk.Client(paths["off"], rules=DELIVERY_RULES),
        "on": pqlsdk.Client(paths["on"], rules=DELIVERY_RULES, segment=segment,
                            on_qualified={"bench": lambda q: None}),
        "mirror": pqlsdk.Client(paths["mirror"], rules=DELIVERY_RULES, segment=segment,
                                forward_events=True, on_qualified={"bench": lambda q: None}),
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

    collector.close()
    drains = drain_rates(drain, folder)
    total = rounds * calls
    return [
        (f"track(), delivery on vs off ({qualified:,} of {total:,} calls qualify: "
         "a callback row and a Segment row each)", f"{statistics.median(ratios['on']):.2f}x"),
        ("track(), forward_events=True vs delivery off (a row per call)",
         f"{statistics.median(ratios['mirror']):.2f}x"),
        *drains,
    ]


def _segment_rows(path: str, count: int) -> None:
    """``count`` mirrored-track rows for Segment, written while nothing delivers."""
    writer = pqlsdk.Client(path)
    with writer.store.write() as tx:
        stamp = wall_micros()
        tx.enqueue([
            ("segment", "track", f"u{i}",
             json.dumps([event_message("track", f"u{i}", "2026-11-01T00:00:00.000+00:00",
                                       f"m-{i}", None, event="report_generated",
                                       properties={"n": i})]), stamp)
            for i in range(count)
        ])
    writer.close()


def _callback_rows(path: str, count: int) -> None:
    """``count`` qualifications, each with a row for the callback named ``bench``."""
    writer = pqlsdk.Client(path, rules=FIRST_REPORT, on_qualified={"bench": lambda q: None})
    writer._worker.stop(0)  # write only: the rows wait in the outbox
    for i in range(count):
        writer.track(f"u{i}", "report_generated", timestamp=NOW)
    writer.close(timeout=0)


FIRST_REPORT = {"rules": [{"name": "first_report", "all": [
    {"event": "report_generated", "at_least": 1}]}]}


def _drain(path: str, worker: bool, segment: object | None) -> float:
    """Seconds to empty the outbox: by the delivery threads (``flush(timeout)`` only waits)
    or by ``flush()`` in the calling thread (``sync_mode``)."""
    received = []
    started = time.perf_counter()
    client = pqlsdk.Client(path, segment=segment, sync_mode=not worker,
                           on_qualified={"bench": received.append})
    assert client.flush(timeout=600) if worker else client.flush(), "did not drain"
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def drain_rates(count: int, folder: str) -> list[tuple[str, str]]:
    """Rows/s drained by the worker thread alone vs by ``flush()`` in the caller, to a
    callback and to a local Segment, each ratio from one run on copies of one file."""
    import shutil

    collector = Collector()
    segment = SegmentClient(write_key="bench", host=collector.url, sync_mode=True)
    figures = []
    for what, make, sink in (("callback rows", _callback_rows, None),
                             ("Segment messages", _segment_rows, segment)):
        source = os.path.join(folder, f"drain-{what.split()[0]}.db")
        make(source, count)
        times = {}
        for side in ("caller", "worker"):
            copy = os.path.join(folder, f"drain-{side}-{what.split()[0]}.db")
            shutil.copy(source, copy)
            before = collector.received if sink is not None else 0
            times[side] = _drain(copy, side == "worker", sink)
            if sink is not None:
                assert collector.received - before == count, (collector.received, count)
        figures.append((
            f"worker thread drains {count:,} {what} (vs flush() in the caller: "
            f"{count / times['caller']:,.0f}/s)",
            f"{count / times['worker']:,.0f}/s ({times['caller'] / times['worker']:.2f}x)"))
    collector.close()
    return figures


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        if Collector.here:
            sys.argv.remove("--collector-here")
        cli(measure, __doc__, rounds=11)
