"""A stand-in for Segment's API on 127.0.0.1 that records what arrives at /v1/batch."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SegmentServer:
    """Records accepted batches; can answer 503 (or any status) for the next N requests,
    or hold requests until :meth:`release` (bounded, so a test can never hang on it)."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.requests = 0
        self.fail_next = 0
        self.fail_status = 503
        self.hold = False
        self.arrived = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status = server._answer(self.path, json.loads(body), dict(self.headers))
                payload = json.dumps({"success": True} if status == 200 else
                                     {"code": "test", "message": f"answered {status}"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def _answer(self, path: str, body: dict, headers: dict) -> int:
        with self._lock:
            self.requests += 1
            hold = self.hold
        if path != "/v1/batch":
            return 404
        if hold:
            self.arrived.set()
            self._released.wait(30)
            return 503
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status
            self.batches.append({"body": body, "headers": headers})
        return 200

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
