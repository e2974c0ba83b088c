"""Lead scoring: fit points from traits plus behaviour points from events, optionally decaying.

    [scoring]
    half_life = "30d"              # behaviour points halve every 30 days; absent = no decay

    [[scoring.behavior]]
    event = "report_generated"
    points = 5
    max = 25                       # cap for this line (on its size, for negative points)

    [[scoring.fit]]
    trait = "company_size"
    gte = 50
    points = 20

A score is computed as of a moment (the evaluated event's timestamp), so a replay of the same
events gives the same scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, Protocol

import attrs

from .conditions import (
    OPERATORS,
    Check,
    TraitCondition,
    _is_number,
    _refuse_unknown,
    _where,
    check_tables,
    describe_where,
    format_duration,
    parse_duration,
    trait,
    where_matches,
)
from .errors import RuleError
from .limits import MAX_BOUND, shown


def _points(value: Any, key: str = "points") -> float:
    if not _is_number(value) or not -MAX_BOUND <= value <= MAX_BOUND:
        raise RuleError(f"must be a finite number from -2**53 to 2**53, negative allowed "
                        f"(got {shown(value)})", key=key)
    return value


@attrs.frozen
class BehaviorLine:
    """Points for each matching event (``where``, ``within``), capped at ``max``."""

    event: str
    points: float
    max: float | None = None
    within: timedelta | None = None
    where: tuple[tuple[str, Check], ...] = ()

    def label(self) -> str:
        """``"report_generated: 5 each (max 25)"``."""
        text = f"{self.event}: {self.points:g} each{describe_where(self.where)}"
        if self.within:
            text += f" in {format_duration(self.within)}"
        return text + (f" (max {self.max:g})" if self.max is not None else "")

    def matches_properties(self, properties: Mapping[str, Any]) -> bool:
        """Whether an event's properties pass ``where``."""
        return where_matches(self.where, properties)


@attrs.frozen
class FitLine:
    """Points while a trait condition holds."""

    condition: TraitCondition
    points: float

    def label(self) -> str:
        """``"company_size gte 50"``."""
        return f"{self.condition.trait} {self.condition.check.describe()}"


@attrs.frozen
class Scoring:
    """The scoring model of a rule set."""

    behavior: tuple[BehaviorLine, ...] = ()
    fit: tuple[FitLine, ...] = ()
    half_life: timedelta | None = None

    @property
    def events(self) -> frozenset[str]:
        """Events that change the behaviour score."""
        return frozenset(line.event for line in self.behavior)

    @property
    def traits(self) -> frozenset[str]:
        """Traits that change the fit score."""
        return frozenset(line.condition.trait for line in self.fit)


@attrs.frozen
class ScoreLine:
    """One line's points in a :class:`Score`."""

    kind: str
    label: str
    points: float


@attrs.frozen
class Score:
    """Fit + behaviour = total, and each line's points (for explain)."""

    fit: float
    behavior: float
    total: float
    lines: tuple[ScoreLine, ...]

    def get(self, kind: str) -> float:
        """``fit``, ``behavior`` or ``total`` by name."""
        return {"fit": self.fit, "behavior": self.behavior, "total": self.total}[kind]


class ScoreFacts(Protocol):
    """What computing a score needs to know about a subject as of a moment."""

    until: int

    def trait(self, name: str) -> tuple[bool, Any]:
        """``(present, value)`` of one trait."""

    def event_rows(self, event: str, since: int | None, limit: int | None
                   ) -> Iterator[tuple[int, str]]:
        """``(ts, properties JSON)`` of the subject's events, newest first, up to ``until``."""

    def weighted_counts(self, lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """Per ``(event, since, half_life, limit)``: the decayed count of matching events."""


def compute(scoring: Scoring, facts: ScoreFacts, *, lines: bool = True) -> Score:
    """The subject's score as of ``facts.until`` (``lines=False``: totals only, as the hot
    path needs).

    Lines without ``where`` are counted in one SQL statement (a line with ``max`` and no
    decay reads only as many events as reach its cap); lines with ``where`` read their
    events' properties newest first and stop at the cap.
    """
    half_life = scoring.half_life // _MICRO if scoring.half_life else None
    queries = [
        (line.event, _since(line, facts.until), half_life,
         math.ceil(line.max / abs(line.points))
         if line.max is not None and half_life is None and line.points else None)
        for line in scoring.behavior if not line.where
    ]
    counts = iter(facts.weighted_counts(queries) if queries else ())
    behavior = [
        _capped(line, line.points * next(counts)) if not line.where
        else _filtered_points(line, facts, half_life)
        for line in scoring.behavior
    ]
    fit = []
    for line in scoring.fit:
        present, value = facts.trait(line.condition.trait)
        fit.append(line.points if line.condition.check.matches(value, present) else 0)
    behavior_total = round(sum(behavior), 6)
    fit_total = sum(fit)
    detail: tuple[ScoreLine, ...] = ()
    if lines:
        detail = tuple(
            [ScoreLine("behavior", line.label(), round(points, 6))
             for line, points in zip(scoring.behavior, behavior, strict=True)]
            + [ScoreLine("fit", line.label(), points)
               for line, points in zip(scoring.fit, fit, strict=True)]
        )
    return Score(fit_total, behavior_total, round(fit_total + behavior_total, 6), detail)


_MICRO = timedelta(microseconds=1)


def _since(line: BehaviorLine, until: int) -> int | None:
    return None if line.within is None else until - line.within // timedelta(microseconds=1)


def _capped(line: BehaviorLine, total: float) -> float:
    if line.max is None or abs(total) < line.max:
        return total
    return line.max if total > 0 else -line.max


def _filtered_points(line: BehaviorLine, facts: ScoreFacts, half_life: int | None) -> float:
    total = 0.0
    for ts, text in facts.event_rows(line.event, _since(line, facts.until), None):
        if not line.matches_properties(json.loads(text)):
            continue
        weight = 1.0 if half_life is None else 0.5 ** ((facts.until - ts) / half_life)
        total += line.points * weight
        if line.max is not None and abs(total) >= line.max:
            break
    return _capped(line, total)


# --- loading --------------------------------------------------------------------------------

_BEHAVIOR_KEYS = ("event", "points", "max", "within", "where")


def scoring_from_dict(data: Any) -> Scoring:
    """Build :class:`Scoring` from the ``[scoring]`` table; errors name ``scoring.KEY``."""
    if not isinstance(data, Mapping):
        raise RuleError(f"must be a table (got {shown(data)})", key="scoring")
    try:
        check_tables(data)
        _refuse_unknown(data, ("half_life", "behavior", "fit"))
        half_life = (parse_duration(data["half_life"], key="half_life")
                     if "half_life" in data else None)
        behavior = tuple(_each(data.get("behavior", []), "behavior", _behavior_line))
        fit = tuple(_each(data.get("fit", []), "fit", _fit_line))
    except RuleError as exc:
        raise exc.within(key="scoring") from None
    return Scoring(behavior, fit, half_life)


def _each(items: Any, key: str, build: Any) -> Iterator[Any]:
    if not isinstance(items, list):
        raise RuleError(f"must be an array of tables ([[scoring.{key}]])", key=key)
    for index, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise RuleError(f"must be a table (got {item!r})")
            yield build(item)
        except RuleError as exc:
            raise exc.within(key=f"{key}[{index}]") from None


def _behavior_line(data: Mapping[str, Any]) -> BehaviorLine:
    _refuse_unknown(data, _BEHAVIOR_KEYS)
    name = data.get("event")
    if not isinstance(name, str) or not name:
        raise RuleError(f"must be a non-empty string (got {name!r})", key="event")
    if "points" not in data:
        raise RuleError("is required", key="points")
    cap = data.get("max")
    if cap is not None and (not _is_number(cap) or not 0 < cap <= MAX_BOUND):
        raise RuleError(f"must be a number > 0 and <= 2**53 (got {shown(cap)})", key="max")
    within = parse_duration(data["within"]) if "within" in data else None
    return BehaviorLine(name, _points(data["points"]), cap, within, _where(data.get("where")))


def _fit_line(data: Mapping[str, Any]) -> FitLine:
    _refuse_unknown(data, ("trait", "points", *OPERATORS))
    if "points" not in data:
        raise RuleError("is required", key="points")
    name = data.get("trait")
    if not isinstance(name, str) or not name:
        raise RuleError(f"must be a non-empty string (got {name!r})", key="trait")
    operators = {k: v for k, v in data.items() if k not in ("trait", "points")}
    return FitLine(trait(name, **operators), _points(data["points"]))
