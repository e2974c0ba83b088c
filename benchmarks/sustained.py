"""forward_events=True at a sustained rate: does the outbox stay flat?

    python benchmarks/sustained.py                  # 5,000 track() calls/s for 60 s
    python benchmarks/sustained.py --quick          # for 3 s
    python benchmarks/sustained.py --duration 20 --rate 2000

One thread calls track() at the target rate (paced per 100 ms tick); the Client's delivery
thread mirrors every call to a local HTTP server that answers like Segment's /v1/batch.
Once a second the outbox's length is read. Flat means the length at the end is no larger
than a second's worth of calls: delivery keeps up instead of falling behind.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from delivery import Recorder
from segment.analytics import Client as SegmentClient

import pqlsdk

from track import show


def _paced(client: pqlsdk.Client, path: str, duration: float, rate: int
           ) -> tuple[float, list[int]]:
    """Call track() at ``rate`` per second (or as fast as it goes) for ``duration`` seconds;
    return the rate achieved and the outbox's length once a second."""
    reader = sqlite3.connect(path)
    lengths: list[int] = []
    calls = 0
    started = time.perf_counter()
    next_look = started + 1.0
    tick = 0.1
    while (now := time.perf_counter()) - started < duration:
        target = int((now - started + tick) * rate)
        while calls < target and time.perf_counter() - started < duration:
            client.track(f"u{calls % 5000}", "report_generated", {"n": calls})
            calls += 1
        if time.perf_counter() >= next_look:
            lengths.append(reader.execute("SELECT count(*) FROM outbox").fetchone()[0])
            next_look += 1.0
        pause = started + (target / rate) - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    elapsed = time.perf_counter() - started
    lengths.append(reader.execute("SELECT count(*) FROM outbox").fetchone()[0])
    reader.close()
    return calls / elapsed, lengths


def measure(quick: bool, duration: float | None = None, rate: int = 5_000
            ) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    duration = duration if duration is not None else (3.0 if quick else 60.0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    segment = SegmentClient(write_key="bench",
                            host=f"http://127.0.0.1:{server.server_address[1]}",
                            sync_mode=True)
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    plain_path, path = (os.path.join(folder, f"{name}.db") for name in ("plain", "mirror"))
    plain = pqlsdk.Client(plain_path)
    baseline, _ = _paced(plain, plain_path, min(duration, 10.0), rate)
    plain.close()
    client = pqlsdk.Client(path, segment=segment, forward_events=True)
    achieved, lengths = _paced(client, path, duration, rate)
    drained = client.flush(timeout=60)
    client.close()
    server.shutdown()
    flat = lengths[-1] <= achieved  # at most a second's worth of calls waiting
    return [
        (f"forward_events=True paced at {rate:,} track() calls/s for {duration:.0f} s",
         f"{achieved:,.0f} calls/s ({achieved / baseline:.2f}x of the same pacing with "
         f"delivery off: {baseline:,.0f}/s)"),
        ("  outbox length each second (first, max, last)",
         f"{lengths[0]:,}, {max(lengths):,}, {lengths[-1]:,} "
         f"({'flat' if flat else 'growing'}; drained after: {drained})"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s instead of 60 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds")
    parser.add_argument("--rate", type=int, default=5_000, help="track() calls per second")
    args = parser.parse_args()
    show(measure(args.quick, args.duration, args.rate))


if __name__ == "__main__":
    main()
