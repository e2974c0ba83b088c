"""The background delivery threads: one lane per destination, started lazily.

A destination that hangs (a callback that never returns, a collector that trickles its
answer) holds only its own lane; every other destination keeps delivering.
"""

from __future__ import annotations

import logging
import threading
import time

from .outbox import OVERDUE_HOOK, Outbox, PassResult
from .store import StoreClosed

log = logging.getLogger("pqlsdk")

#: How often (seconds) an ``on_overdue`` lane runs the periodic pass that finds overdue
#: hand-offs (at most; ``evaluate()`` finds them too).
PERIODIC_EVERY = 60.0


class Lane:
    """Delivers one destination's due rows until stopped, on its own daemon thread.

    A woken lane that was idle lingers ``linger`` seconds first, and so does one whose last
    claim emptied its queue (it took fewer rows than it could), so that rows written
    meanwhile go out together (Segment's client waits its ``upload_interval`` for the same
    reason); while a backlog lasts (full claims) it claims again at once. Idle, it polls every
    ``poll_interval`` seconds for rows that became due (backoff) or were written by other
    processes, with a read before it takes the write lock. Only a closed store stops it:
    any other error is logged and the lane goes on.
    """

    def __init__(self, outbox: Outbox, destination: str, stop: threading.Event,
                 poll_interval: float, linger: float) -> None:
        self.outbox = outbox
        self.destination = destination
        self.poll_interval = poll_interval
        self.linger = linger
        self._stop = stop
        self._next_periodic = 0.0
        self._wake = threading.Event()
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
                    self._thread = threading.Thread(
                        target=self._run, name=f"pqlsdk-delivery:{self.destination}",
                        daemon=True)
                    self._thread.start()
        self._wake.set()

    def join(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _periodic(self) -> None:
        """On an ``on_overdue`` lane: the outbox's periodic pass, at most every
        :data:`PERIODIC_EVERY` seconds."""
        periodic = self.outbox.periodic
        if periodic is None or not self.destination.startswith(OVERDUE_HOOK):
            return
        now = time.monotonic()
        if now < self._next_periodic:
            return
        self._next_periodic = now + PERIODIC_EVERY
        periodic()

    def _run(self) -> None:
        idle = True
        self._next_periodic = 0.0
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a wake-up from now on is not lost
            try:
                self._periodic()
                if idle and not self.outbox.due(self.destination):
                    result = PassResult(0, 0)
                else:
                    result = self.outbox.deliver(self.destination)
                self.outbox.report_orphans()
            except StoreClosed:
                return  # the Client was closed
            except Exception:
                if self.outbox.store.closed:
                    return  # closed under us, mid-statement
                log.exception("pqlsdk: delivery to %s failed unexpectedly; going on",
                              self.destination)
                result = PassResult(0, 0)
                self._stop.wait(min(1.0, self.poll_interval))  # do not spin on a fault
            if result.claimed:
                idle = False
                if not result.full and self.linger:
                    self._stop.wait(self.linger)
                continue
            idle = True
            if self._wake.wait(self.poll_interval) and self.linger:
                self._stop.wait(self.linger)


class Worker:
    """The lanes of one Client: :meth:`wake` starts and nudges them, :meth:`stop` ends them.

    Lanes are daemon threads: interpreter exit never waits for them, and whatever they had
    not delivered stays in the outbox for the next start.
    """

    def __init__(self, outbox: Outbox, poll_interval: float = 1.0, linger: float = 0.05
                 ) -> None:
        self.outbox = outbox
        self.poll_interval = poll_interval
        self.linger = linger
        self._stop = threading.Event()
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None

    def _listen(self) -> None:
        """On PostgreSQL: wake the lanes as soon as any process on any host writes outbox
        rows (LISTEN/NOTIFY), so an idle worker does not wait a poll interval."""
        store = self.outbox.store
        while not self._stop.is_set() and not store.closed:
            try:
                if store.wait_for_rows(self.poll_interval) and not self._stop.is_set():
                    self.wake()
            except StoreClosed:
                return

    @property
    def running(self) -> bool:
        """Whether any lane's thread is alive."""
        return any(lane.running for lane in list(self._lanes.values()))

    def wake(self) -> None:
        """Start (or nudge) the lane of every destination this process delivers to."""
        if self._stop.is_set():
            return
        if self.outbox.store.engine == "postgresql" and self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = threading.Thread(target=self._listen, daemon=True,
                                                      name="pqlsdk-delivery:listen")
                    self._listener.start()
        for destination in self.outbox.destinations():
            lane = self._lanes.get(destination)
            if lane is None:
                with self._lock:
                    lane = self._lanes.setdefault(destination, Lane(
                        self.outbox, destination, self._stop, self.poll_interval,
                        self.linger))
            lane.wake()

    def stop(self, timeout: float | None) -> bool:
        """Ask the lanes to stop and wait up to ``timeout`` in all; True if all stopped."""
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.wake()
        for lane in lanes:
            lane.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running
