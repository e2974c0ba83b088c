"""Facts about one subject, read from the store: the subject itself (traits, stage, round,
rules met) and what its events add up to as of a moment.

The store returns named rows; counting, distinct-counting and summing (:func:`fold`, the one
definition the live store and a backtest's replay share), the condition's window and the
round's start (events before it do not count) are applied here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from .ids import decode_names
from .rules import EventCondition
from .scoring import Score, Scoring, compute
from .stages import FIRST_STAGE
from .store import Transaction
from .store.base import SubjectRow
from .timestamps import MICROSECOND


class Subject(NamedTuple):
    """A user or an account as evaluation needs it: traits, stage, round, rules met."""

    type: str
    id: str
    traits_json: str = "{}"
    stage: str = FIRST_STAGE
    round: int = 0
    #: When the current round began (events before it do not count), or None.
    since: int | None = None
    done: frozenset[str | tuple[str]] = frozenset()
    #: Created by the call being recorded: its one event is that call's (nothing to read).
    new: bool = False

    @classmethod
    def from_row(cls, subject_type: str, subject_id: str, row: SubjectRow) -> Subject:
        """Build from the store's row of the subject."""
        return cls(subject_type, subject_id, row.traits or "{}", row.stage, row.round,
                   row.round_since, decode_names(row.done))


def load_subjects(
    tx: Transaction, user_id: str, account_id: str | None, ts: int,
    created: list[str] | None = None,
) -> tuple[Subject, Subject | None]:
    """The user (created if new, moved to ``account_id`` if given) and its account;
    ``created`` gets ``"user"`` and/or ``"account"`` for the subjects first seen now."""
    row = tx.user_snapshot(user_id)
    if row is None:
        tx.add_user(user_id, account_id, ts)
        if created is not None:
            created.append("user")
        user = Subject("user", user_id, new=True)
    else:
        user = Subject.from_row("user", user_id, row.user)
        if account_id is None or account_id == row.account_id:
            if row.account_id is None or row.account is None:
                return user, None
            return user, Subject.from_row("account", row.account_id, row.account)
        tx.move_user(user_id, account_id)
    if account_id is None:
        return user, None
    if tx.add_account(account_id, ts):
        if created is not None:
            created.append("account")
        return user, Subject("account", account_id, new=True)
    return user, load_subject(tx, "account", account_id)


def load_subject(tx: Transaction, subject_type: str, subject_id: str) -> Subject:
    """A known user or account (an unknown one has no traits and has met no rule)."""
    row = tx.subject_snapshot(subject_type, subject_id)
    if row is None:
        return Subject(subject_type, subject_id)
    return Subject.from_row(subject_type, subject_id, row)


#: Traits JSON texts already parsed (never mutated), since most subjects share a few texts.
_PARSED: dict[str, dict[str, Any]] = {}
#: How many texts :data:`_PARSED` keeps before it starts over.
PARSED_LIMIT = 4096
#: The longest text :data:`_PARSED` keeps (a long one, an email or a name in it, is rarely
#: shared): the memo holds at most ``PARSED_LIMIT`` short texts, a few MiB at worst.
PARSED_TEXT = 256


def parsed_traits(text: str) -> dict[str, Any]:
    """A subject's traits JSON as a dict, parsed once per distinct short text (read-only:
    shared; :func:`pqlsdk.evaluator.measure` hands callers a copy)."""
    traits = _PARSED.get(text)
    if traits is None:
        traits = json.loads(text)
        if len(text) <= PARSED_TEXT:
            if len(_PARSED) >= PARSED_LIMIT:
                _PARSED.clear()
            _PARSED[text] = traits
    return traits


def is_plain(condition: EventCondition) -> bool:
    """Whether the condition counts events alone (no ``where``, ``distinct`` or ``sum``)."""
    return not (condition.where or condition.distinct or condition.sum)


def window_start(condition: EventCondition, until: int) -> int | None:
    """The first moment (µs) of the condition's window ending at ``until``; None without one."""
    return None if condition.within is None else until - condition.within // MICROSECOND


class SubjectFacts:
    """:class:`~pqlsdk.evaluator.Facts` for one subject as of one moment, read from the store."""

    def __init__(self, tx: Transaction, subject: Subject, until: int,
                 scoring: Scoring | None = None) -> None:
        self.tx, self.subject, self.until, self.scoring = tx, subject, until, scoring
        self._traits: dict[str, Any] | None = None
        self._score: Score | None = None

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """Count, distinct-count or sum the subject's matching events in the condition's
        window ``[until - within, until]``, not before the round began, stopping once
        ``limit`` is reached."""
        since = self.subject.since
        start = window_start(condition, self.until)
        if start is not None:
            since = start if since is None else max(since, start)
        subject_type, subject_id = self.subject.type, self.subject.id
        if is_plain(condition):
            count = self.tx.count_events(subject_type, subject_id, condition.event,
                                         self.until, since, limit)
            return count if limit is None else min(count, limit)
        rows = self.tx.event_properties(subject_type, subject_id, condition.event,
                                        self.until, since)
        matches = condition.matches_properties if condition.where else None
        return fold(((json.loads(row.properties), row.n) for row in rows), condition, limit,
                    matches)

    def trait(self, name: str) -> tuple[bool, Any]:
        """``(present, value)``; a trait set to null counts as missing."""
        if self._traits is None:
            self._traits = parsed_traits(self.subject.traits_json)
        value = self._traits.get(name)
        return value is not None, value

    def event_rows(self, event: str, since: int | None, limit: int | None
                   ) -> Iterator[tuple[int, str]]:
        """``(ts, properties JSON)`` of the subject's events, newest first."""
        if self.subject.since is not None:
            since = self.subject.since if since is None else max(since, self.subject.since)
        return self.tx.event_rows(self.subject.type, self.subject.id, event, self.until, since,
                                  limit)

    def weighted_counts(self, lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """Decayed counts of the subject's events per scoring line, in one statement."""
        if self.subject.since is not None:
            lines = [(event, self.subject.since if since is None else max(since,
                                                                           self.subject.since),
                      half_life, limit) for event, since, half_life, limit in lines]
        return self.tx.weighted_counts(self.subject.type, self.subject.id, self.until, lines)

    def score(self, kind: str) -> float:
        """The subject's ``fit``, ``behavior`` or ``total`` score (computed once)."""
        if self._score is None:
            self._score = compute(self.scoring or Scoring(), self, lines=False)
        return self._score.get(kind)

    def scores(self) -> Score:
        """The subject's whole :class:`~pqlsdk.scoring.Score`, each line's points included."""
        return compute(self.scoring or Scoring(), self)


class FirstEventFacts(SubjectFacts):
    """Facts of a subject the call being recorded created: it has no traits, no round and
    one event, that call's (``event`` with ``properties`` JSON at ``until``), so every
    condition is answered without a statement (a signup costs the inserts only)."""

    def __init__(self, subject: Subject, until: int, scoring: Scoring | None, event: str,
                 properties: str) -> None:
        super().__init__(None, subject, until, scoring)  # type: ignore[arg-type]
        self.event, self.properties = event, properties

    def _one(self, event: str, since: int | None) -> bool:
        return event == self.event and (since is None or self.until >= since)

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """The one event, folded like the stored ones (the window always holds it)."""
        if condition.event != self.event:
            return 0.0 if condition.sum is not None else 0
        matches = condition.matches_properties if condition.where else None
        properties = {} if self.properties == "{}" else json.loads(self.properties)
        return fold([(properties, 1)], condition, limit, matches)

    def event_rows(self, event: str, since: int | None, limit: int | None
                   ) -> Iterator[tuple[int, str]]:
        """The one event, if it is of ``event`` and in range."""
        one = self._one(event, since) and limit != 0
        return iter([(self.until, self.properties)] if one else [])

    def weighted_counts(self, lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """1.0 (an event of age 0 weighs 1 whatever the half-life) per line it counts for."""
        return [1.0 if self._one(event, since) and limit != 0 else 0.0
                for event, since, _, limit in lines]
def distinct_key(value: Any) -> str:
    """How ``distinct`` tells values apart: as text, as PostHog's and Mixpanel's distinct
    counts of a property do, so ``1``, ``1.0`` and ``"1"`` are one value (as are ``true``
    and ``"true"``); a list or an object counts as its JSON text (keys sorted)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def fold(
    rows: Iterable[tuple[dict[str, Any], int]],
    condition: EventCondition,
    limit: int | None,
    matches: Callable[[dict[str, Any]], bool] | None,
) -> float:
    """Count, distinct-count or sum the properties of a condition's events (oldest first)
    that pass ``matches``, stopping once ``limit`` is reached: the one definition the live
    store and a backtest's replay share. Each row is ``(properties, n)``: the properties of
    ``n`` events (1 for an event, more for a retention rollup)."""
    count = 0
    total = 0.0
    seen: set[str] = set()
    for props, n in rows:
        if matches is not None and not matches(props):
            continue
        if condition.distinct is not None:
            if props.get(condition.distinct) is None:
                continue
            seen.add(distinct_key(props[condition.distinct]))
            count = len(seen)
        elif condition.sum is not None:
            value = props.get(condition.sum)
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += value * n
            continue
        else:
            count += n
        if limit is not None and count >= limit:
            break
    return total if condition.sum is not None else count


class EmptyFacts:
    """The facts of a subject first seen: no events, no traits (scores from that alone).
    The rules that hold on it (``exists = false``, ``at_most``, ``not``) are checked when a
    subject is first seen, whatever its first call was."""

    def __init__(self, scoring: Scoring | None) -> None:
        self.scoring = scoring
        self.until = 0

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """No events: 0."""
        return 0

    def trait(self, name: str) -> tuple[bool, Any]:
        """No traits."""
        return False, None

    def event_rows(self, event: str, since: int | None, limit: int | None
                   ) -> Iterator[tuple[int, str]]:
        """No events."""
        return iter(())

    def weighted_counts(self, lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """No events: 0 per line."""
        return [0.0] * len(lines)

    def score(self, kind: str) -> float:
        """The score of a subject with no events and no traits."""
        return compute(self.scoring or Scoring(), self, lines=False).get(kind)
