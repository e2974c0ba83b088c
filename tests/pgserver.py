"""A throwaway PostgreSQL server for the tests (and the benchmarks): initdb + pg_ctl on a
free port, or the server named by ``PQLSDK_TEST_POSTGRES``.

Debian keeps the server binaries in ``/usr/lib/postgresql/<version>/bin`` (not on PATH).
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system
user, with its data directory in a folder that user can enter.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile


class NoServer(RuntimeError):
    """No PostgreSQL server could be started on this machine."""


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise NoServer(f"{name} not found (install Debian's postgresql package)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One PostgreSQL server in a temporary directory; :meth:`stop` removes it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pqlsdk-pg-")
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        self._run(_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                  "--no-sync")
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True)
        if done.returncode:
            raise NoServer(f"{' '.join(argv[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        """Start (or start again) the server."""
        self._run(_bin("pg_ctl"), "-D", self.data, "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200", "-l", os.path.join(self.dir, "log"), "-w",
                  "start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut."""
        self._run(_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-l",
                  os.path.join(self.dir, "log"), "-w", "restart")

    def stop(self) -> None:
        """Stop the server and remove its files."""
        try:
            self._run(_bin("pg_ctl"), "-D", self.data, "stop", "-m", "fast")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def server_url() -> tuple[str, Server | None]:
    """``PQLSDK_TEST_POSTGRES`` if set, else a new :class:`Server` (raises :class:`NoServer`)."""
    url = os.environ.get("PQLSDK_TEST_POSTGRES")
    if url:
        return url, None
    server = Server()
    return server.url, server
