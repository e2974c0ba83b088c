"""Backtest: which rules would have found the subjects that converted, replayed on history.

Read only. The stored events are read once, in ``(subject, ts)`` order, and each subject's
history is replayed in memory through the live evaluator (:func:`pqlsdk.evaluator.holds`):
a rule is checked at each of the subject's events that can change it, as of that event,
exactly as ``track()`` checks it, and its first success is when it would have qualified
the subject. Nothing is written; the live tables are not touched.

Against an outcome (a stage reached, or an event done) within a horizon:

* a qualification **converted** if the outcome came after it, within the horizon;
* it is **late** if the outcome came first (at or before it): not a prediction at all (a
  rule on the outcome's own event is always late; :attr:`RuleBacktest.leaky` flags it);
* it is **pending** if the horizon has not passed at ``until`` and the outcome has not come;
* otherwise it did **not convert**.

``precision = converted / qualified`` (late and pending left out), with its 95% Wilson
interval; ``recall = converted / converters`` (every subject whose outcome fell in the
period); ``base_rate = converters / subjects`` (every subject with events in the period);
``lift = precision / base_rate``.

Only the events before a qualification count toward it, so no leakage comes from events
after the outcome. Replay checks rules at events: a rule that only time can complete
(``at_most``, ``not``), which live traffic finds at an ``evaluate()``, is found at the
subject's next event that the rule reads. Traits are today's (their history is not
stored): a rule on a trait that changes at conversion (``plan = "paid"``) can look better
than it was. Lifecycle is not replayed either: each subject's first qualification
per rule is found whatever its stage (a lead rejected by hand and its new round are not
modelled, and a ``disqualified`` subject is still measured). A rule that re-arms
(``rearm``/``every``) fires again in the replay as it does live, and each firing is its own
qualification (classified on its own; ``recall`` and ``missed`` count converters).
"""

from __future__ import annotations

import json
import math
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import attrs

from .errors import RuleError, ValidationError
from .evaluator import holds
from .facts import EmptyFacts, fold
from .rules import (
    AllOf,
    Condition,
    EventCondition,
    Rule,
    RuleSet,
    TraitCondition,
    format_duration,
    parse_duration,
    walk,
)
from .scoring import Score, Scoring, compute
from .stages import STAGES, rank
from .store import Transaction
from .timestamps import MICROSECOND, from_micros

#: The z of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default).

    >>> wilson(8, 10)
    (0.4901..., 0.9433...)
    """
    if trials <= 0:
        raise ValueError("trials must be positive")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


@attrs.frozen
class Outcome:
    """What counts as converting: reaching a stage (or any later one), or doing an event."""

    stage: str | None = None
    event: str | None = None

    @classmethod
    def of(cls, value: str | dict[str, str] | Outcome) -> Outcome:
        """``"customer"``, ``{"event": "subscription_started"}`` (or ``"event:NAME"``)."""
        if isinstance(value, Outcome):
            return value
        if isinstance(value, str) and value.startswith("event:") and len(value) > 6:
            return cls(event=value[6:])
        if isinstance(value, str):
            if value not in STAGES:
                raise ValidationError(
                    f"outcome must be a stage ({', '.join(STAGES)}) or {{'event': NAME}} "
                    f"(got {value!r})")
            return cls(stage=value)
        if isinstance(value, dict) and list(value) == ["event"] and isinstance(
                value["event"], str) and value["event"]:
            return cls(event=value["event"])
        raise ValidationError(
            f"outcome must be a stage name or {{'event': NAME}} (got {value!r})")

    def label(self) -> str:
        """``"customer"`` or ``"event subscription_started"``."""
        return self.stage if self.stage is not None else f"event {self.event}"

    def to_json(self) -> str | dict[str, str]:
        """The form ``backtest(outcome=...)`` takes."""
        return self.stage if self.stage is not None else {"event": str(self.event)}


@attrs.frozen
class RuleBacktest:
    """How one rule (one version of it) did on history.

    ``qualified``: subjects it qualified in the period whose outcome is known (neither
    late nor pending; each firing, for a rule that re-arms); ``converted``: of those, how
    many reached the outcome within the horizon; ``precision`` (None when nothing
    qualified) with ``precision_low`` and ``precision_high`` (95% Wilson); ``recall``:
    converters it qualified in time / all converters;
    ``base_rate``: converters / subjects; ``lift``: precision / base rate;
    ``median_lead_time``: from qualification to conversion, over the converters it
    qualified (timely and late: a late one counts as zero or negative, which is how a
    leaky rule shows); ``missed``: converters it did not qualify before (within the
    horizon of) their conversion; ``pending``: qualified, horizon not over at ``until``;
    ``late``: qualified only at or after their conversion; ``lead_times``: each timely
    converter's lead time (for a histogram).
    """

    rule: str
    version: str
    qualified: int
    converted: int
    precision: float | None
    precision_low: float | None
    precision_high: float | None
    recall: float | None
    base_rate: float | None
    lift: float | None
    median_lead_time: timedelta | None
    missed: int
    shadow: bool = False
    pending: int = 0
    late: int = 0
    lead_times: tuple[timedelta, ...] = attrs.field(default=(), repr=False)

    @property
    def leaky(self) -> bool:
        """It fires at or after the outcome more often than before it: it describes
        converting rather than predicting it (a rule on the outcome's own event)."""
        return self.late > 0 and self.late >= self.converted

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in seconds)."""
        out = attrs.asdict(self, recurse=False)
        out["median_lead_time"] = _seconds(self.median_lead_time)
        out["lead_times"] = [t.total_seconds() for t in self.lead_times]
        out["leaky"] = self.leaky
        return out


@attrs.frozen
class Backtest:
    """The result of :meth:`pqlsdk.Client.backtest`.

    ``rules``: a :class:`RuleBacktest` per rule replayed; ``subjects``: subjects with
    events in the period (not converted before it); ``converters``: of those, how many
    reached the outcome in the period; ``pending``: subjects some rule qualified whose
    horizon was not over at ``until`` (reported apart, not as failures). With
    ``against``: ``baseline`` holds the current rules' results, and ``added`` /
    ``dropped`` who the given rules qualify that the current ones do not (and the
    reverse), as ``(subject_id, converted)`` pairs.
    """

    outcome: str | dict[str, str]
    horizon: timedelta
    subject_type: str
    since: datetime | None
    until: datetime
    subjects: int
    converters: int
    base_rate: float | None
    pending: int
    rules: tuple[RuleBacktest, ...]
    baseline: tuple[RuleBacktest, ...] = ()
    added: tuple[tuple[str, bool], ...] = ()
    dropped: tuple[tuple[str, bool], ...] = ()

    def rule(self, name: str) -> RuleBacktest:
        """The result of the given rule of this name (``KeyError`` if none)."""
        for result in self.rules:
            if result.rule == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "outcome": self.outcome, "horizon": format_duration(self.horizon),
            "subject_type": self.subject_type,
            "since": None if self.since is None else self.since.isoformat(),
            "until": self.until.isoformat(), "subjects": self.subjects,
            "converters": self.converters, "base_rate": self.base_rate,
            "pending": self.pending,
            "rules": [r.to_dict() for r in self.rules],
            "baseline": [r.to_dict() for r in self.baseline],
            "added": [list(p) for p in self.added],
            "dropped": [list(p) for p in self.dropped],
        }


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


class Frame(NamedTuple):
    """What a backtest measures against: the outcome, the horizon and the period (µs)."""

    outcome: Outcome
    horizon: int
    since: int | None
    until: int


# --- replay -----------------------------------------------------------------------------


class _Events:
    """One event name's rows of a subject: timestamps, positions, properties (parsed once)."""

    __slots__ = ("parsed", "positions", "texts", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.positions: list[int] = []
        self.texts: list[str | None] = []
        self.parsed: list[dict[str, Any] | None] = []

    def props(self, lo: int, hi: int) -> Iterator[dict[str, Any]]:
        for k in range(lo, hi):
            value = self.parsed[k]
            if value is None:
                value = self.parsed[k] = json.loads(self.texts[k] or "{}")
            yield value


class ReplayFacts:
    """:class:`~pqlsdk.evaluator.Facts` for one subject, from its events held in memory, as
    of one of its events (``until``, ``position``): the events up to and including that
    one count, as when ``track()`` evaluated it."""

    def __init__(self, traits_json: str, scoring: Scoring | None) -> None:
        self.by_name: dict[str, _Events] = {}
        self.traits_json = traits_json
        self.scoring = scoring
        self.until = 0
        self.position = 0
        #: Events before this moment do not count (a ``rearm`` rule counts only events
        #: after its last firing, as live), or None.
        self.floor: int | None = None
        self._traits: dict[str, Any] | None = None
        self._score: Score | None = None

    def add(self, position: int, event: str, ts: int, properties: str | None) -> None:
        """Append the subject's next event (in time order)."""
        rows = self.by_name.get(event)
        if rows is None:
            rows = self.by_name[event] = _Events()
        rows.times.append(ts)
        rows.positions.append(position)
        rows.texts.append(properties)
        rows.parsed.append(None)

    def at(self, ts: int, position: int) -> None:
        """Evaluate as of the subject's event at ``position`` (time ``ts``)."""
        self.until, self.position = ts, position
        self._score = None

    def count_from(self, floor: int | None) -> None:
        """Count only events at or after ``floor`` from now on (None: all of them)."""
        if floor != self.floor:
            self.floor, self._score = floor, None

    def _span(self, event: str, since: int | None) -> tuple[_Events | None, int, int]:
        rows = self.by_name.get(event)
        if rows is None:
            return None, 0, 0
        if self.floor is not None:
            since = self.floor if since is None else max(since, self.floor)
        hi = bisect_right(rows.positions, self.position)
        lo = 0 if since is None else bisect_left(rows.times, since, 0, hi)
        return rows, lo, hi

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """Count, distinct-count or sum the matching events in the window."""
        since = None if condition.within is None else (
            self.until - condition.within // MICROSECOND)
        rows, lo, hi = self._span(condition.event, since)
        if rows is None or hi <= lo:
            return 0
        if not (condition.where or condition.distinct or condition.sum):
            return hi - lo if limit is None else min(hi - lo, limit)
        matches = condition.matches_properties if condition.where else None
        return fold(((props, 1) for props in rows.props(lo, hi)), condition, limit, matches)

    def trait(self, name: str) -> tuple[bool, Any]:
        """``(present, value)`` of one of today's traits."""
        if self._traits is None:
            self._traits = json.loads(self.traits_json or "{}")
        value = self._traits.get(name)
        return value is not None, value

    def event_rows(self, event: str, since: int | None, limit: int | None
                   ) -> Iterator[tuple[int, str]]:
        """``(ts, properties JSON)`` newest first (for scoring lines with ``where``)."""
        rows, lo, hi = self._span(event, since)
        if rows is None:
            return iter(())
        start = lo if limit is None else max(lo, hi - limit)
        return iter([(rows.times[k], rows.texts[k] or "{}")
                     for k in range(hi - 1, start - 1, -1)])

    def weighted_counts(self, lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """Decayed counts per scoring line (as the store computes them)."""
        out = []
        for event, since, half_life, limit in lines:
            rows, lo, hi = self._span(event, since)
            if rows is None:
                out.append(0.0)
                continue
            start = lo if limit is None else max(lo, hi - limit)
            if half_life is None:
                out.append(float(max(0, hi - start)))
            else:
                out.append(sum(0.5 ** ((self.until - rows.times[k]) / half_life)
                               for k in range(start, hi)))
        return out

    def score(self, kind: str) -> float:
        """The subject's score as of the moment evaluated."""
        if self._score is None:
            self._score = compute(self.scoring or Scoring(), self, lines=False)
        return self._score.get(kind)


def _reads(rule: Rule, scoring: Scoring | None) -> RuleSet:
    return RuleSet((rule,), scoring=scoring)


def _reads_properties(rules: Sequence[Rule], scoring: Scoring | None) -> set[str]:
    names = {c.event for rule in rules for c in walk(rule.condition)
             if isinstance(c, EventCondition) and (c.where or c.distinct or c.sum)}
    if scoring is not None and any(rule.scores & {"behavior", "total"} for rule in rules):
        names |= {line.event for line in scoring.behavior if line.where}
    return names


def replay(tx: Transaction, rules: Sequence[Rule], scoring: Scoring | None,
           subject_type: str, until: int) -> Iterator[tuple[str, list[int | None]]]:
    """For each subject with events up to ``until`` (that a rule reads): when each of
    ``rules`` would first have qualified it (µs, or None); see :func:`firings`."""
    for subject_id, found in firings(tx, rules, scoring, subject_type, until):
        yield subject_id, [times[0] if times else None for times in found]


def firings(tx: Transaction, rules: Sequence[Rule], scoring: Scoring | None,
            subject_type: str, until: int) -> Iterator[tuple[str, list[tuple[int, ...]]]]:
    """For each subject with events up to ``until`` (that a rule reads): when each of
    ``rules`` would have qualified it (µs, oldest first; more than one for a rule that
    re-arms: ``rearm`` counts only the events after the last firing, ``every`` is a
    cooldown, as live), replaying its events in time order. A rule that reads no event
    (traits alone), and one that holds on a subject with no events and no traits (checked
    live when a subject is first seen), are checked at the subject's first event."""
    triggers: dict[str, list[int]] = {}
    eventless = []
    needs_traits = False
    empty = EmptyFacts(scoring)
    for k, rule in enumerate(rules):
        reads = _reads(rule, scoring)
        for name in reads.events_of(rule):
            triggers.setdefault(name, []).append(k)
        eventless += [] if reads.events_of(rule) else [k]
        needs_traits |= bool(reads.traits_of(rule))
    on_first_seen = [k for k, rule in enumerate(rules) if holds(rule.condition, empty)]
    first_seen = tx.first_seen_times(subject_type) if on_first_seen else {}
    if not triggers and not eventless and not on_first_seen:
        return
    never_candidates = [k for k, rule in enumerate(rules) if rule.traits]
    traits = tx.all_traits(subject_type) if needs_traits else {}
    rows = tx.replay_events(subject_type,
                            None if eventless or on_first_seen else sorted(triggers),
                            sorted(_reads_properties(rules, scoring)), until)
    current: str | None = None
    facts = ReplayFacts("{}", scoring)
    found: list[list[int] | None] = []
    position = 0
    for subject_id, event, ts, properties in rows:
        if subject_id != current:
            if current is not None:
                yield current, _found(found)
            current, position = subject_id, 0
            facts = ReplayFacts(traits.get(subject_id, "{}"), scoring)
            found = [[] for _ in rules]
            if needs_traits:  # a rule whose traits fail can never hold: traits stay put
                for k in never_candidates:
                    if _fails_on_traits(rules[k].condition, facts):
                        found[k] = None
            seen = first_seen.get(subject_id)
            if seen is not None and seen < ts:  # as live: checked when first seen (by a
                facts.at(seen, -1)              # call without an event: no events yet)
                _check(rules, on_first_seen, found, facts, seen)
            elif seen == ts:  # first seen by this event: checked with it
                facts.add(position, event, ts, properties)
                facts.at(ts, position)
                _check(rules, on_first_seen, found, facts, ts)
                _check(rules, eventless, found, facts, ts)
                _check(rules, triggers.get(event, ()), found, facts, ts)
                position += 1
                continue
            if eventless:
                facts.add(position, event, ts, properties)
                facts.at(ts, position)
                _check(rules, eventless, found, facts, ts)
                _check(rules, triggers.get(event, ()), found, facts, ts)
                position += 1
                continue
        facts.add(position, event, ts, properties)
        check = triggers.get(event)
        if check:
            facts.at(ts, position)
            _check(rules, check, found, facts, ts)
        position += 1
    if current is not None:
        yield current, _found(found)


def _fails_on_traits(condition: Condition, facts: ReplayFacts) -> bool:
    """Whether a trait that ``condition`` requires (alone, or as a part of ``all``) fails:
    then it fails at every event of the replay, whose traits do not change."""
    if isinstance(condition, TraitCondition):
        return not holds(condition, facts)
    if isinstance(condition, AllOf):
        return any(_fails_on_traits(part, facts) for part in condition.conditions)
    return False


def _check(rules: Sequence[Rule], check: Sequence[int], found: list[list[int] | None],
           facts: ReplayFacts, ts: int) -> None:
    """Check ``rules[k]`` for each ``k`` in ``check`` as of ``ts``: once, or again when it
    re-arms and its last firing is ``rearm``/``every`` behind (as
    :func:`pqlsdk.qualifier.eligible` decides live)."""
    for k in check:
        times = found[k]
        if times is None:  # its traits fail: never
            continue
        rule = rules[k]
        if times:
            gap = rule.rearms
            if gap is None or ts < times[-1] + gap // MICROSECOND:
                continue
            facts.count_from(times[-1] + 1 if rule.rearm is not None else None)
        if holds(rule.condition, facts):
            times.append(ts)
        facts.count_from(None)


def _found(found: list[list[int] | None]) -> list[tuple[int, ...]]:
    return [() if times is None else tuple(times) for times in found]


# --- scoring the replay -----------------------------------------------------------------


def conversions(tx: Transaction, subject_type: str, outcome: Outcome, until: int
                ) -> dict[str, int]:
    """When each subject first converted (µs), up to ``until``."""
    if outcome.stage is not None:
        later = [s for s in STAGES if rank(s) >= rank(outcome.stage)]
        return tx.first_reached(subject_type, later, until)
    return tx.first_event(subject_type, str(outcome.event), until)


#: What became of a qualification at ``q`` (see :func:`classify`).
OUTSIDE, LATE, CONVERTED, PENDING, FAILED = range(5)


def classify(q: int, c: int | None, frame: Frame) -> int:
    """A qualification at ``q`` of a subject that converted at ``c`` (or never): OUTSIDE
    the period, LATE (the outcome came first), CONVERTED within the horizon, PENDING
    (horizon not over at ``until``) or FAILED."""
    if frame.since is not None and q < frame.since:
        return OUTSIDE
    if c is not None and c <= q:
        return LATE
    if c is not None and c - q <= frame.horizon:
        return CONVERTED
    if q + frame.horizon > frame.until:
        return PENDING
    return FAILED


def population(tx: Transaction, subject_type: str, frame: Frame,
               converted_at: dict[str, int]) -> set[str]:
    """The subjects a backtest counts: those with events in the period, unless they had
    converted before it."""
    since = frame.since
    out = set(tx.replay_subjects(subject_type, since, frame.until))
    if since is not None:
        out -= {s for s, c in converted_at.items() if c < since}
    return out


class _Tally:
    """Per rule: counts as the subjects go by."""

    __slots__ = ("converted", "converters", "late", "lead", "leads", "pending", "qualified")

    def __init__(self) -> None:
        self.qualified = self.converted = self.pending = self.late = 0
        #: The converters it qualified in time (a re-arming rule may fire twice for one).
        self.converters: set[str] = set()
        self.lead: list[int] = []
        self.leads: list[int] = []


def score_replay(
    tx: Transaction,
    rules: Sequence[Rule],
    scoring: Scoring | None,
    frame: Frame,
    subject_type: str,
) -> tuple[list[RuleBacktest], int, int, set[str], list[dict[str, int]]]:
    """Replay ``rules`` and score them: ``(results, subjects, converters, pending subject
    ids, per rule the qualification time of each subject it qualified in the period)``."""
    converted_at = conversions(tx, subject_type, frame.outcome, frame.until)
    subjects = population(tx, subject_type, frame, converted_at)
    converters = sum(1 for s in subjects if s in converted_at)
    tallies = [_Tally() for _ in rules]
    qualified_at: list[dict[str, int]] = [{} for _ in rules]
    pending: set[str] = set()
    for subject_id, found in firings(tx, rules, scoring, subject_type, frame.until):
        if subject_id not in subjects:
            continue
        c = converted_at.get(subject_id)
        for k, q in ((k, q) for k, times in enumerate(found) for q in times):
            verdict = classify(q, c, frame)  # each firing is its own qualification
            if verdict == OUTSIDE:
                continue
            qualified_at[k].setdefault(subject_id, q)
            tally = tallies[k]
            lead = 0 if c is None else c - q
            if verdict == LATE:
                tally.late += 1
                tally.leads.append(lead)
            elif verdict == CONVERTED:
                tally.qualified += 1
                tally.converted += 1
                tally.converters.add(subject_id)
                tally.lead.append(lead)
                tally.leads.append(lead)
            elif verdict == PENDING:
                tally.pending += 1
                pending.add(subject_id)
            else:
                tally.qualified += 1
    population_size = len(subjects)
    base_rate = converters / population_size if population_size else None
    results = [_result(rule, tally, converters, base_rate) for rule, tally in
               zip(rules, tallies, strict=True)]
    return results, population_size, converters, pending, qualified_at


def _result(rule: Rule, tally: _Tally, converters: int, base_rate: float | None
            ) -> RuleBacktest:
    precision = low = high = lift = None
    if tally.qualified:
        precision = tally.converted / tally.qualified
        low, high = wilson(tally.converted, tally.qualified)
        if base_rate:
            lift = precision / base_rate
    median = (statistics.median(tally.leads) * MICROSECOND) if tally.leads else None
    return RuleBacktest(
        rule=rule.name, version=rule.version, qualified=tally.qualified,
        converted=tally.converted, precision=precision, precision_low=low,
        precision_high=high,
        recall=len(tally.converters) / converters if converters else None,
        base_rate=base_rate, lift=lift, median_lead_time=median,
        missed=converters - len(tally.converters), shadow=rule.shadow, pending=tally.pending,
        late=tally.late, lead_times=tuple(sorted(t * MICROSECOND for t in tally.lead)),
    )


def backtest(
    tx: Transaction,
    ruleset: RuleSet,
    frame: Frame,
    subject_type: str,
    current: RuleSet | None = None,
) -> Backtest:
    """Replay ``ruleset`` (and ``current``, to compare) over the stored history."""
    mine = [r for r in ruleset.rules if r.subject == subject_type]
    theirs = [] if current is None else [r for r in current.rules
                                          if r.subject == subject_type]
    scoring = ruleset.scoring or (current.scoring if current is not None else None)
    results, subjects, converters, pending, found = score_replay(
        tx, mine + theirs, scoring, frame, subject_type)
    added: tuple[tuple[str, bool], ...] = ()
    dropped: tuple[tuple[str, bool], ...] = ()
    if current is not None:
        converted_at = conversions(tx, subject_type, frame.outcome, frame.until)
        new = _first_live(mine, found[:len(mine)])
        old = _first_live(theirs, found[len(mine):])

        def outcome(subject_id: str, q: int) -> bool:
            c = converted_at.get(subject_id)
            return c is not None and q < c <= q + frame.horizon

        added = tuple((s, outcome(s, new[s])) for s in sorted(new.keys() - old.keys()))
        dropped = tuple((s, outcome(s, old[s])) for s in sorted(old.keys() - new.keys()))
    return Backtest(
        outcome=frame.outcome.to_json(), horizon=frame.horizon * MICROSECOND,
        subject_type=subject_type,
        since=None if frame.since is None else from_micros(frame.since),
        until=from_micros(frame.until), subjects=subjects, converters=converters,
        base_rate=converters / subjects if subjects else None, pending=len(pending),
        rules=tuple(results[:len(mine)]), baseline=tuple(results[len(mine):]),
        added=added, dropped=dropped,
    )


def _first_live(rules: Sequence[Rule], found: Sequence[dict[str, int]]) -> dict[str, int]:
    """Each subject a set's live rules qualify, and when first."""
    out: dict[str, int] = {}
    for rule, times in zip(rules, found, strict=True):
        if rule.shadow:
            continue
        for subject_id, q in times.items():
            if subject_id not in out or q < out[subject_id]:
                out[subject_id] = q
    return out


def frame(outcome: Any, horizon: str | timedelta, since: int | None, until: int) -> Frame:
    """Validate a backtest's outcome and horizon."""
    try:
        span = parse_duration(horizon, key="horizon")
    except RuleError as exc:
        raise ValidationError(f"horizon: {exc.problem}") from None
    return Frame(Outcome.of(outcome), span // MICROSECOND, since, until)
