"""Condition semantics shared by rules and scoring (pure): operators and their checks,
``where`` filters on event properties, durations and windows, trait conditions, and the
checks every rules/scoring table passes before anything is built from it.

:mod:`pqlsdk.rules` (the condition model, rules, rule sets) and :mod:`pqlsdk.scoring` (the
scoring model) both build on this module; neither imports the other's internals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import attrs

from .errors import RuleError
from .limits import (
    MAX_DURATION,
    MAX_ID_LENGTH,
    MAX_RULE_DEPTH,
    MAX_TEXT_LENGTH,
    shown,
    text_problem,
)

COMPARISON_OPERATORS = ("gt", "gte", "lt", "lte")
EQUALITY_OPERATORS = ("equals", "not_equals")
MEMBERSHIP_OPERATORS = ("in", "not_in")
TEXT_OPERATORS = ("contains", "ends_with")
PRESENCE_OPERATORS = ("exists",)
#: Every operator a trait (or a ``where`` property) condition may use.
OPERATORS = (
    EQUALITY_OPERATORS
    + MEMBERSHIP_OPERATORS
    + COMPARISON_OPERATORS
    + TEXT_OPERATORS
    + PRESENCE_OPERATORS
)

_DURATION = re.compile(r"^\s*([0-9]{1,12})\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _allowed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def parse_duration(value: str | timedelta, *, key: str = "within") -> timedelta:
    """Turn ``"14d"`` (units s, m, h, d, w) or a positive ``timedelta`` into a ``timedelta``
    of at most :data:`~pqlsdk.limits.MAX_DURATION` (36500 days).

    >>> parse_duration("2w")
    datetime.timedelta(days=14)
    """
    if isinstance(value, timedelta):
        duration = value
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match or int(match.group(1)) == 0:
            raise RuleError(
                "must be a duration like '30m', '14d' or '2w' (units s, m, h, d, w) "
                f"(got {shown(value)})",
                key=key,
            )
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if seconds > MAX_DURATION.total_seconds():
            duration = MAX_DURATION + timedelta(seconds=1)  # refused just below
        else:
            duration = timedelta(seconds=seconds)
    if duration <= timedelta(0):
        raise RuleError(f"must be a positive duration (got {shown(value)})", key=key)
    if duration > MAX_DURATION:
        raise RuleError(f"must be at most {MAX_DURATION.days}d (got {shown(value)})", key=key)
    return duration


def format_duration(value: timedelta) -> str:
    """The shortest ``"14d"``-style spelling of a duration."""
    seconds = int(value.total_seconds())
    for unit in "dhm":
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_operand(op: str, bound: Any) -> None:
    if op in COMPARISON_OPERATORS and not (_is_number(bound) or isinstance(bound, str)):
        raise RuleError(f"must be a number or a string (got {shown(bound)})", key=op)
    if op in MEMBERSHIP_OPERATORS and not (isinstance(bound, list | tuple) and bound):
        raise RuleError(f"must be a non-empty list of values (got {shown(bound)})", key=op)
    if op == "exists" and not isinstance(bound, bool):
        raise RuleError(f"must be true or false (got {shown(bound)})", key=op)
    if op == "ends_with" and not isinstance(bound, str):
        raise RuleError(f"must be a string (got {shown(bound)})", key=op)
    if op in ("equals", "not_equals", "contains") and isinstance(bound, dict):
        raise RuleError(f"must be a plain value, not a table (got {shown(bound)})", key=op)
    _check_value(op, bound)


def _check_value(key: str, root: Any) -> None:
    """An operand's numbers finite and its text valid (no NUL, no lone surrogate), nested
    lists and tables included (walked without recursion, to a bounded depth)."""
    stack = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_RULE_DEPTH:
            raise RuleError(f"must be nested at most {MAX_RULE_DEPTH} levels deep", key=key)
        if isinstance(value, float) and not math.isfinite(value):
            raise RuleError(f"must be a finite number (got {value!r})", key=key)
        if isinstance(value, int) and value.bit_length() > 1024:  # more than a float holds
            raise RuleError(f"must be a number below 2**1024 in size (got {shown(value)})",
                            key=key)
        if isinstance(value, str):
            problem = text_problem(value, MAX_TEXT_LENGTH)
            if problem:
                raise RuleError(problem, key=key)
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, Mapping):
            for name, item in value.items():
                _check_key(name)
                stack.append((item, depth + 1))


def _check_key(key: Any) -> str:
    """A key of a rules table: valid text; raises naming the bad key."""
    if not isinstance(key, str):
        raise RuleError(f"keys must be strings (got {shown(key)} of type {type(key).__name__})")
    problem = text_problem(key, MAX_ID_LENGTH)
    if problem:
        raise RuleError(f"key {problem}")
    return key


def _compare(op: str, value: Any, bound: Any) -> bool:
    if (_is_number(value) and _is_number(bound)) or (
        isinstance(value, str) and isinstance(bound, str)
    ):
        if op == "gt":
            return value > bound
        if op == "gte":
            return value >= bound
        if op == "lt":
            return value < bound
        return value <= bound
    return False


@attrs.frozen
class Check:
    """Operators applied to one value (a trait, a property, a score): all must hold.

    A missing value satisfies only ``exists = false``; every other operator, ``not_equals``
    and ``not_in`` included, is false on it (as in PostHog's property filters).

    >>> Check.of({"gte": 50, "lt": 500}).matches(120)
    True
    """

    ops: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, ops: Mapping[str, Any]) -> Check:
        """Validate ``{"gte": 50}``-style operators (``in_`` is accepted for ``in``)."""
        normalized = {("in" if _check_key(k) == "in_" else k): v for k, v in ops.items()}
        if not normalized:
            raise RuleError(f"needs at least one operator; allowed: {_allowed(OPERATORS)}")
        for op, bound in normalized.items():
            if op not in OPERATORS:
                raise RuleError(f"unknown operator; allowed: {_allowed(OPERATORS)}", key=op)
            _check_operand(op, bound)
        return cls(tuple((op, tuple(b) if isinstance(b, list) else b)
                         for op, b in normalized.items()))

    def matches(self, value: Any, present: bool = True) -> bool:
        """Whether ``value`` (``present`` False when it is missing) satisfies every operator."""
        for op, bound in self.ops:  # noqa: SIM110 - a loop, not all() of a generator: hot
            if not _holds(op, bound, value, present):
                return False
        return True

    def describe(self) -> str:
        """``"gte 50, lt 500"``."""
        return ", ".join(f"{op.replace('_', ' ')} {_show(b)}" for op, b in self.ops)


def _holds(op: str, bound: Any, value: Any, present: bool) -> bool:
    if op == "exists":
        return present is bound
    if not present:
        return False
    if op == "equals":
        return value == bound
    if op == "not_equals":
        return value != bound
    if op == "in":
        return value in bound
    if op == "not_in":
        return value not in bound
    if op == "contains":
        if isinstance(value, str):
            return isinstance(bound, str) and bound in value
        return isinstance(value, list) and bound in value
    if op == "ends_with":
        return isinstance(value, str) and value.endswith(bound)
    return _compare(op, value, bound)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(
        value, bool) else str(value)


def _where(value: Mapping[str, Any] | None) -> tuple[tuple[str, Check], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise RuleError(f"must be a table of property = value (got {value!r})", key="where")
    out = []
    for prop, spec in value.items():
        if not isinstance(prop, str) or not prop or text_problem(prop, MAX_ID_LENGTH):
            raise RuleError(
                f"property names must be non-empty strings of at most {MAX_ID_LENGTH} "
                f"characters, without NUL or lone surrogates (got {shown(prop)})", key="where")
        try:
            if isinstance(spec, Mapping):
                check = Check.of(spec)
            elif isinstance(spec, list | tuple):
                check = Check.of({"in": list(spec)})
            else:
                check = Check.of({"equals": spec})
        except RuleError as exc:
            raise exc.within(key=f"where.{prop}") from None
        out.append((prop, check))
    return tuple(out)


def where_matches(where: tuple[tuple[str, Check], ...], properties: Mapping[str, Any]
                  ) -> bool:
    """Whether ``properties`` pass every ``(property, Check)`` of a ``where`` filter; a null
    property counts as missing."""
    for prop, check in where:
        value = properties.get(prop)
        if not check.matches(value, value is not None):
            return False
    return True


def describe_where(where: tuple[tuple[str, Check], ...]) -> str:
    """``" where provider in ['slack']"``, or ``""`` for no filter."""
    if not where:
        return ""
    return " where " + ", ".join(f"{prop} {check.describe()}" for prop, check in where)


def _non_empty_str(key: str):
    def validate(_inst: Any, _attr: Any, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            raise RuleError(f"must be a non-empty string (got {shown(value)})", key=key)
        problem = text_problem(value, MAX_ID_LENGTH)
        if problem:
            raise RuleError(problem, key=key)

    return validate


def _optional_str(key: str):
    def validate(inst: Any, attr: Any, value: Any) -> None:
        if value is not None:
            _non_empty_str(key)(inst, attr, value)

    return validate


@attrs.frozen
class TraitCondition:
    """A user trait (an account trait in an account rule) tested with :class:`Check` operators."""

    trait: str = attrs.field(validator=_non_empty_str("trait"))
    check: Check

    def label(self) -> str:
        """``"trait plan"``."""
        return f"trait {self.trait}"

    def bound(self) -> str:
        """``"in ['free', 'trial']"``."""
        return self.check.describe()


def trait(name: str, **operators: Any) -> TraitCondition:
    """A trait condition: ``trait("plan", in_=["free", "trial"])``, ``trait("seats", gte=5)``.

    Operators: equals, not_equals, in_ (``in``), not_in, gt, gte, lt, lte, exists, contains,
    ends_with. Several operators must all hold.
    """
    return TraitCondition(name, Check.of(operators))


def _refuse_unknown(data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    for key in data:
        if key not in allowed:
            raise RuleError(f"unknown key; allowed: {_allowed(allowed)}", key=key)


def check_tables(root: Any, source: str | None = None) -> None:
    """Before anything is built from a dict (or a TOML file's tables): every key a string,
    every text valid (no NUL, no lone surrogate, at most MAX_TEXT_LENGTH characters) and
    the nesting bounded, walked without recursion; raises :class:`RuleError` naming the
    path (``rules[0].all[1].event``)."""
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > _MAX_TABLE_DEPTH:
            raise RuleError(f"nested too deeply (all/any/not at most {MAX_RULE_DEPTH} levels)",
                            source=source, key=path or None)
        if isinstance(value, Mapping):
            for key, item in value.items():
                try:
                    _check_key(key)
                except RuleError as exc:
                    raise exc.within(source=source, key=path or None) from None
                shown_key = key if len(key) <= 40 else key[:37] + "..."
                stack.append((item, f"{path}.{shown_key}" if path else shown_key, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            problem = text_problem(value, MAX_TEXT_LENGTH)
            if problem:
                raise RuleError(problem, source=source, key=path or None)


#: Raw nesting a rules dict may have: two levels (a table, its list) per level of conditions.
_MAX_TABLE_DEPTH = 2 * MAX_RULE_DEPTH + 8
