"""Real application servers for the recipe tests: a free loopback port, a subprocess, a
bounded poll for readiness (never a fixed sleep), and a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
             ) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # a poll interval, not a wait for the condition


def request(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0
            ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], port: int, cwd: Path | None = None,
            ready_path: str = "/ping") -> Iterator[str]:
    """Run a server until the block ends; yield its base URL once it answers."""
    url = f"http://127.0.0.1:{port}"
    log = open(env.get("SERVER_LOG", os.devnull), "w")  # noqa: SIM115
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{command[0]} exited with {proc.returncode}; see "
                                 f"{env.get('SERVER_LOG')}")
        try:
            return request(url + ready_path, timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, 60, f"{command} to answer")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
