"""A trivial endpoint's latency under uvicorn while a burst of writes waits for another
process's write lock and a slow ``async def`` callback runs: AsyncClient against the
blocking Client called from ``async def``, both against the idle server, in one run.

    python benchmarks/async_latency.py [--quick]

The server is the FastAPI recipe (examples/fastapi_app) under a real uvicorn on a free
loopback port; a prober sends sequential GET /ping requests throughout each phase.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from track import cli  # noqa: E402


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, body: dict | None = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as answer:
        answer.read()


@contextlib.contextmanager
def _server(db: str):
    port = _port()
    env = {**os.environ, "PQL_DB": db, "PQL_SLOW_CALLBACK": "1.0"}
    uvicorn = os.path.join(os.path.dirname(sys.executable), "uvicorn")
    proc = subprocess.Popen([uvicorn, "async_app:app", "--app-dir", HERE, "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(url + "/ping")
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("uvicorn did not start") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _probe(url: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        _get(url + "/ping")
        out.append(time.perf_counter() - began)


def phase(url: str, db: str, route: str | None, hold: float, burst: int, tag: str
          ) -> list[float]:
    """/ping latencies while (unless ``route`` is None) ``burst`` writes to ``route`` wait
    for a write lock another connection holds for ``hold`` seconds."""
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=_probe, args=(url, stop, latencies))
    prober.start()
    if route is None:
        time.sleep(hold + 0.5)  # the benchmark's own measuring window, not a wait
    else:
        holder = sqlite3.connect(db, isolation_level=None, timeout=60)
        holder.execute("BEGIN IMMEDIATE")
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_get, url + route,
                                   {"user_id": f"{tag}{n % 10}", "event": "report_generated"})
                       for n in range(burst)]
            time.sleep(hold)  # the other process holds the lock this long
            holder.execute("COMMIT")
            holder.close()
            for future in futures:
                future.result()
    stop.set()
    prober.join()
    return latencies


def _figure(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (f"p50 {statistics.median(ordered) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms, "
            f"max {ordered[-1] * 1e3:.1f} ms ({len(ordered)} pings)")


def measure(quick: bool) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    hold, burst = (0.5, 30) if quick else (1.5, 120)
    db = os.path.join(tempfile.mkdtemp(prefix="pqlsdk-bench-"), "pql.db")
    with _server(db) as url:
        _get(url + "/track", {"user_id": "warm", "event": "opened"})
        idle = phase(url, db, None, hold, burst, "i")
        async_ = phase(url, db, "/track", hold, burst, "a")
        blocking = phase(url, db, "/track-blocking", hold, burst, "b")
    base_p95 = sorted(idle)[int(0.95 * (len(idle) - 1))]

    def ratio(values: list[float]) -> str:
        p95 = sorted(values)[int(0.95 * (len(values) - 1))]
        return (f"p95 {p95 / base_p95:.2f}x idle, max {max(values) / max(idle):.1f}x idle")

    return [
        ("/ping, idle server", _figure(idle)),
        (f"/ping, {burst} AsyncClient writes, lock held {hold}s, 1s callback",
         _figure(async_)),
        ("  ratio", ratio(async_)),
        (f"/ping, {burst} blocking writes from async def, same", _figure(blocking)),
        ("  ratio", ratio(blocking)),
    ]


if __name__ == "__main__":
    cli(measure, __doc__)
