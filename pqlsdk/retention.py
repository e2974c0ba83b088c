"""Bounded growth: events older than the retention are folded into per-subject rollups and
removed, a small batch at a time.

    >>> keep = parse_retention("400d")
    >>> Retention(keep, projection(ruleset)).prune(store, now)
    1234

A rollup holds, per user, account, event name and *kept properties*, how many events there
were and their first and last time. The kept properties are those the rules and the scoring
read for that event (``where`` keys, ``distinct``, ``sum``), or every property when no
rules are known (``pqlsdk prune`` without ``--rules``). Reading a subject's events
(:meth:`pqlsdk.store.Transaction.measure` and the scoring's counts) adds its rollups, so:

- counts, ``where`` filters, distinct values and sums without a window stay exact;
- a window is never longer than the retention (a rule asking for one is refused), so
  windowed conditions read only events that are kept;
- decaying scores weigh a rollup's events as of its last event: off by at most the decay
  between the first and the last pruned event, on points that have decayed to under
  ``0.5 ** (retention / half_life)`` of their value (400d at a 30d half-life: 0.0001).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs

from .errors import PqlError, RuleError, StoreClosed, ValidationError
from .rules import Condition, EventCondition, RuleSet, parse_duration, walk
from .rules import format_duration as _format
from .store import Store, Transaction
from .store.base import RollupAdd, RollupKey

log = logging.getLogger("pqlsdk")

_MICRO = timedelta(microseconds=1)
#: Events scanned per transaction by the background pruner (small: track() waits on it).
CHUNK = 100
#: The share of the time the background pruner may work (it waits the rest).
DUTY = 0.02
#: Events scanned per transaction by an explicit prune().
BULK_CHUNK = 5_000


def parse_retention(value: str | timedelta | None) -> timedelta | None:
    """``"400d"`` (s, m, h, d, w) or a ``timedelta`` as a duration; ``None`` keeps all."""
    if value is None:
        return None
    try:
        return parse_duration(value, key="retention")
    except RuleError as exc:
        raise ValidationError(f"retention: {exc.problem}") from None


def _event_conditions(condition: Condition) -> Iterable[EventCondition]:
    return (c for c in walk(condition) if isinstance(c, EventCondition))


def check_windows(ruleset: RuleSet, keep: timedelta) -> None:
    """Refuse (:class:`~pqlsdk.RuleError`) a rule or scoring line whose window is longer
    than the retention: it would count events that are no longer there."""
    for rule in ruleset.rules:
        for condition in _event_conditions(rule.condition):
            if condition.within is not None and condition.within > keep:
                raise RuleError(
                    f"window {_format(condition.within)} is longer than the retention "
                    f"({_format(keep)}): events older than the retention are removed; "
                    f"shorten the window or lengthen the retention",
                    source=ruleset.source, rule=rule.name, key=f"{condition.event}.within")
    if ruleset.scoring is not None:
        for line in ruleset.scoring.behavior:
            if line.within is not None and line.within > keep:
                raise RuleError(
                    f"window {_format(line.within)} is longer than the retention "
                    f"({_format(keep)})", source=ruleset.source,
                    key=f"scoring.behavior.{line.event}.within")


def projection(ruleset: RuleSet) -> dict[str, frozenset[str]]:
    """Per event name, the properties the rules and the scoring read (what a rollup keeps);
    an event no one reads keeps none."""
    kept: dict[str, set[str]] = {}
    for rule in ruleset.rules:
        for condition in _event_conditions(rule.condition):
            names = kept.setdefault(condition.event, set())
            names.update(key for key, _ in condition.where)
            names.update(p for p in (condition.distinct, condition.sum) if p is not None)
    if ruleset.scoring is not None:
        for line in ruleset.scoring.behavior:
            kept.setdefault(line.event, set()).update(key for key, _ in line.where)
    return {event: frozenset(names) for event, names in kept.items()}


@attrs.frozen
class Retention:
    """How long events are kept (``keep``) and which properties a rollup keeps per event
    (``kept``: None keeps them all)."""

    keep: timedelta
    kept: dict[str, frozenset[str]] | None = None

    def cutoff(self, now: int) -> int:
        """Events before this (µs) are pruned as of ``now``."""
        return now - self.keep // _MICRO

    def _key(self, event: str, properties: str) -> str:
        if self.kept is None:
            return properties
        names = self.kept.get(event, frozenset())
        if not names:
            return "{}"
        props = json.loads(properties)
        return json.dumps({k: props[k] for k in sorted(names) if k in props}, sort_keys=True)

    def prune_chunk(self, store: Store, after_id: int, chunk: int, now: int
                    ) -> tuple[int | None, int]:
        """Fold and remove the old events among the next ``chunk`` by id, in one
        transaction: ``(the last id scanned or None at the end, events removed)``."""
        cutoff = self.cutoff(now)

        def fold(tx: Transaction) -> tuple[int | None, int]:  # may run again: see transact
            last, removed = tx.take_old_events(after_id, chunk, cutoff)
            groups: dict[RollupKey, RollupAdd] = {}
            for pruned in removed:
                key = RollupKey(pruned.tenant_key, pruned.user_id, pruned.account_id,
                                pruned.event, self._key(pruned.event, pruned.properties))
                seen = groups.get(key)
                groups[key] = RollupAdd(key, 1, pruned.ts, pruned.ts) if seen is None else (
                    RollupAdd(key, seen.n + 1, min(seen.first_ts, pruned.ts),
                              max(seen.last_ts, pruned.ts)))
            tx.add_to_rollups(list(groups.values()))
            return last, len(removed)

        return store.transact(fold)

    def prune(self, store: Store, now: int, chunk: int = BULK_CHUNK) -> int:
        """One full sweep: fold and remove every event older than the retention as of
        ``now``; return how many."""
        after, removed = 0, 0
        while True:
            last, count = self.prune_chunk(store, after, chunk, now)
            removed += count
            if last is None:
                return removed
            after = last


class Pruner:
    """Prunes in the background at a low rate: one small transaction (``CHUNK`` events
    scanned), then a wait of at least ``pause`` seconds and long enough that pruning takes
    at most ``DUTY`` of the time (4%), while a sweep is under way; then ``rest`` seconds
    before the next sweep. track() waits at most for one small batch."""

    def __init__(self, retention: Retention, store: Store, clock: Any, *,
                 pause: float = 0.05, rest: float = 60.0) -> None:
        self.retention, self.store, self.clock = retention, store, clock
        self.pause, self.rest = pause, rest
        self.after = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One small batch of the current sweep; returns events removed. At the end of the
        table the next call starts a new sweep."""
        last, removed = self.retention.prune_chunk(self.store, self.after, CHUNK,
                                                   self.clock())
        self.after = 0 if last is None else last
        return removed

    def start(self) -> None:
        """Start the thread (a daemon: interpreter exit never waits for it)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pqlsdk-prune",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting up to ``timeout``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                self.run_once()
            except (StoreClosed, sqlite3.ProgrammingError):
                return  # the Client was closed under us
            except PqlError as exc:  # busy, full, damaged: try again after a rest
                log.warning("pqlsdk: pruning paused: %s", exc)
                self._stop.wait(self.rest)
                continue
            except Exception:
                log.exception("pqlsdk: pruning error")
                self._stop.wait(self.rest)
                continue
            spent = time.perf_counter() - began
            self._stop.wait(self.rest if self.after == 0
                            else max(self.pause, spent * (1 / DUTY - 1)))
