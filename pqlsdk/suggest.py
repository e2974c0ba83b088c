"""Suggest rules from the stored events: candidates of the rules language's forms, ranked.

Three forms, each measured exactly as :mod:`pqlsdk.backtest` measures a rule (the same
outcome, horizon, period, and the same verdict per qualification, see
:func:`pqlsdk.backtest.classify`), so ``backtest([s.rule])`` gives a suggestion's figures:

* **at least N of an event within a window** (windows :data:`WINDOWS`, and all time): for
  each subject the moment its count in the window first reached each N is found in one
  pass over its events; every N at which the set of qualified subjects changes is a
  candidate (the smallest N of each set: the earliest warning);
* **an event with a property value** (``where = { provider = "slack" }``), for properties
  with at most :data:`MAX_VALUES` values;
* **N distinct values of a property** (``distinct = "invitee_email"``), every N as above.

Candidates qualifying fewer than ``min_support`` subjects are dropped; the rest are
ranked by lift, then by how many converters they caught.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs

from .backtest import Frame, conversions, population, wilson
from .rules import Rule, all_of, event, format_duration, rule_to_toml
from .store import Transaction
from .timestamps import MICROSECOND

#: The windows searched for "at least N within W" (None: all time).
WINDOWS: tuple[timedelta | None, ...] = (None, timedelta(days=1), timedelta(days=7),
                                         timedelta(days=14), timedelta(days=30))
#: A property with at most this many values is tried value by value.
MAX_VALUES = 20


@attrs.frozen
class Suggestion:
    """A candidate rule and how it would have done: ``rule`` (a :class:`~pqlsdk.Rule`),
    ``toml`` (ready to paste into a rules file), ``qualified``, ``converted``,
    ``precision`` (with its 95% Wilson ``precision_low``/``precision_high``), ``recall``
    and ``lift``, as :meth:`pqlsdk.Client.backtest` defines them."""

    rule: Rule
    toml: str
    qualified: int
    converted: int
    precision: float
    recall: float | None
    lift: float | None
    precision_low: float = 0.0
    precision_high: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the rule as its name and TOML)."""
        out = attrs.asdict(self, recurse=False)
        out["rule"] = self.rule.name
        return out


class _Counts:
    """Per threshold N: qualified subjects (outcome known) and converted ones, kept as
    difference maps (a subject adds 1 over a range of N at once)."""

    __slots__ = ("converted", "qualified")

    def __init__(self) -> None:
        self.qualified: dict[int, int] = {}
        self.converted: dict[int, int] = {}

    @staticmethod
    def _span(target: dict[int, int], lo: int, hi: int) -> None:
        """Add 1 for N in ``lo + 1 .. hi`` (indexes ``lo .. hi - 1`` of the first-times)."""
        if lo < hi:
            target[lo + 1] = target.get(lo + 1, 0) + 1
            target[hi + 1] = target.get(hi + 1, 0) - 1

    def at(self, n: int) -> tuple[int, int]:
        """``(qualified, converted)`` at threshold ``n``."""
        return (sum(v for k, v in self.qualified.items() if k <= n),
                sum(v for k, v in self.converted.items() if k <= n))


def _thresholds(times: Sequence[int], window: int | None) -> Sequence[int]:
    """``out[N-1]``: when the count of ``times`` (sorted) within ``window`` ending at an
    event (both ends included) first reached N."""
    if window is None:
        return times
    out: list[int] = []
    lo = 0
    best = 0
    for j, t in enumerate(times):
        start = t - window
        while times[lo] < start:
            lo += 1
        if j - lo >= best:
            out.append(t)
            best += 1
    return out


def _tally(counts: _Counts, maxima: dict[int, int], firsts: Sequence[int], c: int | None,
           frame: Frame) -> None:
    """Add one subject whose count first reached N at ``firsts[N-1]`` (ascending) and who
    converted at ``c``: the verdict of :func:`pqlsdk.backtest.classify` for every N, found
    by bisection (the verdicts fall in contiguous ranges of N)."""
    n = len(firsts)
    if not n:
        return
    maxima[n] = maxima.get(n, 0) + 1
    lo = 0 if frame.since is None else bisect_left(firsts, frame.since)
    if c is None:  # failed once the horizon is over, pending before
        counts._span(counts.qualified, lo, bisect_right(firsts, frame.until - frame.horizon))
        return
    late = bisect_left(firsts, c)  # from here on the outcome came first
    early = bisect_left(firsts, c - frame.horizon)  # from here on it came within the horizon
    counts._span(counts.qualified, lo, late)
    counts._span(counts.converted, max(lo, early), late)


def _candidates(maxima: dict[int, int]) -> list[int]:
    """The smallest N of each distinct set ``{s: max_s >= N}``."""
    out, previous = [], 0
    for value in sorted(maxima):
        out.append(previous + 1)
        previous = value
    return out


def suggest(tx: Transaction, frame: Frame, subject_type: str, *, min_support: int = 20,
            top: int = 10) -> list[Suggestion]:
    """The ``top`` candidate rules by lift (see the module's docstring)."""
    converted_at = conversions(tx, subject_type, frame.outcome, frame.until)
    subjects = population(tx, subject_type, frame, converted_at)
    converters = sum(1 for s in subjects if s in converted_at)
    base_rate = converters / len(subjects) if subjects else None
    windows = [None if w is None else w // MICROSECOND for w in WINDOWS]
    skip = frame.outcome.event
    # per event name, per window: the counts and how many subjects reached each maximum
    slots: dict[str, list[tuple[int | None, _Counts, dict[int, int]]]] = {}
    singles: set[str] = set()  # names some subject did exactly once
    current: str | None = None
    times: dict[str, list[int]] = defaultdict(list)

    def close(subject_id: str) -> None:
        if subject_id in subjects:
            c = converted_at.get(subject_id)
            for name, stamps in times.items():
                mine = slots.get(name)
                if mine is None:
                    mine = slots[name] = [(w, _Counts(), {}) for w in windows]
                if len(stamps) == 1:  # the same in every window: "at least 1" is all-time
                    singles.add(name)
                    _tally(mine[0][1], mine[0][2], stamps, c, frame)
                    continue
                for window, tally, reached in mine:
                    _tally(tally, reached, _thresholds(stamps, window), c, frame)
        times.clear()

    for subject_id, name, ts, _ in tx.replay_events(subject_type, None, [], frame.until):
        if subject_id != current:
            if current is not None:
                close(current)
            current = subject_id
        if name != skip:
            times[name].append(ts)
    if current is not None:
        close(current)

    found: list[Suggestion] = []

    def offer(rule: Rule, qualified: int, converted: int) -> None:
        if qualified < max(1, min_support):
            return
        precision = converted / qualified
        low, high = wilson(converted, qualified)
        found.append(Suggestion(
            rule, rule_to_toml(rule), qualified, converted, precision,
            converted / converters if converters else None,
            precision / base_rate if base_rate else None, low, high))

    for name, mine in slots.items():
        for window, tally, reached in mine:
            if window is not None and name in singles:
                reached[1] = reached.get(1, 0) + 1  # "1" is among the maxima there too
            for n in _candidates(reached):
                if window is not None and n == 1:
                    continue  # at least 1 within any window: the all-time rule
                within = None if window is None else window * MICROSECOND
                span = "" if within is None else f" within {format_duration(within)}"
                rule = Rule(_slug(f"{name}_{n}{span.replace(' within ', '_in_')}"),
                            all_of(event(name, at_least=n, within=within)),
                            description=f"suggested: at least {n} {name}{span}")
                offer(rule, *tally.at(n))
    for rule, tally, n in _property_candidates(tx, frame, subject_type, subjects,
                                               converted_at, skip):
        offer(rule, *tally.at(n))
    found.sort(key=lambda s: (-(s.lift or 0.0), -s.converted, s.rule.name))
    return found[:top]


def _property_candidates(tx: Transaction, frame: Frame, subject_type: str,
                         subjects: set[str], converted_at: dict[str, int],
                         skip: str | None) -> list[tuple[Rule, _Counts, int]]:
    # (event, property) -> value -> subject -> first time
    firsts: dict[tuple[str, str], dict[Any, dict[str, int]]] = defaultdict(
        lambda: defaultdict(dict))
    for name, prop, value, subject_id, ts in tx.property_firsts(subject_type, frame.until):
        if name != skip and subject_id in subjects:
            firsts[(name, prop)][value][subject_id] = ts
    out: list[tuple[Rule, _Counts, int]] = []
    for (name, prop), values in firsts.items():
        if len(values) <= MAX_VALUES:
            for value, who in values.items():
                counts, maxima = _Counts(), dict[int, int]()
                for subject_id, t in who.items():
                    _tally(counts, maxima, (t,), converted_at.get(subject_id), frame)
                rule = Rule(_slug(f"{name}_{prop}_{value}"),
                            all_of(event(name, where={prop: value})),
                            description=f"suggested: {name} with {prop} = {value!r}")
                out.append((rule, counts, 1))
        per_subject: dict[str, list[int]] = defaultdict(list)
        for who in values.values():
            for subject_id, t in who.items():
                per_subject[subject_id].append(t)
        if max((len(v) for v in per_subject.values()), default=0) < 2:
            continue  # one value per subject: nothing to count distinct
        counts, maxima = _Counts(), dict[int, int]()
        for subject_id, stamps in per_subject.items():
            _tally(counts, maxima, sorted(stamps), converted_at.get(subject_id), frame)
        for n in _candidates(maxima):
            if n < 2:
                continue  # "1 distinct value" is "did the event with the property"
            rule = Rule(_slug(f"{name}_{n}_distinct_{prop}"),
                        all_of(event(name, at_least=n, distinct=prop)),
                        description=f"suggested: {n} distinct {prop} of {name}")
            out.append((rule, counts, n))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")[:60] or "suggested"
