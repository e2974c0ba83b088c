"""A stand-in for Segment's API on 127.0.0.1 that records what arrives at /v1/batch."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SegmentServer:
    """Records accepted batches. It can answer from a script of ``(status, headers)`` (one
    per request), 503 (or any status) for the next N requests, 400 to any batch holding a
    message ``reject`` picks; hold requests until :meth:`release` (silent); answer only
    after ``delay`` seconds; or trickle its answer one byte per ``trickle`` seconds. Every
    wait is bounded, so a test can never hang on it."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.requests = 0
        self.fail_next = 0
        self.fail_status = 503
        self.script: list[tuple[int, dict[str, str]]] = []
        self.reject: Callable[[dict], bool] | None = None
        self.delay = 0.0
        self.trickle = 0.0
        self.hold = False
        self.arrived = threading.Event()
        self.answered = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status, headers = server._answer(self.path, json.loads(body),
                                                 dict(self.headers))
                payload = json.dumps({"success": True} if status == 200 else
                                     {"code": "test", "message": f"answered {status}"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                if server.trickle:  # the body, one byte at a time, for a long while
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(100):
                        if server._released.wait(server.trickle):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    return
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())
                server.answered.set()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def _answer(self, path: str, body: dict, headers: dict) -> tuple[int, dict[str, str]]:
        with self._lock:
            self.requests += 1
            hold = self.hold
        self.arrived.set()
        if path != "/v1/batch":
            return 404, {}
        if hold:
            self._released.wait(30)
            return 503, {}
        if self.delay:
            self._released.wait(self.delay)
        with self._lock:
            if self.script:
                status, extra = self.script.pop(0)
                if status != 200:
                    return status, extra
            elif self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {}
            if self.reject is not None and any(self.reject(m) for m in body["batch"]):
                return 400, {}
            self.batches.append({"body": body, "headers": headers})
        return 200, {}

    def release(self) -> None:
        """Answer held requests (with 503) and hold no more."""
        with self._lock:
            self.hold = False
        self._released.set()

    @property
    def messages(self) -> list[dict]:
        """Every accepted message, in arrival order."""
        with self._lock:
            return [m for b in self.batches for m in b["body"]["batch"]]

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
