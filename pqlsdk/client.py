"""The Client: the facade an application calls on its usage milestones."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlite_utils

from . import backtest as backtests
from . import calls, handoff, privacy, reports, validation
from . import suggest as suggestions
from .calls import Call
from .commits import SharedCommits
from .engine import Engine, known_subject
from .errors import DeliveryNameWarning, StoreBusy, ValidationError
from .explain import explain_lines
from .facts import SubjectFacts, load_subject
from .health import Health, build_health
from .identities import resolve
from .models import Overdue, Qualification, StageChange, Status
from .outbox import OVERDUE_HOOK, SEGMENT, STAGE_HOOK, Delivery, Outbox, wall_micros
from .reports import Funnel, RuleOutcome
from .retention import Pruner, Retention, check_windows, parse_retention, projection
from .rules import Rule, RuleSet, load_rules, parse_duration
from .scoring import Score
from .sinks import CallbackSink, callback_name, reset_http_session
from .stages import STAGES
from .store import SYNCHRONOUS, Store, Transaction, open_store
from .suggest import Suggestion
from .timestamps import now, to_micros
from .worker import Worker

log = logging.getLogger("pqlsdk")

Callback = Callable[[Qualification], Any]

#: Of ``close(timeout)``, at most this many seconds (a quarter at most) are left for the
#: delivery threads to settle what they have in flight once flushing stops.
CLOSE_GRACE = 0.5
#: ``flush(timeout=...)`` reads the outbox's state at most this often (seconds).
FLUSH_LOOK = 0.025
#: How many subjects one transaction of :meth:`Client.evaluate` checks.
EVALUATE_CHUNK = 500

# Short names for the edge checks, which live in validation.py (one layer for every call).
_require_id = validation.identifier
_optional_id = validation.optional_identifier


class Client:
    """Record usage, evaluate PQL rules, and qualify each user or account exactly once.

    >>> client = Client(database="pql.db", rules="pql_rules.toml")
    >>> @client.on_qualified
    ... def notify_sales(q):
    ...     print(q.subject_id, "qualified for", q.rule)
    >>> client.identify("u1", {"plan": "trial"}, account_id="acme")
    >>> client.track("u1", "report_generated", {"report": "pipeline"})
    []

    :param database: a path, ``":memory:"`` or a ``sqlite_utils.Database`` (the embedded
        SQLite default); or a PostgreSQL URL (``postgresql://...``, ``postgres://...``) or
        a ``psycopg_pool.ConnectionPool``, for a fleet of app servers sharing one store.
    :param schema: on PostgreSQL, the schema pqlsdk's tables live in (created if missing).
    :param connect_timeout: on PostgreSQL, seconds to wait for a connection.
    :param statement_timeout: on PostgreSQL, seconds a statement may run (None: the
        server's setting); past it the call raises :class:`~pqlsdk.StoreUnavailable`.
    :param lock_timeout: on PostgreSQL, seconds to wait for a row lock (None: the server's
        setting); past it the call raises :class:`~pqlsdk.StoreBusy`.
    :param rules: a TOML path, a dict in the file's shape, or a list of :class:`Rule`.
    :param on_qualified: a callable, a list of them, or ``{"name": callable}``, called with
        each new :class:`Qualification` (see :meth:`on_qualified` for names).
    :param segment: a ``segment.analytics.Client`` to forward qualifications to.
    :param forward_events: also mirror every track/identify/group to Segment.
    :param sync_mode: deliver to callbacks (and Segment) before ``track()`` returns, in the
        calling thread; no background thread is started.
    :param on_error: ``on_error(exc, delivery)`` for each failed delivery attempt.
    :param max_retries: attempts before a delivery is kept as ``failed``.
    :param max_backoff: the longest wait between attempts, in seconds.
    :param delivery_lease: seconds a delivery is claimed for; a row claimed by a process
        that died is taken over when its lease ends.
    :param poll_interval: seconds between the worker's looks for due rows.
    :param busy_timeout: seconds to wait for another process's write lock before raising
        :class:`~pqlsdk.StoreBusy`.
    :param synchronous: ``"normal"`` (the default: a process crash loses nothing acknowledged,
        a power loss may lose the last transactions) or ``"full"`` (a power loss loses
        nothing acknowledged either; each write waits for the disk). See the README.
    :param retention: how long events are kept, e.g. ``"400d"`` (``None``, the default,
        keeps every event). Older events are folded into per-subject rollups and removed
        in the background (not in ``sync_mode``) and by :meth:`prune`; counts, distinct
        values, sums and scores without a window stay exact. A rule whose window is longer
        is refused with :class:`~pqlsdk.RuleError`.
    :param scoring: the ``[scoring]`` model as a dict, for rules given as Python objects.
    :param shared_commits: calls made at the same time from several threads are applied
        by one of them in one transaction (a call that raises fails alone) and each returns
        once that transaction committed (see the README's "Threads"); ``False``: one
        transaction per call.
    :param lifecycle: the ``[lifecycle]`` section as a dict (``{"accept_within": "2d"}``),
        for rules given as Python objects.
    :param send: ``False`` records, evaluates, stores qualifications and runs callbacks but
        never contacts Segment: Segment's outbox rows are written and stay pending (see
        :meth:`health`), for environments that must send nothing remotely; :meth:`flush`
        and :meth:`close` do not wait for them. A Client with ``send=True`` on the same
        file delivers them later.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | sqlite_utils.Database = "pql.db",
        rules: str | os.PathLike[str] | list[Rule] | dict[str, Any] | None = None,
        on_qualified: Callback | Iterable[Callback] | dict[str, Callback] | None = None,
        segment: Any = None,
        forward_events: bool = False,
        sync_mode: bool = False,
        *,
        on_error: Callable[[Exception, Delivery], Any] | None = None,
        max_retries: int = 10,
        max_backoff: float = 300.0,
        delivery_lease: float = 60.0,
        poll_interval: float = 1.0,
        busy_timeout: float = 30.0,
        scoring: dict[str, Any] | None = None,
        lifecycle: dict[str, Any] | None = None,
        synchronous: str = "normal",
        retention: str | timedelta | None = None,
        send: bool = True,
        schema: str = "pqlsdk",
        connect_timeout: float = 10.0,
        statement_timeout: float | None = None,
        lock_timeout: float | None = None,
        shared_commits: bool = True,
    ) -> None:
        self.rules: RuleSet = load_rules(rules, scoring, lifecycle)
        keep = parse_retention(retention)
        self._retention: Retention | None = None
        if keep is not None:
            check_windows(self.rules, keep)
            # with no rules given (a CLI prune), rollups keep every property
            self._retention = Retention(keep, None if rules is None else projection(self.rules))
        if synchronous not in SYNCHRONOUS:
            raise ValidationError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS)} (got {synchronous!r})")
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            raise ValidationError(f"busy_timeout must be seconds >= 0 (got {busy_timeout!r})")
        callbacks: list[tuple[str | None, Any]]
        if isinstance(on_qualified, dict):
            callbacks = list(on_qualified.items())
        elif callable(on_qualified):
            callbacks = [(None, on_qualified)]
        else:
            callbacks = [(None, callback) for callback in on_qualified or []]
        for name, callback in callbacks:
            if not callable(callback):
                raise ValidationError(f"on_qualified needs callables (got {callback!r})")
            _check_name(name)
        if segment is not None and not hasattr(segment, "write_key"):
            raise ValidationError(
                f"segment must be a segment.analytics.Client (got {type(segment).__name__})"
            )
        if segment is not None and getattr(segment, "send", True) is False:
            log.warning("pqlsdk: the Segment client has send=False: Segment rows are kept "
                        "pending (not sent, not dropped) until a Client that sends")
        if not isinstance(max_retries, int) or max_retries < 1:
            raise ValidationError(f"max_retries must be a whole number >= 1 (got {max_retries!r})")
        self.segment = segment
        if forward_events and segment is None:
            raise ValidationError(
                "forward_events=True mirrors every call to Segment, so it needs segment= (a "
                "segment.analytics.Client); pass one, or leave forward_events off")
        self.forward_events = bool(forward_events)
        self.sync_mode = sync_mode
        self.store: Store = open_store(
            database, busy_timeout=busy_timeout, synchronous=synchronous, schema=schema,
            connect_timeout=connect_timeout, statement_timeout=statement_timeout,
            lock_timeout=lock_timeout)
        self._shared_commits = shared_commits
        self._commits = SharedCommits(self.store)
        self._outbox = Outbox(self.store, segment=segment, on_error=on_error,
                              max_retries=max_retries, max_backoff=max_backoff,
                              lease=delivery_lease, send=send)
        self.engine = Engine(self.rules, self._outbox, forward_events=self.forward_events)
        self.send = send
        for name, callback in callbacks:
            self._register(callback, name)
        self._outbox.periodic = self._periodic
        self._worker = Worker(self._outbox, poll_interval)
        self._closing = threading.Event()
        self._closed = False
        self._pruner: Pruner | None = None
        if self._retention is not None and not sync_mode:
            self._pruner = Pruner(self._retention, self.store, _now_micros)
            self._pruner.start()
        _forget_after_fork(self)
        if not sync_mode and self._outbox.waiting()[0]:
            self._worker.wake()  # deliver what an earlier run left pending

    # -- registration -----------------------------------------------------------------------

    def on_qualified(self, callback: Callback | None = None, *, name: str | None = None
                     ) -> Any:
        """Register ``callback(qualification)``: ``client.on_qualified(fn)``,
        ``@client.on_qualified`` or ``@client.on_qualified(name="crm")``.

        Callbacks run after the qualification is committed, from the durable outbox: at
        least once, retried with backoff when they raise, never raising into ``track()``.
        ``name`` is the destination's identity across restarts and deploys (its rows are
        ``callback:NAME``); without it, the callback's ``module.qualname`` is. A lambda, a
        closure or a second callable of the same qualname, registered without a name, gets
        a :class:`DeliveryNameWarning` and an identity of this Client's own: rows it leaves
        at exit are reported as orphaned, never handed to another callable by position.
        """
        _check_name(name)
        if callback is None:
            def decorator(fn: Callback) -> Callback:
                return self.on_qualified(fn, name=name)  # type: ignore[no-any-return]
            return decorator
        if not callable(callback):
            raise ValidationError(f"on_qualified needs a callable (got {callback!r})")
        self._register(callback, name)
        if not self.sync_mode and self._outbox.waiting()[0]:
            self._worker.wake()  # rows an earlier run left for a callback of this name
        return callback

    def on_stage_change(self, callback: Callable[[StageChange], Any] | None = None, *,
                        name: str | None = None) -> Any:
        """Register ``callback(change)`` for every stage move (a rule's, a manual
        ``set_stage``, an imported stage line), each a :class:`StageChange`:
        ``client.on_stage_change(fn)``, ``@client.on_stage_change`` or
        ``@client.on_stage_change(name="crm")``.

        Delivered like :meth:`on_qualified`: from the durable outbox, after the commit, at
        least once, in order, retried with backoff when the callback raises. Its rows are
        ``stage:NAME`` (``name``, else the callback's ``module.qualname``, with the same
        warning and orphan rules). Moves made before a hook was registered are not
        delivered to it; a subject's first entry (``first_seen``) is not a move.
        """
        _check_name(name)
        if callback is None:
            def decorator(fn: Callable[[StageChange], Any]) -> Callable[[StageChange], Any]:
                return self.on_stage_change(fn, name=name)  # type: ignore[no-any-return]
            return decorator
        if not callable(callback):
            raise ValidationError(f"on_stage_change needs a callable (got {callback!r})")
        self._register(callback, name, STAGE_HOOK, "on_stage_change")
        if not self.sync_mode and self._outbox.waiting()[0]:
            self._worker.wake()
        return callback

    def on_overdue(self, callback: Callable[[Overdue], Any] | None = None, *,
                   name: str | None = None) -> Any:
        """Register ``callback(overdue)`` for each qualified lead that sales has neither
        accepted nor rejected within ``[lifecycle] accept_within``: ``client.on_overdue(fn)``,
        ``@client.on_overdue`` or ``@client.on_overdue(name="slack")``.

        Each overdue qualification is told of once (to every hook registered when it is
        found), through the durable outbox like :meth:`on_qualified` (rows
        ``overdue:NAME``). They are found by :meth:`evaluate` and by the delivery worker's
        periodic pass (every minute, on the hook's lane; not in ``sync_mode``).
        """
        _check_name(name)
        if callback is None:
            def decorator(fn: Callable[[Overdue], Any]) -> Callable[[Overdue], Any]:
                return self.on_overdue(fn, name=name)  # type: ignore[no-any-return]
            return decorator
        if not callable(callback):
            raise ValidationError(f"on_overdue needs a callable (got {callback!r})")
        self._register(callback, name, OVERDUE_HOOK, "on_overdue")
        if not self.sync_mode:
            self._worker.wake()  # its lane runs the periodic pass
        return callback

    def overdue(self, *, as_of: datetime | str | None = None) -> list[Overdue]:
        """Qualified leads sales has neither accepted (moved to ``sql`` or later) nor
        rejected within ``[lifecycle] accept_within`` as of ``as_of`` (default now),
        oldest first. Raises :class:`ValidationError` without ``accept_within``.

        >>> [o.subject_id for o in client.overdue()]
        ['ada']
        """
        accept_within = self._accept_within()
        until = _micros(as_of, "as_of")
        with self.store.read() as tx:
            return handoff.overdue(tx, accept_within, until)

    def _accept_within(self) -> timedelta:
        accept_within = self.rules.lifecycle.accept_within
        if accept_within is None:
            raise ValidationError(
                "overdue needs a deadline: add [lifecycle] accept_within = \"2d\" to the "
                "rules file (or Client(lifecycle={\"accept_within\": \"2d\"}))")
        return accept_within

    def _notify_overdue(self, as_of: int) -> int:
        """Write ``on_overdue`` rows for overdue hand-offs not told of yet; how many."""
        accept_within = self.rules.lifecycle.accept_within
        if accept_within is None or not self._outbox.has_overdue_hooks():
            return 0
        total = 0
        while True:
            found = self.store.transact(lambda tx: handoff.notify(
                tx, accept_within, as_of,
                lambda rows: self._outbox.overdue_rows(rows, wall_micros())))
            total += found
            if found < handoff.NOTIFY_CHUNK:
                break
        self._dispatch(bool(total))
        return total

    def _periodic(self) -> None:
        """The delivery worker's periodic pass: tell ``on_overdue`` of new overdue leads."""
        try:
            self._notify_overdue(_now_micros())
        except Exception:
            if not self.store.closed:
                log.exception("pqlsdk: the periodic look for overdue leads failed")

    def _register(self, callback: Callable[[Any], Any], name: str | None,
                  prefix: str = "callback:", method: str = "on_qualified") -> None:
        if name is not None:
            destination = f"{prefix}{name}"
            if destination in self._outbox.sinks:
                raise ValidationError(
                    f"name {name!r} is already registered with {method}; give each "
                    "callback its own name")
        else:
            qualname = callback_name(callback)
            destination = f"{prefix}{qualname}"
            why = ("a lambda" if "<lambda>" in qualname
                   else "a closure" if "<locals>" in qualname
                   else "a second callable of this qualname"
                   if destination in self._outbox.sinks else None)
            if why is not None:
                destination = f"{destination}@{uuid.uuid4().hex[:12]}"
                warnings.warn(
                    f"{method}: {qualname} is {why}, so it has no stable identity: rows "
                    f"it leaves at exit will wait as orphaned. Register it with "
                    f"name=\"...\" to deliver them after a restart.",
                    DeliveryNameWarning, stacklevel=3)
        self._outbox.add_sink(destination, CallbackSink(callback))
        if not self.sync_mode and self._worker_started():
            self._worker.wake()

    def _worker_started(self) -> bool:
        return hasattr(self, "_worker") and self._worker.running

    def retarget(self, old_name: str, new_name: str) -> int:
        """Hand every row left for destination ``old_name`` (e.g. a renamed callback's,
        reported as orphaned) to ``new_name``; return how many. Names are given as
        registered (``"crm"``) or as shown in :meth:`deliveries` (``"callback:crm"``).
        Failed rows among them become pending again."""
        old, new = _destination(old_name, "old_name"), _destination(new_name, "new_name")
        now = wall_micros()
        moved = self.store.transact(lambda tx: tx.retarget(old, new, now))
        self._dispatch(bool(moved))
        return moved

    # -- recording --------------------------------------------------------------------------

    def track(
        self,
        user_id: str | None,
        event: str,
        properties: dict[str, Any] | None = None,
        *,
        account_id: str | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
        anonymous_id: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> list[Qualification]:
        """Record that ``user_id`` did ``event``; return the qualifications it completed.

        The event and any qualification it completes are committed together. The same
        ``message_id`` twice is stored and counted once (the second call returns ``[]``).
        The event counts for ``account_id`` (or the user's current account, if any).
        Before signup pass ``user_id=None, anonymous_id=...``: it counts for the anonymous
        visitor, and for the user once linked (:meth:`alias`, or an :meth:`identify` naming
        both). ``context`` and ``integrations`` (Segment's) are kept and forwarded as given.
        """
        return self._record(calls.prepare_track(
            user_id, event, properties, account_id=account_id, timestamp=timestamp,
            message_id=message_id, anonymous_id=anonymous_id, context=context,
            integrations=integrations))

    def page(
        self,
        user_id: str | None = None,
        name: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        category: str | None = None,
        account_id: str | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
        anonymous_id: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> list[Qualification]:
        """Segment's ``page``: recorded as an event named ``page`` whose properties hold
        ``name`` and ``category`` beside the given ones, so a rule matches it with
        ``event = "page"``, ``where = { name = "Pricing" }``. Otherwise as :meth:`track`.

        >>> client.page("ada", "Pricing", {"url": "https://example.com/pricing"})
        """
        return self._record(calls.prepare_page(
            "page", user_id, name, properties, category=category, account_id=account_id,
            timestamp=timestamp, message_id=message_id, anonymous_id=anonymous_id,
            context=context, integrations=integrations))

    def screen(
        self,
        user_id: str | None = None,
        name: str | None = None,
        properties: dict[str, Any] | None = None,
        *,
        category: str | None = None,
        account_id: str | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
        anonymous_id: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> list[Qualification]:
        """Segment's ``screen`` (a mobile app's page): an event named ``screen``, as
        :meth:`page` records ``page``."""
        return self._record(calls.prepare_page(
            "screen", user_id, name, properties, category=category, account_id=account_id,
            timestamp=timestamp, message_id=message_id, anonymous_id=anonymous_id,
            context=context, integrations=integrations))

    def identify(
        self,
        user_id: str | None,
        traits: dict[str, Any] | None = None,
        *,
        account_id: str | None = None,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
        anonymous_id: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> list[Qualification]:
        """Merge ``traits`` into the user's traits (a null value removes one) and re-check the
        user rules that read a changed trait. ``account_id`` ties the user to an account.

        With both ``user_id`` and ``anonymous_id`` (the signup), the anonymous visitor's
        activity joins the user's, as :meth:`alias` does. The same ``message_id`` twice is
        applied once."""
        return self._record(self.prepare_identify(
            user_id, traits, account_id=account_id, timestamp=timestamp,
            message_id=message_id, anonymous_id=anonymous_id, context=context,
            integrations=integrations))

    def group(
        self,
        user_id: str,
        account_id: str,
        traits: dict[str, Any] | None = None,
        *,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> list[Qualification]:
        """Tie ``user_id`` to ``account_id`` from now on, merge the account's ``traits`` and
        re-check the account rules that read a changed trait. The same ``message_id`` twice
        is applied once."""
        return self._record(self.prepare_group(
            user_id, account_id, traits, timestamp=timestamp, message_id=message_id,
            context=context, integrations=integrations))

    def alias(
        self,
        previous_id: str,
        user_id: str,
        *,
        timestamp: datetime | str | None = None,
        message_id: str | None = None,
        context: dict[str, Any] | None = None,
        integrations: dict[str, Any] | None = None,
    ) -> list[Qualification]:
        """Segment's ``alias``: what was recorded under ``previous_id`` (an anonymous id, a
        pre-signup id) counts for ``user_id`` from then on, in rules, scores, explain and
        the funnel. The previous subject does not remain a separate lead: its events,
        traits (the user's win), history and qualifications join the user's; the later of
        the two stages stands (a user sales put in a side state keeps it); a rule both had
        met stays one qualification, the earlier. The user's rules are re-checked at once;
        return the qualifications that created. Later calls under ``previous_id`` count
        for ``user_id``. Refused if ``previous_id`` already counts for another user.

        >>> client.alias("anon-7f3", "ada")
        """
        return self._record(calls.prepare_alias(
            previous_id, user_id, timestamp=timestamp, message_id=message_id,
            context=context, integrations=integrations))

    # The calls, split into validation (prepare_*) and work inside a transaction
    # (apply), so that an import can apply many validated calls per transaction.

    def prepare_track(self, user_id: Any, event: Any, properties: Any = None, *,
                      account_id: Any = None, timestamp: Any = None, message_id: Any = None,
                      anonymous_id: Any = None, context: Any = None, integrations: Any = None
                      ) -> Call:
        """Validate a ``track`` call (raising :class:`ValidationError`) without recording it."""
        return calls.prepare_track(user_id, event, properties, account_id=account_id,
                                   timestamp=timestamp, message_id=message_id,
                                   anonymous_id=anonymous_id, context=context,
                                   integrations=integrations)

    def prepare_identify(self, user_id: Any, traits: Any = None, *, account_id: Any = None,
                         timestamp: Any = None, message_id: Any = None,
                         anonymous_id: Any = None, context: Any = None,
                         integrations: Any = None) -> Call:
        """Validate an ``identify`` call without recording it."""
        return calls.prepare_identify(user_id, traits, account_id=account_id,
                                      timestamp=timestamp, message_id=message_id,
                                      anonymous_id=anonymous_id, context=context,
                                      integrations=integrations)

    def prepare_group(self, user_id: Any, account_id: Any, traits: Any = None, *,
                      timestamp: Any = None, message_id: Any = None, context: Any = None,
                      integrations: Any = None) -> Call:
        """Validate a ``group`` call without recording it."""
        return calls.prepare_group(user_id, account_id, traits, timestamp=timestamp,
                                   message_id=message_id, context=context,
                                   integrations=integrations)

    def _record(self, call: Call) -> list[Qualification]:
        run = self._commits.run if self._shared_commits else self.store.transact
        outcome = run(functools.partial(self.engine.apply, call=call))
        if not outcome.qualifications:  # most calls: nothing to log
            self._dispatch(outcome.queued)
            return []
        created = list(outcome.qualifications)
        _log_created(created)
        self._dispatch(outcome.queued)
        return created

    def apply(self, tx: Transaction, call: Call, *, deliver: bool = True
              ) -> tuple[list[Qualification], bool]:
        """Record a prepared call inside ``tx``: ``(qualifications created, whether outbox
        rows were written)``. Deliver with :meth:`deliver_pending` after the commit;
        ``deliver=False`` writes no outbox rows (a backfill). See :meth:`Engine.apply`."""
        outcome = self.engine.apply(tx, call, deliver=deliver)
        return list(outcome.qualifications), outcome.queued

    def deliver_pending(self) -> None:
        """After an :meth:`apply` that wrote outbox rows: deliver (``sync_mode``) or wake the
        worker."""
        self._dispatch(True)

    def evaluate(self, *, as_of: datetime | str | None = None) -> list[Qualification]:
        """Re-check every subject against every rule it has not met, as of ``as_of``
        (default now): what time alone can change (``at_most``, ``not``) and what late
        events completed. Qualifications found here are dated ``as_of``."""
        at = validation.moment(as_of, "as_of")
        with self.store.read() as tx:
            subjects = list(tx.subjects())
        created: list[Qualification] = []
        for start in range(0, len(subjects), EVALUATE_CHUNK):
            chunk = subjects[start:start + EVALUATE_CHUNK]
            outcome = self.store.transact(
                functools.partial(self.engine.evaluate, subjects=chunk, at=at))
            found = list(outcome.qualifications)
            created += found
            _log_created(found)
            self._dispatch(outcome.queued)
        self._notify_overdue(to_micros(at))
        return created

    def score(
        self,
        user_id: str | None = None,
        *,
        account_id: str | None = None,
        as_of: datetime | str | None = None,
    ) -> Score:
        """The fit + behaviour score of a user (or an account) as of ``as_of`` (default now),
        with each line's points.

        >>> client.score("ada").total
        45.0
        """
        until = _micros(as_of, "as_of")
        with self._read_subject(user_id, account_id) as (tx, subject_type, subject_id):
            subject = known_subject(tx, subject_type, subject_id)._replace(since=None)
            return SubjectFacts(tx, subject, until, self.rules.scoring).scores()

    @contextlib.contextmanager
    def _read_subject(self, user_id: str | None, account_id: str | None
                      ) -> Iterator[tuple[Transaction, str, str]]:
        """The read path of every per-subject reading (status, explain, score, history): a
        read transaction and the subject, a user id resolved to the user it was linked to
        (an aliased previous id, a linked anonymous id), as Segment and PostHog resolve an
        alias."""
        subject_type, subject_id = _subject(user_id, account_id)
        with self.store.read() as tx:
            yield tx, subject_type, resolve(tx, subject_type, subject_id)

    def scores(self, *, subject: str = "user", as_of: datetime | str | None = None
               ) -> list[float]:
        """Every user's (or account's) total score as of ``as_of``: a distribution."""
        validation.subject_type(subject)
        until = _micros(as_of, "as_of")
        with self.store.read() as tx:
            totals = []
            for subject_id in tx.all_subjects(subject):
                tx.enter(subject, subject_id)  # what follows reads this subject's tenant
                facts = SubjectFacts(tx, load_subject(tx, subject, subject_id)._replace(
                    since=None), until, self.rules.scoring)
                totals.append(facts.score("total"))
            return totals

    # -- lifecycle ------------------------------------------------------------------------

    def set_stage(
        self,
        user_id: str | None = None,
        *,
        stage: str,
        account_id: str | None = None,
        reason: str | None = None,
        timestamp: datetime | str | None = None,
        create: bool = False,
        criteria: dict[str, Any] | None = None,
    ) -> StageChange | None:
        """Move a user (or an account) to ``stage`` by hand, in any direction, with the sales
        team's ``reason``; return the change, or None if it already was there.

        A subject pqlsdk has never seen raises :class:`~pqlsdk.UnknownSubject` (a typo in an
        id must not make a new lead), unless ``create=True`` (billing or a CRM may know an
        account before its first event): it is then first seen as a ``lead`` at
        ``timestamp`` and moved.

        ``criteria`` keeps sales' structured reasons beside ``reason``, e.g. BANT's
        ``{"budget": False, "authority": True, "need": True, "timing": False}`` (a JSON
        object; :meth:`rule_report` counts rejections by each criterion that is False).

        ``unqualified`` (rejected for now) and ``disqualified`` (never a fit) start a new
        round: the subject may qualify again for its rules, counting only what it does from
        then on; while ``disqualified`` no rule qualifies it until a person moves it back.

        >>> client.set_stage("ada", stage="unqualified", reason="no budget this quarter")
        """
        subject_type, subject_id = _subject(user_id, account_id)
        validation.stage(stage)
        validation.free_text("reason", reason)
        if not isinstance(create, bool):
            raise ValidationError(f"create must be True or False (got {create!r})")
        criteria_json = None if criteria is None else validation.json_object("criteria",
                                                                             criteria)
        at = validation.moment(timestamp)
        outcome = self.store.transact(
            lambda tx: self.engine.set_stage(tx, subject_type, subject_id, stage, at, reason,
                                             create=create, criteria=criteria_json))
        self._dispatch(outcome.queued)
        return outcome.stage_change

    def apply_stage(self, tx: Transaction, call: Call, *, deliver: bool = True) -> bool:
        """Record an imported stage change inside ``tx`` (see :meth:`Engine.import_stage`);
        returns whether outbox rows were written (never with ``deliver=False``)."""
        return self.engine.import_stage(tx, call, deliver=deliver).queued

    def history(self, user_id: str | None = None, *, account_id: str | None = None
                ) -> list[StageChange]:
        """Every stage change of a user (or an account), oldest first: when it was first seen
        (``first_seen``), each qualification's move (``rule:NAME``), each manual one."""
        with self._read_subject(user_id, account_id) as (tx, subject_type, subject_id):
            return [StageChange.from_row(row) for row in tx.history(subject_type, subject_id)]

    def forget(self, user_id: str) -> None:
        """Erase a user for a privacy request, in one transaction: its events, traits,
        qualifications, history, pending deliveries, staged imports and import bookkeeping.
        Account counts no longer include its events; an account's qualification that this
        user completed keeps no trace of who (its ``user_id`` becomes ``"(forgotten)"``).

        No byte of the user is left in the file, its WAL or its free pages: deleted rows
        are overwritten (``secure_delete``) and the WAL is checkpointed and truncated. Its
        message ids are remembered only as keyed hashes, so re-importing the same file (or
        resuming a stopped import) does not bring the user back. Raises
        :class:`~pqlsdk.StoreBusy` if another connection kept the WAL from being truncated
        (the rows are erased; retry to clear the WAL).
        """
        privacy.forget(self.store, _require_id("user_id", user_id))

    def purge(self, *, stage: str, older_than: str | timedelta,
              as_of: datetime | str | None = None, dry_run: bool = True) -> list[str]:
        """The users now at ``stage`` (e.g. ``disqualified``) who entered it at least
        ``older_than`` (``"180d"``) before ``as_of`` (default now), oldest id first; with
        ``dry_run=False`` each is erased as :meth:`forget` erases a user (in chunked
        transactions, then one WAL checkpoint). A dry run (the default) changes nothing.

        >>> client.purge(stage="disqualified", older_than="180d")      # who would go
        ['bob']
        >>> client.purge(stage="disqualified", older_than="180d", dry_run=False)
        """
        validation.stage(stage)
        age = parse_duration(older_than, key="older_than") if isinstance(
            older_than, str | timedelta) else None
        if age is None:
            raise ValidationError(f"older_than must be a duration like '180d' (got "
                                  f"{older_than!r})")
        if not isinstance(dry_run, bool):
            raise ValidationError(f"dry_run must be True or False (got {dry_run!r})")
        before = _micros(as_of, "as_of") - age // timedelta(microseconds=1)
        with self.store.read() as tx:
            found = tx.users_in_stage_since(stage, before)
        if not dry_run and found:
            privacy.forget_many(self.store, found)
        return found

    def prune(self, *, as_of: datetime | str | None = None) -> int:
        """Fold and remove every event older than the retention as of ``as_of`` (default
        now); return how many were removed (0 without ``retention=``). The background
        pruner does the same a small batch at a time."""
        until = _micros(as_of, "as_of")
        if self._retention is None:
            return 0
        return self._retention.prune(self.store, until)

    def export(self, user_id: str) -> dict[str, Any]:
        """Everything pqlsdk keeps about a user, JSON-ready, for an access request: traits,
        events, stages (history), qualifications, staged imports and pending deliveries.

        >>> client.export("ada")["traits"]
        {'plan': 'trial'}
        """
        return privacy.export(self.store, _require_id("user_id", user_id))

    # -- reports --------------------------------------------------------------------------

    def funnel(
        self,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        by: str | None = None,
        subject: str = "user",
        to: str | None = None,
        exclude_rejected: bool = False,
    ) -> Funnel:
        """Per stage: how many subjects entered it (between ``since`` and ``until``), how
        many went on to a later stage, the conversion rate (None for the last stage) and
        the median time in stage; ``by="lead_source"`` splits it by the value the trait had
        when each subject entered each stage. ``subject="account"`` for accounts.

        ``to="sql"`` also gives, per stage before it, how many of those who entered went
        on to reach ``sql`` (or a later stage) and that share (MQL→SQL, PQL→SQL);
        ``exclude_rejected=True`` leaves out subjects now ``unqualified`` or
        ``disqualified``. ``Funnel.handoff``: how long sales took to accept or reject.

        >>> client.funnel(by="lead_source").stage("mql").conversion
        0.25
        """
        validation.subject_type(subject)
        by = _optional_id("by", by)
        if to is not None and (not isinstance(to, str) or to not in STAGES or to == STAGES[0]):
            raise ValidationError(f"to must be one of {', '.join(STAGES[1:])} (got {to!r})")
        if not isinstance(exclude_rejected, bool):
            raise ValidationError(
                f"exclude_rejected must be True or False (got {exclude_rejected!r})")
        lower = _bound(since, "since")
        upper = _bound(until, "until")
        with self.store.read() as tx:
            return reports.funnel(tx, subject, lower, upper, by, to=to,
                                  exclude_rejected=exclude_rejected)

    def rule_report(self, *, since: datetime | str | None = None) -> list[RuleOutcome]:
        """Per rule: subjects it qualified (since ``since``), how many later reached ``sql``,
        ``opportunity`` and ``customer``, how many sales moved to ``unqualified`` or
        ``disqualified``, and their most common reasons. Shadow rules have rows of their
        own; each row is split by rule version."""
        lower = _bound(since, "since")
        with self.store.read() as tx:
            return reports.rule_report(tx, [(r.name, r.shadow) for r in self.rules.rules],
                                       lower)

    def backtest(
        self,
        rules: str | os.PathLike[str] | list[Rule] | dict[str, Any] | RuleSet | None = None,
        *,
        outcome: str | dict[str, str] = "customer",
        horizon: str | timedelta = "30d",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        subject: str = "user",
        against: str | None = None,
    ) -> backtests.Backtest:
        """Replay the stored history for ``rules`` (default: this Client's; or a TOML path,
        a dict, a list of :class:`Rule`) and measure each against ``outcome`` (a stage
        reached, or ``{"event": NAME}``) within ``horizon``: qualified, converted,
        precision with its 95% interval, recall, base rate, lift, median lead time,
        missed. Read only: nothing is written. ``against="current"`` also lists who the
        given rules add and drop compared with this Client's rules.

        >>> result = client.backtest("candidate_rules.toml", against="current")
        >>> result.rule("team_activation").lift
        3.2
        """
        if subject not in ("user", "account"):
            raise ValidationError(f"subject must be 'user' or 'account' (got {subject!r})")
        if against not in (None, "current"):
            raise ValidationError(f"against must be 'current' or None (got {against!r})")
        ruleset = self._ruleset(rules)
        frame = backtests.frame(outcome, horizon, _bound(since, "since"),
                                _micros(until, "until"))
        current = self.rules if against == "current" else None
        with self.store.read() as tx:
            return backtests.backtest(tx, ruleset, frame, subject, current)

    def suggest(
        self,
        *,
        outcome: str | dict[str, str] = "customer",
        horizon: str | timedelta = "30d",
        min_support: int = 20,
        top: int = 10,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        subject: str = "user",
    ) -> list[Suggestion]:
        """Candidate rules found in the stored events (at least N of an event within a
        window, an event with a property value, N distinct values of a property), each
        qualifying at least ``min_support`` subjects, best lift first, measured as
        :meth:`backtest` measures a rule; each with its TOML, ready to paste. Read only.

        >>> print(client.suggest(top=1)[0].toml)
        """
        if subject not in ("user", "account"):
            raise ValidationError(f"subject must be 'user' or 'account' (got {subject!r})")
        for name, value in (("min_support", min_support), ("top", top)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be a whole number >= 1 (got {value!r})")
        frame = backtests.frame(outcome, horizon, _bound(since, "since"),
                                _micros(until, "until"))
        with self.store.read() as tx:
            return suggestions.suggest(tx, frame, subject, min_support=min_support, top=top)

    def _ruleset(self, rules: Any) -> RuleSet:
        if rules is None:
            return self.rules
        if isinstance(rules, RuleSet):
            return rules
        if isinstance(rules, list | tuple):
            return load_rules(list(rules), self.rules.scoring)
        return load_rules(rules)

    # -- reading ----------------------------------------------------------------------------

    def qualifications(
        self, *, since: datetime | str | None = None, rule: str | None = None,
        shadow: bool | None = False,
    ) -> list[Qualification]:
        """Recorded qualifications in time order, optionally since a moment or for one rule.
        Live ones by default; ``shadow=True`` lists the shadow rules' instead, ``None`` both."""
        since_us = _bound(since, "since")
        rule = _optional_id("rule", rule)
        with self.store.read() as tx:
            rows = tx.qualifications(since=since_us, rule=rule, shadow=shadow)
        return [Qualification.from_row(row) for row in rows]

    def status(
        self,
        user_id: str | None = None,
        *,
        account_id: str | None = None,
        as_of: datetime | str | None = None,
    ) -> Status:
        """Where a user (or, with ``account_id=``, an account) stands; progress is measured
        as of ``as_of`` (default now)."""
        until = _micros(as_of, "as_of")
        with self._read_subject(user_id, account_id) as (tx, subject_type, subject_id):
            return self.engine.status(tx, subject_type, subject_id, until)

    def explain(
        self,
        user_id: str | None = None,
        *,
        account_id: str | None = None,
        as_of: datetime | str | None = None,
    ) -> str:
        """Per rule, each condition's measured value against its bound, for people::

            user u1: stage lead
              ✗ team_activation: not yet
                ✗ all of:
                  ✓ report_generated in 14d: 5 of at least 5
                  ✗ teammate_invited (distinct invitee_email): 1 of at least 3

        A user's explanation also covers its account's rules. Progress is measured as of
        ``as_of`` (default now).
        """
        until = _micros(as_of, "as_of")
        with self._read_subject(user_id, account_id) as (tx, subject_type, subject_id):
            statuses = [self.engine.status(tx, subject_type, subject_id, until)]
            if subject_type == "user":
                account = tx.account_of(subject_id)
                if account is not None:
                    statuses.append(self.engine.status(tx, "account", account, until))
        return "\n".join(line for status in statuses for line in explain_lines(status))

    # -- delivery ---------------------------------------------------------------------------

    def _dispatch(self, queued: bool) -> None:
        """After the commit: deliver now (``sync_mode``) or let the worker do it.

        Sync mode has no background thread (as in Segment's client): a delivery that fails
        stays in the outbox and is retried, once due, by the next call, ``flush`` or ``close``.
        """
        if not queued:
            return
        if not self.sync_mode:
            self._worker.wake()
            return
        try:
            while self._outbox.deliver_once():
                pass
        except Exception:  # never into track(): the rows stay in the outbox
            log.exception("pqlsdk: delivery failed; the outbox keeps the rows")

    def deliveries(self, *, status: str | None = None) -> list[Delivery]:
        """What is still in the outbox: ``status="pending"`` (waiting or retrying),
        ``"failed"`` (gave up, or refused for good by the destination) or ``"orphaned"``
        (pending for a destination no callback of this Client is registered under: see
        :meth:`retarget`); delivered rows are removed."""
        if status not in (None, "pending", "failed", "orphaned"):
            raise ValidationError(
                f"status must be 'pending', 'failed', 'orphaned' or None (got {status!r})")
        if status == "orphaned":
            return [Delivery.from_row({**row, "status": "orphaned"})
                    for row in self._outbox.orphans()]
        with self.store.read() as tx:
            return [Delivery.from_row(row) for row in tx.outbox_rows(status)]

    def retry_failed(self) -> int:
        """Make every failed delivery pending again (due now); return how many."""
        now = wall_micros()
        revived = self.store.transact(lambda tx: tx.retry_failed(now))
        self._dispatch(bool(revived))
        return revived

    def health(self) -> Health:
        """Per destination the pending count, the oldest pending row's age and the failed
        count; the latest delivery error; the schema version; the file's size. Cheap
        enough for a /health endpoint: one pass over the (short) outbox and two ``stat``
        calls; the events are never counted."""
        with self.store.read() as tx:
            rows = tx.outbox_health()
            version = tx.schema_version()
        return build_health(rows, self._outbox.destinations(), version, self.store.path,
                            wall_micros(), self.send)

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver everything due, waiting up to ``timeout`` seconds; True when everything
        was delivered, False when time ran out, rows wait for a retry or rows have failed
        (see :meth:`deliveries`). Segment rows kept while sending is off (``send=False``
        here or on the Segment client) are not waited for: they stay pending for a Client
        that sends.

        With a ``timeout``, the delivery threads do the work (one per destination, so a
        hanging callback holds only its own rows) and flush returns within about
        ``timeout`` whatever a destination or another process does; rows whose retry falls
        due before it are waited for. With ``None``, flush delivers in the calling thread
        until a pass over the destinations finds nothing to claim, then waits for this
        process's deliveries in flight while they progress (at least one settled claim per
        ``delivery_lease``); rows not yet due are left, so it always returns.
        """
        if timeout is None:
            return self._flush_here()
        deadline = time.monotonic() + max(0.0, timeout)
        self._worker.wake()
        while True:
            looked = time.monotonic()
            try:
                pending, due, next_due, failed = self._outbox.waiting(
                    max(0.0, deadline - looked))
            except StoreBusy:
                return False  # a long report held the read connection past the deadline
            except Exception:
                log.exception("pqlsdk: flush could not read the outbox")
                return False
            if not pending:
                return not failed
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause = 0.05
            if not due:
                if next_due is None:
                    return False
                until_due = (next_due - wall_micros()) / 1e6
                if until_due > left:
                    return False  # nothing will fall due in time
                pause = max(0.0, until_due)
            with self._outbox.progress:
                self._outbox.progress.wait(min(pause, left))
            if not due:
                self._worker.wake()
            # look again at most every FLUSH_LOOK seconds: each look reads the whole outbox
            rest = min(FLUSH_LOOK - (time.monotonic() - looked), deadline - time.monotonic())
            if rest > 0:
                self._closing.wait(rest)

    def _flush_here(self) -> bool:
        """``flush()``: passes in this thread until one claims nothing; then, while this
        process's delivery threads have claims in flight, wait for them as long as they
        settle something at least once a lease."""
        outbox = self._outbox
        while True:
            seen = outbox.settled
            try:
                while outbox.deliver_once():
                    pass
                pending, _, _, failed = outbox.waiting()
            except Exception:
                log.exception("pqlsdk: delivery failed during flush")
                return False
            if not pending:
                return not failed
            if not outbox.renewer.in_flight():
                return False
            with outbox.progress:
                if not outbox.progress.wait_for(lambda s=seen: outbox.settled != s,  # type: ignore[misc]
                                                outbox.lease):
                    return False  # nothing settled for a whole lease: a destination hangs

    def close(self, timeout: float = 5.0) -> bool:
        """Flush for at most ``timeout`` seconds, stop the delivery threads and close the
        database, all within about ``timeout``. Returns whether everything was delivered;
        what was not stays in the outbox (a delivery still in flight keeps its lease until
        it ends or the lease runs out)."""
        if self._closed:
            return True
        deadline = time.monotonic() + timeout
        # keep a little of the time for the lanes to settle what they have in flight, so
        # that it is not left leased until the lease runs out
        delivered = self.flush(timeout - min(timeout * 0.25, CLOSE_GRACE))
        self._closing.set()
        self._outbox.stop_claiming()
        if self._pruner is not None:
            self._pruner.stop(max(0.0, deadline - time.monotonic()))
        self._worker.stop(max(0.0, deadline - time.monotonic()))
        self.store.close(max(0.0, deadline - time.monotonic()))
        self._closed = True
        return delivered

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_name(name: Any) -> None:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValidationError(
            f"name must be a non-empty string naming the destination (got {name!r})")


def _destination(name: Any, argument: str) -> str:
    """A destination as stored: ``segment``, ``callback:NAME`` (given as either form)."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(
            f"{argument} must be a destination name, e.g. 'crm' or 'callback:crm' "
            f"(got {name!r})")
    return (name if name == SEGMENT or name.startswith(("callback:", STAGE_HOOK))
            else f"callback:{name}")
def _log_created(created: list[Qualification]) -> None:
    """One ``pqlsdk`` log line per new qualification, with its id (after the commit)."""
    for q in created:
        log.info("pqlsdk: qualification %s: %s %s met %s (stage %s)", q.id, q.subject_type,
                 q.subject_id, q.rule, q.stage)


def _micros(value: datetime | str | None, name: str) -> int:
    """A moment argument as microseconds; None means now."""
    return to_micros(validation.moment(value, name))


def _now_micros() -> int:
    return to_micros(now())


def _bound(value: datetime | str | None, name: str) -> int | None:
    """An optional bound (``since``, ``until``) as microseconds, or None."""
    return None if value is None else to_micros(validation.moment(value, name))


def _forget_after_fork(client: Client) -> None:
    """In a child made by fork() (gunicorn, uwsgi): a new connection, a new worker, and new
    HTTP connections to Segment. The parent forks only between statements of its delivery
    threads (it holds the store's locks across fork()): SQLite's in-process lock state
    copied mid-transaction would leave the child's new connection "database is locked"."""
    ref = weakref.ref(client)

    def after_in_child() -> None:
        child = ref()
        if child is None or child._closed:
            return
        child.store.reopen_after_fork()
        child._commits = SharedCommits(child.store)
        child._worker = Worker(child._outbox, child._worker.poll_interval)
        child._outbox.after_fork()
        child._closing = threading.Event()
        if child._pruner is not None:
            child._pruner = Pruner(child._pruner.retention, child.store, _now_micros)
            child._pruner.start()
        if child.segment is not None:
            reset_http_session()

    def before() -> None:
        parent = ref()
        if parent is not None and not parent._closed:
            parent.store.hold_for_fork()

    def after_in_parent() -> None:
        parent = ref()
        if parent is not None:
            parent.store.release_after_fork()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=before, after_in_parent=after_in_parent,
                            after_in_child=after_in_child)


def _subject(user_id: str | None, account_id: str | None) -> tuple[str, str]:
    return validation.subject(user_id, account_id)
