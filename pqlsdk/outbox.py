"""The durable outbox: what must reach a destination, delivered at least once, in order.

Rows are written in the same transaction as the qualification (or mirrored event) they
carry, one per destination. Delivering one takes a lease (so two processes never send the
same row at once, and a row whose process died is taken over when its lease ends), hands it
to the destination's sink, and removes it only once the destination acknowledged it. A
failure is retried with exponential backoff and jitter; after ``max_retries`` tries the row
is kept as ``failed``, visible in ``Client.deliveries()`` and revived by ``retry_failed()``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from .models import Qualification, StageChange, json_default
from .sinks import (
    CallbackSink,
    Fatal,
    SegmentSink,
    callback_name,
    qualification_messages,
    stage_messages,
)
from .store import Store
from .timestamps import from_micros

log = logging.getLogger("pqlsdk")

SEGMENT = "segment"
#: Rows claimed per destination at a time (one Segment batch).
CLAIM_LIMIT = 100
#: First retry waits about this long (seconds); each further one twice as long.
FIRST_BACKOFF = 1.0


def _item(sink: CallbackSink | SegmentSink, row: dict[str, Any],
          found: dict[str, Qualification]) -> Any:
    """What a sink delivers for a row: a Qualification for a callback, Segment messages for
    Segment; None when a qualification is gone (erased by ``forget``): nothing to send."""
    payload = json.loads(row["payload"])
    if row["kind"] != "qualification":
        return payload  # Segment messages, built when the row was written
    q = found.get(payload["qualification_id"])
    if q is None or isinstance(sink, CallbackSink):
        return q
    messages = qualification_messages(q)
    if payload["moved_to"]:
        change = StageChange(q.subject_type, q.subject_id, None, payload["moved_to"],
                             q.qualified_at, f"rule:{q.rule}")
        messages += stage_messages(change, q.user_id, q.account_id, q.id)
    return messages


def wall_micros() -> int:
    """Wall-clock microseconds (leases and backoff span processes, so not monotonic)."""
    return int(time.time() * 1_000_000)


@attrs.frozen
class Delivery:
    """One outbox row: a message on its way to one destination.

    ``status`` is ``pending`` (waiting or retrying) or ``failed`` (gave up after
    ``max_retries``, or the destination refused it for good); delivered rows are gone.
    """

    id: int
    destination: str
    kind: str
    user_id: str | None
    payload: Any
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        """Build from an outbox row."""
        return cls(
            id=row["id"],
            destination=row["destination"],
            kind=row["kind"],
            user_id=row["user_id"],
            payload=json.loads(row["payload"]),
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=from_micros(row["next_attempt_at"]),
            last_error=row["last_error"],
            created_at=from_micros(row["created_at"]),
        )


class Outbox:
    """Writes delivery rows and delivers due ones to the sinks this process has."""

    def __init__(
        self,
        store: Store,
        *,
        segment: Any = None,
        on_error: Callable[[Exception, Delivery], Any] | None = None,
        max_retries: int = 10,
        max_backoff: float = 300.0,
        lease: float = 60.0,
        send: bool = True,
    ) -> None:
        self.store = store
        #: Destinations whose rows are written but not delivered by this process
        #: (``Client(send=False)``: Segment).
        self.paused: set[str] = set() if send else {SEGMENT}
        self.on_error = on_error
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.lease = lease
        self.sinks: dict[str, CallbackSink | SegmentSink] = {}
        if segment is not None:
            self.sinks[SEGMENT] = SegmentSink(segment)

    def add_callback(self, callback: Callable[[Qualification], Any]) -> None:
        """Deliver qualifications to ``callback`` from now on."""
        name = callback_name(callback)
        base, n = name, 1
        while name in self.sinks:
            n += 1
            name = f"{base}#{n}"
        self.sinks[name] = CallbackSink(callback)

    # -- writing (inside the caller's transaction) ------------------------------------------

    def qualification_rows(self, qualifications: list[Qualification],
                           moves: dict[str, StageChange], now: int
                           ) -> list[tuple[str, str, str | None, str, int]]:
        """Outbox rows for new qualifications: one per callback and one for Segment.

        A row names the qualification (and the stage it moved its subject to, from
        ``moves`` by qualification id); what is sent is built from the stored
        qualification when it is delivered, which keeps ``track()`` light. Segment gets
        "Lead Qualified" and the lifecycle stage in one row, so they travel together.
        """
        rows: list[tuple[str, str, str | None, str, int]] = []
        for q in qualifications:
            moved = moves.get(q.id)
            payload = json.dumps({"qualification_id": q.id,
                                  "moved_to": moved.to_stage if moved else None})
            rows += [(name, "qualification", q.user_id, payload, now) for name in self.sinks]
        return rows

    def stage_rows(self, moves: list[tuple[StageChange, str, str | None, str]], now: int
                   ) -> list[tuple[str, str, str | None, str, int]]:
        """Segment rows for stage changes: ``(change, user_id, account_id, message id)``."""
        if SEGMENT not in self.sinks:
            return []
        return [(SEGMENT, "stage", user_id,
                 json.dumps(stage_messages(change, user_id, account_id, message_id)), now)
                for change, user_id, account_id, message_id in moves]

    @staticmethod
    def segment_row(kind: str, user_id: str, message: dict[str, Any], now: int
                    ) -> tuple[str, str, str | None, str, int]:
        """An outbox row mirroring one track/identify/group call to Segment."""
        return (SEGMENT, kind, user_id, json.dumps([message], default=json_default), now)

    # -- delivering -------------------------------------------------------------------------

    def deliver_once(self) -> int:
        """Claim due rows for every destination in one transaction, deliver them, settle
        them in one more; return how many rows were tried."""
        now = wall_micros()
        lease_until = now + int(self.lease * 1e6)
        with self.store.write() as tx:
            claims = [(sink, rows) for name, sink in list(self.sinks.items())
                      if name not in self.paused
                      and (rows := tx.claim(name, now, lease_until, CLAIM_LIMIT))]
            if not claims:
                return 0
            named = {json.loads(row["payload"])["qualification_id"]
                     for _, rows in claims for row in rows if row["kind"] == "qualification"}
            found = {row["id"]: Qualification.from_row(row)
                     for row in tx.qualifications_by_id(named)} if named else {}
        outcomes = [(rows, sink.deliver([_item(sink, row, found) for row in rows]))
                    for sink, rows in claims]
        self._settle(outcomes)
        return sum(len(rows) for _, rows in claims)

    def _settle(self, outcomes: list[tuple[list[dict[str, Any]], list[Exception | None]]]
                ) -> None:
        pairs = [pair for rows, results in outcomes
                 for pair in zip(rows, results, strict=True)]
        done = [row["id"] for row, error in pairs if error is None]
        failures = [(row, error) for row, error in pairs if error is not None]
        now = wall_micros()
        with self.store.write() as tx:
            if done:
                tx.acknowledge(done)
            for row, error in failures:
                final = isinstance(error, Fatal) or row["attempts"] >= self.max_retries
                tx.reschedule([row["id"]], now + self._backoff(row["attempts"]),
                              f"{type(error).__name__}: {error}", final)
        for row, error in failures:
            self._report(error, row)

    def _backoff(self, attempts: int) -> int:
        delay = min(self.max_backoff, FIRST_BACKOFF * 2 ** max(0, attempts - 1))
        return int(delay * random.uniform(0.5, 1.0) * 1e6)

    def _report(self, error: Exception, row: dict[str, Any]) -> None:
        log.warning("pqlsdk: delivery %s to %s failed (attempt %s): %s", row["id"],
                    row["destination"], row["attempts"], error)
        if self.on_error is None:
            return
        try:
            self.on_error(error, Delivery.from_row({**row, "last_error": str(error)}))
        except Exception:
            log.exception("pqlsdk: on_error raised for delivery %s", row["id"])

    def waiting(self) -> tuple[int, int, int | None, int]:
        """``(pending rows, of which due now, next due time, failed rows)`` for this
        process's destinations."""
        with self.store.read() as tx:
            return tx.waiting(self.active(), wall_micros())

    def active(self) -> list[str]:
        """The destinations this process delivers to (its sinks, less the paused ones)."""
        return [name for name in self.sinks if name not in self.paused]
