"""Shared commits: calls from many threads applied by one writer, one transaction per batch.

A threaded server (gunicorn's gthread workers, a thread pool under an async app) used to pay
one commit per call while the other threads waited for the store's lock. Here each call
joins a queue; the thread that gets the writer's lock takes every call queued so far (its
own among them) and applies them in one transaction, each inside a savepoint of its own,
then commits once. Every caller returns only after the batch holding its call committed:
nothing is acknowledged before it is in the database, as with a commit per call.

- A call whose work raises (a Python error: a bug, a callback-free failure) is rolled back
  to its savepoint and raises in its own thread; the others of its batch commit.
- If the batch as a whole cannot commit (an error from the database driver inside a call,
  a full disk, a lock not granted), each of its calls is run again in a transaction of its
  own, so each gets exactly the result (or the error) it would have had alone.
- A lone call (the single-threaded case) runs as before: one transaction, no savepoint.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import StoreError
from .store import Store, Transaction

T = TypeVar("T")

#: The most calls one transaction carries.
BATCH_LIMIT = 64


class _Request(Generic[T]):
    __slots__ = ("done", "error", "lead", "result", "wake", "work")

    def __init__(self, work: Callable[[Transaction], T]) -> None:
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False  # asked to apply the next batch
        #: Set when the request is done or asked to lead; made only for a caller that waits
        #: (a lone call, the common case, never needs one).
        self.wake: threading.Event | None = None


def _driver_error(exc: BaseException) -> bool:
    """An error from sqlite3 or psycopg: it may have broken the transaction, so the batch
    is not committed around it (its calls run again one by one)."""
    return type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg_pool")


class SharedCommits:
    """Run ``work(tx)`` callables from many threads, several per transaction.

    One thread at a time leads: it applies what is queued as a batch, wakes the callers
    of that batch once it committed, repeats until its own call is done, then hands the
    lead to the oldest call still queued (if any). The others wait on an event of their
    own (no convoy through a lock).

    >>> commits = SharedCommits(store)
    >>> commits.run(lambda tx: tx.insert_event(None, "u1", None, "signup", 0, "{}"))
    """

    def __init__(self, store: Store, limit: int = BATCH_LIMIT) -> None:
        self.store = store
        self.limit = limit
        self._queue: deque[_Request[Any]] = deque()
        self._mutex = threading.Lock()
        self._leading = False
        #: Transactions committed and calls they carried (for benchmarks and tests).
        self.batches = 0
        self.calls = 0

    def run(self, work: Callable[[Transaction], T]) -> T:
        """Apply ``work`` in a transaction (shared with other threads' calls) and return
        its result once that transaction committed; raise what ``work`` raised, or the
        store's error if the transaction could not commit."""
        request: _Request[T] = _Request(work)
        with self._mutex:
            self._queue.append(request)
            lead = not self._leading
            if lead:
                self._leading = True
            else:
                request.wake = threading.Event()
        if not lead:
            request.wake.wait()  # type: ignore[union-attr]
        if not request.done:  # leading now: batches until this call's is committed
            try:
                while not request.done:
                    self._lead()
            finally:
                self._hand_off()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[no-any-return]

    def _hand_off(self) -> None:
        with self._mutex:
            if self._queue:
                following = self._queue[0]
                following.lead = True
                following.wake.set()  # type: ignore[union-attr]  # it waits: it has one
            else:
                self._leading = False

    def _lead(self) -> None:
        """Take what is queued (up to the limit), apply it as one batch, wake its callers."""
        with self._mutex:
            batch = [self._queue.popleft() for _ in range(min(self.limit, len(self._queue)))]
        try:
            self.apply(batch)
        except BaseException as exc:  # interrupted (KeyboardInterrupt): no call waits forever
            for request in batch:
                if not request.done:
                    request.error = StoreError(
                        f"the thread applying this call's batch was interrupted "
                        f"({type(exc).__name__}); nothing of it was committed")
                    request.done = True
            raise
        finally:
            for request in batch:
                if request.wake is not None:
                    request.wake.set()

    def apply(self, batch: list[_Request[Any]]) -> None:
        """Apply ``batch`` in one transaction, each call in a savepoint; fill in each
        request's result or error."""
        if len(batch) == 1:
            self._alone(batch[0])
            return
        try:
            outcomes = self.store.transact(lambda tx: self._together(tx, batch))
        except Exception:
            for request in batch:  # each call again, alone: its own result or error
                self._alone(request)
            return
        self.batches += 1
        self.calls += len(batch)
        for request, (result, error) in zip(batch, outcomes, strict=True):
            request.result, request.error, request.done = result, error, True

    def _alone(self, request: _Request[Any]) -> None:
        try:
            request.result = self.store.transact(request.work)
            self.batches += 1
            self.calls += 1
        except Exception as exc:
            request.error = exc
        request.done = True

    @staticmethod
    def _together(tx: Transaction, batch: list[_Request[Any]]
                  ) -> list[tuple[Any, BaseException | None]]:
        outcomes: list[tuple[Any, BaseException | None]] = []
        for request in batch:
            tx.savepoint()
            try:
                result = request.work(tx)
            except Exception as exc:
                if _driver_error(exc):
                    raise  # the transaction may be broken: run the calls one by one
                tx.rollback_to_savepoint()
                outcomes.append((None, exc))
                continue
            tx.release_savepoint()
            outcomes.append((result, None))
        return outcomes
