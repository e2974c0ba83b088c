"""Shared commits: calls from many threads applied by one writer, one transaction per batch.

A threaded server (gunicorn's gthread workers, a thread pool under an async app) used to pay
one commit per call while the other threads waited for the store's lock. Here each call
joins a queue; the thread that gets the writer's lock takes every call queued so far (its
own among them) and applies them in one transaction, taking in the calls queued meanwhile
(up to :data:`BATCH_LIMIT`), then commits once. Every caller returns only after the batch
holding its call committed: nothing is acknowledged before it is in the database, as with a
commit per call.

- A batch is applied without a savepoint per call (two statements each, on the path of
  every call). A call whose work raises (a Python error: a bug, a callback-free failure)
  raises in its own thread, and the transaction is rolled back: the rest of its batch is
  applied again in a new transaction, each call inside a savepoint of its own, so a call
  that fails there too is rolled back alone and the others commit. Each call gets the
  result (or the error) it would have had with savepoints from the start.
- If the batch as a whole cannot commit (an error from the database driver inside a call,
  a full disk, a lock not granted), each of its calls is run again in a transaction of its
  own, so each gets exactly the result (or the error) it would have had alone.
- If the leading thread is interrupted (KeyboardInterrupt), nothing of its batch is
  committed and every caller of the batch is woken with a :class:`~pqlsdk.StoreError`.
- A lone call (no other thread leading: the single-threaded case) is applied on its own
  thread in a transaction of its own, with none of the batch's bookkeeping; calls queued
  while it works join that transaction behind it, as they join a leader's batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

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
        #: Held (locked) while the caller waits; released when the request is done or
        #: asked to lead. A plain lock: waiting and waking cost no Python-level condition.
        #: Made only for a caller that waits (a lone call, the common case, never needs one).
        self.wake: threading.Lock | None = None


class _Outcome(NamedTuple):
    """What one call of a batch gave: its result, or the error it raised."""

    result: Any
    error: BaseException | None


class _CallFailed(Exception):
    """Raised out of a batch's transaction (rolling it back) when call ``index`` raised."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def _driver_error(exc: BaseException) -> bool:
    """An error from sqlite3 or psycopg: it may have broken the transaction, so the batch
    is not committed around it (its calls run again one by one)."""
    return type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg_pool")


def _wake(request: _Request[Any]) -> None:
    wake, request.wake = request.wake, None  # woken once: done, or asked to lead
    if wake is not None:
        wake.release()


class SharedCommits:
    """Run ``work(tx)`` callables from many threads, several per transaction.

    One thread at a time leads: it applies what is queued as a batch (taking in what is
    queued while it works), wakes the callers of that batch once it committed, repeats
    until its own call is done, then hands the lead to the oldest call still queued (if
    any). The others wait on a lock of their own (no convoy through a shared lock).

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
        #: Batches rolled back because a call raised, and applied again with savepoints.
        self.reruns = 0

    def run(self, work: Callable[[Transaction], T]) -> T:
        """Apply ``work`` in a transaction (shared with other threads' calls) and return
        its result once that transaction committed; raise what ``work`` raised, or the
        store's error if the transaction could not commit."""
        with self._mutex:
            lone = not self._leading  # nobody leads (so nothing is queued): run it now
            if lone:
                self._leading = True
            else:
                request: _Request[T] = _Request(work)
                self._queue.append(request)
                request.wake = wake = threading.Lock()
                wake.acquire()
        if lone:
            try:
                return self._lone(work)
            finally:
                self._hand_off()
        try:
            wake.acquire()  # released by the leader: done, or asked to lead
        except BaseException:  # interrupted while waiting (Ctrl-C): no one waits on it
            self._abandon(request)
            raise
        if not request.done:  # leading now: batches until this call's is committed
            try:
                while not request.done:
                    self._lead()
            finally:
                self._hand_off()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[no-any-return]

    def _lone(self, work: Callable[[Transaction], T]) -> T:
        """Apply a lone call in a transaction of its own and return its result (or raise
        its error, or the store's, as a call alone). Calls queued while it works join its
        transaction as a batch behind it (the call itself first, its result kept)."""
        batch: list[_Request[Any]] = []
        outcomes: list[_Outcome] = []

        def first(tx: Transaction) -> T:
            outcomes.clear()  # a transaction run again (PostgreSQL) starts over
            result = work(tx)
            if batch or self._queue:
                if not batch:
                    batch.append(_Request(work))
                outcomes.append(_Outcome(result, None))
                self._together(tx, batch, True, outcomes)
            return result

        try:
            try:
                result = self.store.transact(first)
            except Exception as exc:
                if not batch:
                    raise  # its own error, or the store's: as a call alone
                self._recover(batch, exc)  # may itself be interrupted (its reruns)
            else:
                if not batch:
                    self.batches += 1
                    self.calls += 1
                    return result
                self._settle(batch, outcomes)
        except BaseException as exc:  # interrupted: no joined call waits forever
            self._interrupted(batch, exc)
            raise
        finally:
            for request in batch:
                _wake(request)
        lead = batch[0]
        if lead.error is not None:
            raise lead.error
        return lead.result  # type: ignore[no-any-return]

    def _abandon(self, request: _Request[Any]) -> None:
        """A waiting caller was interrupted: its call leaves the queue (unless a leader
        took it already, which then applies it as any other), and the lead it was handed,
        if any, passes on, so that no later call waits for a leader that is gone."""
        with self._mutex:
            for index, queued in enumerate(self._queue):
                if queued is request:
                    del self._queue[index]
                    break
            else:
                return  # in a leader's batch: applied and settled there
            if request.lead:  # handed the lead, never took it: the next caller leads
                self._pass_lead()

    def _hand_off(self) -> None:
        with self._mutex:
            self._pass_lead()

    def _pass_lead(self) -> None:
        """(With the mutex held.) The oldest call queued leads next; else nobody leads."""
        if self._queue:
            following = self._queue[0]
            following.lead = True
            _wake(following)  # it waits: it has a lock
        else:
            self._leading = False

    def _take(self, room: int) -> list[_Request[Any]]:
        """Up to ``room`` of the calls queued, oldest first."""
        with self._mutex:
            return [self._queue.popleft() for _ in range(min(room, len(self._queue)))]

    def _lead(self) -> None:
        """Take what is queued (up to the limit), apply it as one batch, wake its callers."""
        batch = self._take(self.limit)
        try:
            self.apply(batch, join=True)
        except BaseException as exc:  # interrupted (KeyboardInterrupt): no call waits forever
            self._interrupted(batch, exc)
            raise
        finally:
            for request in batch:
                _wake(request)

    @staticmethod
    def _interrupted(batch: list[_Request[Any]], exc: BaseException) -> None:
        """Each call of ``batch`` not done gets a :class:`~pqlsdk.StoreError` saying why."""
        for request in batch:
            if not request.done:
                request.error = StoreError(
                    f"the thread applying this call's batch was interrupted "
                    f"({type(exc).__name__}); nothing of it was committed")
                request.done = True

    def apply(self, batch: list[_Request[Any]], *, join: bool = False) -> None:
        """Apply ``batch`` in one transaction and fill in each request's result or error.
        With ``join``, calls queued while it is applied join it (``batch`` grows) up to
        the limit."""
        outcomes: list[_Outcome] = []

        def together(tx: Transaction) -> None:
            outcomes.clear()  # a transaction run again (PostgreSQL) starts over
            self._together(tx, batch, join, outcomes)

        try:
            self.store.transact(together)
        except Exception as exc:
            self._recover(batch, exc)
            return
        self._settle(batch, outcomes)

    def _recover(self, batch: list[_Request[Any]], exc: Exception) -> None:
        """After ``batch``'s transaction failed with ``exc`` (nothing of it committed): each
        call's result or error, as it would have had with savepoints, or alone."""
        if isinstance(exc, _CallFailed):  # rolled back: again without it, with savepoints
            self.reruns += 1
            request = batch[exc.index]
            request.error, request.done = exc.error, True
            rest = batch[:exc.index] + batch[exc.index + 1:]
            if rest:
                self._guarded(rest)
        elif len(batch) == 1:  # a lone call: this is the error it has alone
            batch[0].error, batch[0].done = exc, True
        else:
            for request in batch:  # each call again, alone: its own result or error
                self._alone(request)

    def _settle(self, batch: list[_Request[Any]], outcomes: list[_Outcome]) -> None:
        self.batches += 1
        self.calls += len(batch)
        for request, outcome in zip(batch, outcomes, strict=True):
            request.result, request.error, request.done = outcome.result, outcome.error, True

    def _guarded(self, batch: list[_Request[Any]]) -> None:
        """Apply ``batch`` in one transaction, each call in a savepoint of its own."""
        if len(batch) == 1:
            self._alone(batch[0])
            return
        try:
            outcomes = self.store.transact(lambda tx: self._savepoints(tx, batch))
        except Exception:
            for request in batch:
                self._alone(request)
            return
        self._settle(batch, outcomes)

    def _alone(self, request: _Request[Any]) -> None:
        try:
            request.result = self.store.transact(request.work)
            self.batches += 1
            self.calls += 1
        except Exception as exc:
            request.error = exc
        request.done = True

    def _together(self, tx: Transaction, batch: list[_Request[Any]], join: bool,
                  outcomes: list[_Outcome]) -> None:
        """Each call of ``batch`` past those in ``outcomes`` in turn, no savepoint, its
        outcome appended; a call that raises rolls the whole transaction back
        (:class:`_CallFailed`). Then, with ``join``, the calls queued meanwhile, until none
        is left or the batch is full."""
        while True:
            for index in range(len(outcomes), len(batch)):
                try:
                    outcomes.append(_Outcome(batch[index].work(tx), None))
                except Exception as exc:
                    if _driver_error(exc):
                        raise  # the transaction may be broken: run the calls one by one
                    raise _CallFailed(index, exc) from exc
            room = self.limit - len(batch)
            more = self._take(room) if join and room > 0 else []
            if not more:
                return
            batch.extend(more)

    @staticmethod
    def _savepoints(tx: Transaction, batch: list[_Request[Any]]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for request in batch:
            tx.savepoint()
            try:
                result = request.work(tx)
            except Exception as exc:
                if _driver_error(exc):
                    raise  # the transaction may be broken: run the calls one by one
                tx.rollback_to_savepoint()
                outcomes.append(_Outcome(None, exc))
                continue
            tx.release_savepoint()
            outcomes.append(_Outcome(result, None))
        return outcomes
