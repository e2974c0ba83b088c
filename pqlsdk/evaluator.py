"""Decide whether a condition holds for one subject at one moment: pure logic, no SQL.

The facts (event counts, traits) come from a :class:`Facts` object, which the store
implements for a subject as of a moment; tests can implement it with plain lists.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from .rules import (
    AllOf,
    AnyOf,
    Condition,
    EventCondition,
    Not,
    ScoreCondition,
    TraitCondition,
)


class Facts(Protocol):
    """What the evaluator may ask about one subject as of one moment."""

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """Count (or distinct-count, or sum) the matching events; may stop at ``limit``."""

    def trait(self, name: str) -> tuple[bool, Any]:
        """``(present, value)`` of one trait."""

    def score(self, kind: str) -> float:
        """The subject's ``fit``, ``behavior`` or ``total`` score."""


@attrs.frozen
class Measurement:
    """One condition's measured value against its bound; groups carry their ``parts``.

    ``value`` of a capped count is the bound it reached ("5 of at least 5"): the hot path
    stops counting once a bound is decided.
    """

    label: str
    value: Any
    bound: str
    met: bool
    parts: tuple[Measurement, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (how evidence is stored)."""
        out: dict[str, Any] = {"label": self.label, "value": self.value, "bound": self.bound,
                               "met": self.met}
        if self.parts:
            out["parts"] = [p.to_dict() for p in self.parts]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The inverse of :meth:`to_dict`."""
        parts = tuple(cls.from_dict(p) for p in data.get("parts", ()))
        return cls(data["label"], data["value"], data["bound"], data["met"], parts)

    def lines(self, indent: str = "  ") -> list[str]:
        """Human-readable lines, one per condition: ``"✗ report_generated in 14d: 3 of at
        least 5"``."""
        mark = "✓" if self.met else "✗"
        if not self.parts:
            joint = "of" if not self.label.startswith(("trait ", "score ")) else "— wanted"
            return [f"{indent}{mark} {self.label}: {_show(self.value)} {joint} {self.bound}"]
        head = [f"{indent}{mark} {self.label}:"]
        return head + [line for p in self.parts for line in p.lines(indent + "  ")]


def _show(value: Any) -> str:
    if value is None:
        return "(missing)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def holds(condition: Condition, facts: Facts) -> bool:
    """Whether ``condition`` holds; checks cheap parts first and stops at the first decisive
    one (the hot path)."""
    if isinstance(condition, EventCondition):
        return condition.met_by(facts.measure(condition, condition.limit))
    if isinstance(condition, TraitCondition):
        present, value = facts.trait(condition.trait)
        return condition.check.matches(value, present)
    if isinstance(condition, ScoreCondition):
        return condition.check.matches(facts.score(condition.score))
    if isinstance(condition, AllOf):  # loops, not all()/any() of a generator: the hot path
        for part in condition.by_cost:  # noqa: SIM110
            if not holds(part, facts):
                return False
        return True
    if isinstance(condition, AnyOf):
        for part in condition.by_cost:  # noqa: SIM110
            if holds(part, facts):
                return True
        return False
    return not holds(condition.condition, facts)


#: A condition compiled by :func:`compile_condition`: whether it holds on these facts.
Check = Callable[[Facts], bool]


def compile_condition(condition: Condition) -> Check:
    """:func:`holds` of one condition as a closure built once (a rule's, when it is made):
    the same decisions in the same order, without walking the condition's type on every
    call, its count's limit and bounds computed ahead (the hot path of every call)."""
    if isinstance(condition, EventCondition):
        limit, at_least, at_most = condition.limit, condition.at_least, condition.at_most
        if at_most is None:
            return lambda facts: facts.measure(condition, limit) >= at_least
        return lambda facts: at_least <= facts.measure(condition, limit) <= at_most
    if isinstance(condition, TraitCondition):
        name, matches = condition.trait, condition.check.matches

        def trait(facts: Facts) -> bool:
            present, value = facts.trait(name)
            return matches(value, present)
        return trait
    if isinstance(condition, ScoreCondition):
        kind, check = condition.score, condition.check.matches
        return lambda facts: check(facts.score(kind))
    if isinstance(condition, Not):
        inner = compile_condition(condition.condition)
        return lambda facts: not inner(facts)
    parts = tuple(compile_condition(part) for part in condition.by_cost)
    if isinstance(condition, AllOf):
        def all_of(facts: Facts) -> bool:
            for part in parts:  # noqa: SIM110 - a loop, not all() of a generator
                if not part(facts):
                    return False
            return True
        return all_of

    def any_of(facts: Facts) -> bool:
        for part in parts:  # noqa: SIM110
            if part(facts):
                return True
        return False
    return any_of


def measure(condition: Condition, facts: Facts, *, exact: bool = True) -> Measurement:
    """Every part's measured value (exact counts unless ``exact=False``), for evidence and
    explain."""
    if isinstance(condition, EventCondition):
        value = facts.measure(condition, None if exact else condition.limit)
        return Measurement(condition.label(), value, condition.bound(), condition.met_by(value))
    if isinstance(condition, TraitCondition):
        present, trait = facts.trait(condition.trait)
        met = condition.check.matches(trait, present)
        if isinstance(trait, list | dict):  # the memo's own (facts.parsed_traits): a copy
            trait = copy.deepcopy(trait)
        return Measurement(condition.label(), trait if present else None, condition.bound(),
                           met)
    if isinstance(condition, ScoreCondition):
        value = facts.score(condition.score)
        return Measurement(condition.label(), value, condition.bound(),
                           condition.check.matches(value))
    if isinstance(condition, Not):
        inner = measure(condition.condition, facts, exact=exact)
        return Measurement("not", None, "", not inner.met, (inner,))
    parts = tuple(measure(c, facts, exact=exact) for c in condition.conditions)
    if isinstance(condition, AllOf):
        return Measurement("all of", None, "", all(p.met for p in parts), parts)
    return Measurement("any of", None, "", any(p.met for p in parts), parts)
