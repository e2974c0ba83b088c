"""Event conditions of a bulk segment answered from memory: one read per subject and event
name instead of one count query per event and condition.

:func:`pqlsdk.bulk.apply_tracks` inserts a segment of events (none of them moves a user,
no two of one subject at one microsecond), then evaluates them in time order. Nothing is
written to ``events`` while the segment is evaluated, so the events a live check at the
moment ``t`` would count are the stored ones at or before ``t``, which are known once the
segment is inserted. :class:`SegmentEvents` reads, for a subject and an event name, the
stored events from the earliest moment any condition on that name can look back to (the
subject's first pending event minus the longest ``within`` on that name) up to its last
pending event, once, and, when a condition without a window counts that name, how many
stored events come before that range (one count). :class:`BatchFacts` then answers each
event condition by bisecting the timestamps:

* a plain count in a window ``[t - within, t]``: the timestamps in that range;
* a plain count without a window: the count before the range plus the timestamps up to
  ``t``;
* a windowed ``where``, ``distinct`` or ``sum``: :func:`pqlsdk.facts.fold` over the
  properties of the events in the window (the same definition the SQL path uses).

What it cannot answer exactly falls back to the SQL facts (:class:`SubjectFacts`): a
``where``, ``distinct`` or ``sum`` without a window (it would need the whole history in
memory), a subject whose round began at a manual move (``since``; a re-armed rule's check
builds its own SQL facts), scores (``weighted_counts``, ``event_rows``), and every
condition when the store holds retention rollups (a rollup straddling a window's start
counts whole, which a list of timestamps cannot tell).
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import Any, NamedTuple

from .facts import Subject, SubjectFacts, fold, is_plain, window_start
from .rules import EventCondition, Rule, walk
from .scoring import Scoring
from .store import Transaction
from .timestamps import MICROSECOND


class Reach(NamedTuple):
    """How far back the rule set's event conditions on one event name look: the longest
    ``within`` (microseconds, 0 when none has one), and whether a plain count without a
    window needs the count of every earlier event."""

    window: int
    unbounded: bool


def reaches(rules: Iterable[Rule]) -> dict[str, Reach]:
    """Per event name, how far back the conditions :class:`BatchFacts` answers look."""
    out: dict[str, Reach] = {}
    for rule in rules:
        for part in walk(rule.condition):
            if not isinstance(part, EventCondition):
                continue
            window, unbounded = out.get(part.event, Reach(0, False))
            if part.within is not None:
                window = max(window, part.within // MICROSECOND)
            elif not (part.where or part.distinct or part.sum):
                unbounded = True
            out[part.event] = Reach(window, unbounded)
    return out


#: The most stored events of one subject and name read into memory for a segment; a busy
#: subject past it (a rule that stays pending over a long window) is checked by SQL, whose
#: counts stop at their bound.
READ_LIMIT = 10_000


class Stored(NamedTuple):
    """A subject's stored events of one name from ``lo`` on, ascending, and how many came
    before ``lo`` (None when no condition needs it); ``complete`` is False when there were
    more than :data:`READ_LIMIT` (none are kept: SQL answers)."""

    lo: int
    times: list[int]
    properties: list[str]
    before: int | None
    complete: bool = True


class SegmentEvents:
    """The stored events of a segment's subjects, read once per subject and event name when
    a condition first asks; ``spans`` holds each subject's first and last pending moment,
    ``tenants`` the tenant its events are in (a user's stays one through a segment)."""

    def __init__(self, tx: Transaction, reach: dict[str, Reach],
                 spans: dict[tuple[str, str], tuple[int, int]],
                 tenants: dict[tuple[str, str], str]) -> None:
        self.tx, self.reach, self.spans, self.tenants = tx, reach, spans, tenants
        self._read: dict[tuple[str, str, str], Stored] = {}
        self._parsed: dict[str, dict[str, Any]] = {}

    def stored(self, subject: Subject, event: str, span: tuple[int, int]) -> Stored:
        """The subject's stored ``event`` events from its first pending moment ``span[0]``
        minus the longest window on ``event`` to its last ``span[1]`` (and the count of
        those before, when a condition needs it), read on first use."""
        key = (subject.type, subject.id, event)
        found = self._read.get(key)
        if found is not None:
            return found
        reach = self.reach.get(event, Reach(0, False))
        lo = span[0] - reach.window
        rows = self.tx.tenant_event_rows(self.tenants[subject.type, subject.id], subject.type,
                                         subject.id, event, span[1], lo, READ_LIMIT + 1)
        if len(rows) > READ_LIMIT:
            found = self._read[key] = Stored(lo, [], [], None, complete=False)
            return found
        rows.reverse()  # newest first -> ascending
        before = (self.tx.count_events(subject.type, subject.id, event, lo - 1, None, None)
                  if reach.unbounded else None)
        found = self._read[key] = Stored(lo, [ts for ts, _ in rows],
                                         [text for _, text in rows], before)
        return found

    def parsed(self, text: str) -> dict[str, Any]:
        """A properties JSON text, parsed once per segment (the result is not changed)."""
        value = self._parsed.get(text)
        if value is None:
            value = self._parsed[text] = json.loads(text)
        return value


class BatchFacts(SubjectFacts):
    """:class:`SubjectFacts` whose event conditions are answered from a segment's
    :class:`SegmentEvents` when that is exact (see the module docstring), else by SQL."""

    def __init__(self, tx: Transaction, subject: Subject, until: int,
                 scoring: Scoring | None, events: SegmentEvents) -> None:
        super().__init__(tx, subject, until, scoring)
        self.events = events

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """The condition's value as of ``until``, from memory when exact."""
        plain = is_plain(condition)
        span = self.events.spans.get((self.subject.type, self.subject.id))
        if (self.subject.since is not None or (condition.within is None and not plain)
                or span is None or not span[0] <= self.until <= span[1]):
            return super().measure(condition, limit)
        stored = self.events.stored(self.subject, condition.event, span)
        if not stored.complete:
            return super().measure(condition, limit)
        end = bisect_right(stored.times, self.until)
        if condition.within is None:
            if stored.before is None:  # a condition the rule set did not plan for
                return super().measure(condition, limit)
            count = stored.before + end
            return count if limit is None else min(count, limit)
        first = window_start(condition, self.until)
        assert first is not None  # a condition without a window was answered above
        if first < stored.lo:  # a condition the rule set did not plan for
            return super().measure(condition, limit)
        start = bisect_left(stored.times, first)
        if plain:
            count = end - start
            return count if limit is None else min(count, limit)
        matches = condition.matches_properties if condition.where else None
        parsed = self.events.parsed
        return fold(((parsed(text), 1) for text in stored.properties[start:end]), condition,
                    limit, matches)
