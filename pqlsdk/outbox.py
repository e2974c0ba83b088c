"""The durable outbox: what must reach a destination, delivered at least once, in order.

Rows are written in the same transaction as the qualification (or mirrored event) they
carry, one per destination. Delivering takes one destination's due rows at a time under a
claim token and a lease (one ``UPDATE ... RETURNING``), hands them to that destination's
sink, and settles them as soon as the sink returns: a row is removed only once the
destination acknowledged it, and only by the claimer that still owns it. While a delivery
is in flight its lease is renewed, so another claimer (this process's ``flush``, another
process) never takes it over; a row whose process died is taken over when its lease ends.
A failure is retried with exponential backoff and jitter (or after Segment's
``Retry-After``); after ``max_retries`` tries, or a final refusal, the row is kept as
``failed``, visible in ``Client.deliveries()`` and revived by ``retry_failed()``. A row that
cannot be read or built fails alone; the others keep flowing.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import attrs

from .messages import event_message_text, qualification_messages, stage_messages
from .models import Overdue, Qualification, StageChange, json_default
from .sinks import CallbackSink, Fatal, NotAttempted, Retry, SegmentSink
from .store import EVENT_REF_FORMAT, PAYLOAD_FORMAT, Store, StoreClosed, Transaction
from .store.base import OutboxKey
from .timestamps import from_micros

log = logging.getLogger("pqlsdk")

SEGMENT = "segment"
#: Destinations of ``on_stage_change`` hooks are ``stage:NAME`` (``on_qualified``'s are
#: ``callback:NAME``).
STAGE_HOOK = "stage:"
#: Destinations of ``on_overdue`` hooks.
OVERDUE_HOOK = "overdue:"
#: The most rows claimed per destination at a time (one Segment batch).
CLAIM_LIMIT = 100
#: First retry waits about this long (seconds); each further one twice as long.
FIRST_BACKOFF = 1.0
#: A claim is sized so that delivering it should take at most this share of the lease.
LEASE_SHARE = 0.25

Sink = CallbackSink | SegmentSink


class Undeliverable(Exception):
    """A row that cannot be read or turned into what its destination takes: it fails alone."""


class PassResult(NamedTuple):
    """What one delivery pass over one destination did."""

    claimed: int
    delivered: int
    #: Whether the claim took as many rows as it could (more are probably waiting).
    full: bool = False


def _decode(row: dict[str, Any]) -> Any:
    """A row's payload, or :class:`Undeliverable` if this release cannot read it."""
    if row.get("format") not in (PAYLOAD_FORMAT, EVENT_REF_FORMAT):
        raise Undeliverable(f"outbox payload format {row.get('format')!r} is not "
                            f"{PAYLOAD_FORMAT} or {EVENT_REF_FORMAT}, the ones this pqlsdk "
                            f"reads")
    try:
        payload = json.loads(row["payload"])
    except (TypeError, ValueError) as exc:
        raise Undeliverable(f"outbox payload is not JSON: {exc}") from None
    if row.get("format") == EVENT_REF_FORMAT:
        if not (isinstance(payload, dict) and isinstance(payload.get("message_id"), str)
                and isinstance(row.get("user_id"), str)):
            raise Undeliverable("a mirrored event's row must name its user and message_id")
        return payload
    if row["kind"] == "qualification":
        if not (isinstance(payload, dict) and isinstance(payload.get("qualification_id"), str)):
            raise Undeliverable("a qualification row must name its qualification_id")
    elif row["kind"] == "stage_change":
        if not (isinstance(payload, dict) and isinstance(payload.get("to_stage"), str)):
            raise Undeliverable("a stage_change row must hold the change")
    elif row["kind"] == "overdue":
        if not (isinstance(payload, dict) and isinstance(payload.get("qualification_id"), str)):
            raise Undeliverable("an overdue row must hold the overdue qualification")
    elif not (isinstance(payload, list) and all(isinstance(m, dict) for m in payload)):
        raise Undeliverable("a Segment row must hold a list of messages")
    return payload


def _item(sink: Sink, row: dict[str, Any], payload: Any,
          found: dict[str, Qualification]) -> Any:
    """What a sink delivers for a row: a Qualification for a callback, Segment messages for
    Segment; None when a qualification is gone (erased by ``forget``): nothing to send."""
    if row["kind"] == "stage_change":
        return StageChange.from_payload(payload)
    if row["kind"] == "overdue":
        return Overdue.from_payload(payload)
    if row["kind"] != "qualification":
        return payload  # Segment messages, built when the row was written
    q = found.get(payload["qualification_id"])
    if q is None or isinstance(sink, CallbackSink):
        return q
    messages = qualification_messages(q)
    if payload.get("moved_to"):
        change = StageChange(q.subject_type, q.subject_id, None, payload["moved_to"],
                             q.qualified_at, f"rule:{q.rule}")
        messages += stage_messages(change, q.user_id, q.account_id, q.id)
    return messages


def wall_micros() -> int:
    """Wall-clock microseconds (leases and backoff span processes, so not monotonic)."""
    return int(time.time() * 1_000_000)


def _payload_for_display(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text  # an unreadable row is shown as it is stored


@attrs.frozen
class Delivery:
    """One outbox row: a message on its way to one destination.

    ``status`` is ``pending`` (waiting or retrying), ``failed`` (gave up after
    ``max_retries``, or refused for good) or ``orphaned`` (pending for a destination no
    callback of this Client is registered under); delivered rows are gone.
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
            payload=_payload_for_display(row["payload"]),
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=from_micros(row["next_attempt_at"]),
            last_error=row["last_error"],
            created_at=from_micros(row["created_at"]),
        )


class Renewer:
    """Renews the lease of every claim in flight, every third of the lease, on its own
    thread (started with the first claim), so that a slow destination keeps its rows."""

    def __init__(self, store: Store, lease: float) -> None:
        self.store = store
        self.lease = lease
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, token: str) -> None:
        """Keep renewing ``token``'s lease until :meth:`release`."""
        with self._lock:
            self._tokens.add(token)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pqlsdk-lease",
                                                daemon=True)
                self._thread.start()

    def release(self, token: str) -> None:
        """The claim was settled: stop renewing it."""
        with self._lock:
            self._tokens.discard(token)

    def in_flight(self) -> int:
        """How many claims of this process are being delivered (or being made) now."""
        with self._lock:
            return len(self._tokens)

    def _run(self) -> None:
        while not self.store.closed:
            self._wake.wait(self.lease / 3)
            with self._lock:
                tokens = sorted(self._tokens)
            if not tokens:
                continue
            until = wall_micros() + int(self.lease * 1e6)

            def renew(tx: Transaction, tokens: list[str] = tokens, until: int = until) -> None:
                tx.renew(tokens, until)

            try:
                self.store.transact(renew)
            except StoreClosed:
                return
            except Exception:
                log.exception("pqlsdk: could not renew delivery leases")


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
        self.on_error = on_error
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.lease = lease
        self.sinks: dict[str, Sink] = {}
        if segment is not None:
            self.sinks[SEGMENT] = SegmentSink(segment, send=send)
        self.renewer = Renewer(store, lease)
        #: Seconds one row took to deliver, per destination (a moving average): sizes claims.
        self._per_row: dict[str, float] = {}
        self._orphans_reported = False
        self._lock = threading.Lock()
        #: Notified after each settled claim (``settled`` counts them): ``flush`` waits on it.
        self.progress = threading.Condition()
        self.settled = 0
        #: Set by :meth:`stop_claiming` (the Client is closing): no new claims.
        self.stopping = threading.Event()
        #: The delivery worker's periodic pass (the Client's look for overdue hand-offs),
        #: run by the ``on_overdue`` lanes; None: nothing to run.
        self.periodic: Callable[[], Any] | None = None
        #: Whether mirrored tracks are written by reference (see :meth:`event_refs`).
        self._event_refs: bool | None = None

    def after_fork(self) -> None:
        """In a forked child: its own lease renewer, locks and measurements."""
        self.renewer = Renewer(self.store, self.lease)
        self._lock = threading.Lock()
        self.progress = threading.Condition()
        self.stopping = threading.Event()

    def stop_claiming(self) -> None:
        """The Client is closing: claim nothing more, and give back at once what a claim
        running now takes (so that no row waits out a lease this process will not use)."""
        self.stopping.set()

    def add_sink(self, destination: str, sink: Sink) -> None:
        """Deliver ``destination``'s rows to ``sink`` from now on."""
        with self._lock:
            self.sinks = {**self.sinks, destination: sink}

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
        names = [name for name in self.sinks
                 if name == SEGMENT or not name.startswith((STAGE_HOOK, OVERDUE_HOOK))]
        for q in qualifications:
            moved = moves.get(q.id)
            payload = json.dumps({"qualification_id": q.id,
                                  "moved_to": moved.to_stage if moved else None})
            rows += [(name, "qualification", q.user_id, payload, now) for name in names]
        return rows

    def hook_rows(self, changes: list[tuple[StageChange, str | None]], now: int
                  ) -> list[tuple[str, str, str | None, str, int]]:
        """Rows for the ``on_stage_change`` hooks: one per ``(change, user id)`` and hook
        (the user id, the subject's or an account member's, lets ``forget`` find them)."""
        names = [name for name in self.sinks if name.startswith(STAGE_HOOK)]
        return [(name, "stage_change", user_id, json.dumps(change.to_payload()), now)
                for change, user_id in changes for name in names]

    def stage_rows(self, moves: list[tuple[StageChange, str, str | None, str]], now: int
                   ) -> list[tuple[str, str, str | None, str, int]]:
        """Segment rows for stage changes: ``(change, user_id, account_id, message id)``."""
        if SEGMENT not in self.sinks:
            return []
        return [(SEGMENT, "stage", user_id,
                 json.dumps(stage_messages(change, user_id, account_id, message_id)), now)
                for change, user_id, account_id, message_id in moves]

    def overdue_rows(self, found: list[Overdue], now: int
                     ) -> list[tuple[str, str, str | None, str, int]]:
        """Rows for the ``on_overdue`` hooks: one per overdue qualification and hook."""
        names = [name for name in self.sinks if name.startswith(OVERDUE_HOOK)]
        return [(name, "overdue", o.subject_id if o.subject_type == "user" else None,
                 json.dumps(o.to_payload()), now) for o in found for name in names]

    def has_overdue_hooks(self) -> bool:
        """Whether an ``on_overdue`` hook is registered in this process."""
        return any(name.startswith(OVERDUE_HOOK) for name in self.sinks)

    @staticmethod
    def segment_row(kind: str, user_id: str, message: dict[str, Any], now: int
                    ) -> tuple[str, str, str | None, str, int]:
        """An outbox row mirroring one identify/group call to Segment (the message itself:
        these calls have no event row to refer to)."""
        return (SEGMENT, kind, user_id, json.dumps([message], default=json_default), now)

    def event_refs(self, tx: Transaction) -> bool:
        """Whether mirrored tracks may be written as rows of
        :data:`~pqlsdk.store.EVENT_REF_FORMAT` (every release that may read this database
        reads them; see ``reads_event_refs`` of the store's transaction); asked once per
        Outbox."""
        if self._event_refs is None:
            self._event_refs = tx.reads_event_refs()
        return self._event_refs

    @staticmethod
    def event_row(message_id: str, user_id: str, now: int
                  ) -> tuple[str, str, str | None, str, int]:
        """An outbox row mirroring one track call to Segment, of
        :data:`~pqlsdk.store.EVENT_REF_FORMAT`: the event's message id (the row's user and
        the message id find the event row in the user's tenant); the message is built from
        the event row when it is delivered."""
        return (SEGMENT, "track", user_id, f'{{"message_id": {_json_string(message_id)}}}',
                now)

    # -- delivering -------------------------------------------------------------------------

    def destinations(self) -> list[str]:
        """The destinations this process delivers to now (Segment not while paused)."""
        return [name for name, sink in self.sinks.items() if not sink.paused]

    def write(self, tx: Transaction, rows: list[tuple[str, str, str | None, str, int]], *,
              payload_format: int = PAYLOAD_FORMAT) -> None:
        """Add new rows in ``tx``. Other processes' idle workers are woken for them (on
        PostgreSQL, after the commit) only if some are for a destination this process does
        not deliver now: this process's own workers are woken by the caller, and a wake-up
        per write would have every process of a fleet look at the outbox on every call."""
        sinks = self.sinks
        tx.enqueue(rows, announce=any(row[0] not in sinks or sinks[row[0]].paused
                                      for row in rows), payload_format=payload_format)

    def deliver_once(self) -> int:
        """One pass over every destination in the calling thread, each settled as soon as
        its sink returns; return how many rows were claimed."""
        claimed = 0
        for name in self.destinations():
            claimed += self.deliver(name).claimed
        self.report_orphans()
        return claimed

    def deliver(self, destination: str) -> PassResult:
        """Claim ``destination``'s due rows (in order, as many as fit in a share of the
        lease), deliver them and settle them; what was done."""
        sink = self.sinks[destination]
        now = wall_micros()
        token = uuid.uuid4().hex
        self.renewer.hold(token)
        try:
            size = self._claim_size(destination)

            def claim(tx: Transaction) -> list[dict[str, Any]]:
                if self.stopping.is_set():
                    return []
                return tx.claim(destination, now, now + int(self.lease * 1e6), size, token)

            rows = self.store.transact(claim)
            if not rows:
                return PassResult(0, 0)
            if self.stopping.is_set():  # close() began during the claim: give the rows back
                ids = [_key(row) for row in rows]
                self.store.transact(lambda tx: tx.release(ids, token))
                return PassResult(0, 0)
            started = time.monotonic()
            results = self._deliver_rows(sink, rows)
            self._learn(destination, (time.monotonic() - started) / len(rows))
            delivered = self._settle(rows, results, token)
        finally:
            self.renewer.release(token)
        with self.progress:
            self.settled += 1
            self.progress.notify_all()
        return PassResult(len(rows), delivered, len(rows) == size)

    def _claim_size(self, destination: str) -> int:
        per_row = self._per_row.get(destination)
        if not per_row:
            return CLAIM_LIMIT
        return max(1, min(CLAIM_LIMIT, int(self.lease * LEASE_SHARE / per_row)))

    def _learn(self, destination: str, per_row: float) -> None:
        before = self._per_row.get(destination)
        self._per_row[destination] = per_row if before is None else 0.7 * before + 0.3 * per_row

    def _deliver_rows(self, sink: Sink, rows: list[dict[str, Any]]
                      ) -> list[Exception | None]:
        """Per row: None (delivered) or why not. Rows that cannot be read or built fail
        alone, with the reason; the others go to the sink."""
        results: list[Exception | None] = [None] * len(rows)
        payloads: dict[int, Any] = {}
        for index, row in enumerate(rows):
            try:
                payloads[index] = _decode(row)
            except Undeliverable as exc:
                results[index] = exc
        self._build_events(rows, payloads, results)
        named = {p["qualification_id"] for i, p in payloads.items()
                 if rows[i]["kind"] == "qualification"}
        found: dict[str, Qualification] = {}
        stored: list[dict[str, Any]] = []
        if named:
            with self.store.read() as tx:
                stored = tx.qualifications_by_id(named)
            for stored_row in stored:
                try:
                    found[stored_row["id"]] = Qualification.from_row(stored_row)
                except Exception as exc:  # a damaged qualification fails its rows alone
                    log.warning("pqlsdk: qualification %s cannot be read: %s",
                                stored_row.get("id"), exc)
        items: list[tuple[int, Any]] = []
        for index, payload in payloads.items():
            row = rows[index]
            if (row["kind"] == "qualification" and payload["qualification_id"] not in found
                    and named and _exists(stored, payload["qualification_id"])):
                results[index] = Undeliverable("its qualification cannot be read")
                continue
            try:
                items.append((index, _item(sink, row, payload, found)))
            except Exception as exc:
                results[index] = Undeliverable(f"cannot be built: {type(exc).__name__}: {exc}")
        if items:
            outcomes = sink.deliver([item for _, item in items])
            for (index, _), outcome in zip(items, outcomes, strict=True):
                results[index] = outcome
        return results

    def _build_events(self, rows: list[dict[str, Any]], payloads: dict[int, Any],
                      results: list[Exception | None]) -> None:
        """Replace each mirrored event's reference (format 2) by its Segment message, read
        from the event row (one read for the claim on SQLite, one per user and its tenant on
        PostgreSQL); a row whose event is gone (pruned by retention) or damaged fails alone."""
        refs = [i for i in payloads if rows[i].get("format") == EVENT_REF_FORMAT]
        if not refs:
            return
        with self.store.read() as tx:
            events = tx.events_by_message(sorted({
                (rows[i]["user_id"], payloads[i]["message_id"]) for i in refs}))
        for index in refs:  # replaced in place: the rows keep their order
            user_id, message_id = rows[index]["user_id"], payloads[index]["message_id"]
            event = events.get((user_id, message_id))
            if event is None:
                del payloads[index]
                results[index] = Undeliverable(
                    f"its event (message id {message_id}) is no longer stored (pruned by "
                    f"retention before it was delivered)")
                continue
            account_id, name, ts, properties = event
            try:  # its JSON text: the stored properties go in as they are
                payloads[index] = [event_message_text(
                    user_id, from_micros(ts).isoformat(timespec="milliseconds"),
                    message_id, account_id, name, properties)]
            except Exception as exc:  # a damaged row fails alone
                del payloads[index]
                results[index] = Undeliverable(f"its event cannot be read: {exc}")

    def _settle(self, rows: list[dict[str, Any]], results: list[Exception | None],
                token: str) -> int:
        """Acknowledge, reschedule or fail each row (only those still ours); tell
        ``on_error`` of each failed attempt with the row's status after it."""
        done = [_key(row) for row, error in zip(rows, results, strict=True) if error is None]
        failures: list[tuple[dict[str, Any], Exception, bool]] = []
        skipped: list[OutboxKey] = []
        now = wall_micros()
        waits: list[int] = []
        for row, error in zip(rows, results, strict=True):
            if error is None:
                continue
            if isinstance(error, NotAttempted):
                skipped.append(_key(row))
                continue
            final = (isinstance(error, Fatal | Undeliverable)
                     or row["attempts"] >= self.max_retries)
            wait = self._backoff(row["attempts"])
            if isinstance(error, Retry) and error.retry_after is not None:
                wait = int(error.retry_after * 1e6)
            failures.append((row, error, final))
            waits.append(wait)

        def settle(tx: Transaction) -> int:  # run again as a whole if the store retries
            delivered = tx.acknowledge(done, token) if done else 0
            for (row, error, final), wait in zip(failures, waits, strict=True):
                tx.reschedule([_key(row)], token, now + wait,
                              f"{type(error).__name__}: {error}", final)
            if skipped:
                tx.release(skipped, token)
            return delivered

        delivered = self.store.transact(settle)
        for row, error, final in failures:
            self._report(error, row, final)
        return delivered

    def _backoff(self, attempts: int) -> int:
        delay = min(self.max_backoff, FIRST_BACKOFF * 2 ** max(0, attempts - 1))
        return int(delay * random.uniform(0.5, 1.0) * 1e6)

    def _report(self, error: Exception, row: dict[str, Any], final: bool) -> None:
        log.warning("pqlsdk: delivery %s to %s failed (attempt %s%s): %s", row["id"],
                    row["destination"], row["attempts"], ", final" if final else "", error)
        if self.on_error is None:
            return
        try:
            self.on_error(error, Delivery.from_row({
                **row, "last_error": f"{type(error).__name__}: {error}",
                "status": "failed" if final else "pending"}))
        except Exception:
            log.exception("pqlsdk: on_error raised for delivery %s", row["id"])

    # -- looking --------------------------------------------------------------------------

    def due(self, destination: str) -> bool:
        """Whether ``destination`` has a row to claim now (a read: no write lock)."""
        with self.store.read() as tx:
            return tx.due(destination, wall_micros())

    def waiting(self, timeout: float | None = None) -> tuple[int, int, int | None, int]:
        """``(pending rows, of which due now, next due time, failed rows)`` for the
        destinations this process delivers to now (a paused Segment's rows wait for a
        Client that sends); ``timeout`` bounds the wait for the read connection."""
        with self.store.read(timeout) as tx:
            return tx.waiting(self.destinations(), wall_micros())

    def orphans(self) -> list[dict[str, Any]]:
        """Pending rows of destinations this process has no sink for."""
        with self.store.read() as tx:
            return tx.outbox_rows("pending", exclude=list(self.sinks) or [""])

    def report_orphans(self) -> None:
        """Once, after the first delivery pass: warn of rows no registered name claims."""
        if self._orphans_reported:
            return
        self._orphans_reported = True
        counts: dict[str, int] = {}
        for row in self.orphans():
            counts[row["destination"]] = counts.get(row["destination"], 0) + 1
        for destination, count in sorted(counts.items()):
            log.warning("pqlsdk: %s outbox row(s) for %r, which no callback of this Client "
                        "is registered under: register it under that name, or hand them to "
                        "another with client.retarget(%r, NEW_NAME)", count, destination,
                        destination)


#: A str as a JSON string (what ``json.dumps`` does to one, without its dispatch).
_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _key(row: dict[str, Any]) -> OutboxKey:
    """How a claimed row is settled: by its tenant and id."""
    return OutboxKey(row["tenant_key"], row["id"])


def _exists(stored: list[dict[str, Any]], qualification_id: str) -> bool:
    return any(row["id"] == qualification_id for row in stored)
