"""The background thread that drains the outbox, one per Client, started lazily."""

from __future__ import annotations

import logging
import sqlite3
import threading

from .outbox import Outbox
from .store import StoreClosed

log = logging.getLogger("pqlsdk")


class Worker:
    """Delivers due outbox rows until stopped; :meth:`wake` starts it and nudges it.

    Woken, it lingers ``linger`` seconds so that rows written meanwhile go out together
    (Segment's client waits its ``upload_interval`` for the same reason). It polls every
    ``poll_interval`` seconds for rows that became due (backoff) or were written by other
    processes, and runs as a daemon thread: interpreter exit never waits for it, and
    whatever it had not delivered stays in the outbox for the next start.
    """

    def __init__(self, outbox: Outbox, poll_interval: float = 1.0, linger: float = 0.05
                 ) -> None:
        self.outbox = outbox
        self.poll_interval = poll_interval
        self.linger = linger
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Start the thread if needed and have it look for due rows now."""
        if not self.running and not self._stop.is_set():
            with self._start_lock:
                if not self.running:
                    self._thread = threading.Thread(target=self._run, name="pqlsdk-delivery",
                                                    daemon=True)
                    self._thread.start()
        self._wake.set()

    def stop(self, timeout: float | None) -> bool:
        """Ask the thread to stop and wait up to ``timeout``; True if it has stopped."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.linger)
            try:
                tried = self.outbox.deliver_once()
            except (StoreClosed, sqlite3.ProgrammingError):
                return  # the Client was closed under us
            except Exception:
                log.exception("pqlsdk: delivery worker error")
                tried = 0
            if not tried:
                self._wake.wait(self.poll_interval)
                self._wake.clear()
