"""PQL rules: one frozen model, built from TOML, a dict or Python builders.

Three spellings of one rule::

    # pql_rules.toml
    [[rules]]
    name = "team_activation"
    [[rules.all]]
    event = "report_generated"
    at_least = 5
    within = "14d"

    {"rules": [{"name": "team_activation",
                "all": [{"event": "report_generated", "at_least": 5, "within": "14d"}]}]}

    pqlsdk.Rule("team_activation", pqlsdk.all_of(pqlsdk.event("report_generated", at_least=5,
                                                               within="14d")))

Every value is validated where it enters; a bad one raises :class:`RuleError` naming the
source, the rule, the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

import attrs

from .conditions import (
    COMPARISON_OPERATORS,
    EQUALITY_OPERATORS,
    OPERATORS,
    Check,
    TraitCondition,
    _allowed,
    _is_number,
    _non_empty_str,
    _optional_str,
    _refuse_unknown,
    _show,
    _where,
    check_tables,
    describe_where,
    format_duration,
    parse_duration,
    trait,
    where_matches,
)
from .errors import RuleError
from .limits import (
    MAX_BOUND,
    MAX_RULE_DEPTH,
    shown,
)
from .scoring import Scoring, scoring_from_dict
from .stages import STAGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SUBJECT_TYPES = ("user", "account")


def _optional_duration(value: Any, key: str) -> timedelta | None:
    """A rule's ``rearm``/``every`` (or ``accept_within``): None, or a duration as
    :func:`parse_duration` reads it."""
    if value is None:
        return None
    if not isinstance(value, str | timedelta):
        raise RuleError(f"must be a duration like '30d' (got {shown(value)})", key=key)
    return parse_duration(value, key=key)


@attrs.frozen
class EventCondition:
    """Events of one name, counted (or their ``distinct`` values, or the ``sum`` of a property).

    Met when ``at_least <= value <= at_most``. ``at_least`` defaults to 1, or to 0 when only
    ``at_most`` is given ("at most 0 logins in 7d" means none). ``within`` bounds the window,
    which ends at the evaluated moment and includes its start: ``[t - within, t]``.
    """

    event: str = attrs.field(validator=_non_empty_str("event"))
    at_least: float = attrs.field()
    at_most: float | None = attrs.field(default=None)
    within: timedelta | None = None
    where: tuple[tuple[str, Check], ...] = ()
    distinct: str | None = attrs.field(default=None, validator=_optional_str("distinct"))
    sum: str | None = attrs.field(default=None, validator=_optional_str("sum"))

    @at_least.validator
    def _check_at_least(self, _attr: Any, value: Any) -> None:
        _check_bound("at_least", value, whole=self.sum is None)

    @at_most.validator
    def _check_at_most(self, _attr: Any, value: Any) -> None:
        if value is not None:
            _check_bound("at_most", value, whole=self.sum is None)
            if value < self.at_least:
                raise RuleError(
                    f"must not be below at_least ({_show(self.at_least)}) (got {_show(value)})",
                    key="at_most",
                )

    @sum.validator
    def _check_sum(self, _attr: Any, value: Any) -> None:
        if value is not None and self.distinct is not None:
            raise RuleError("use either distinct or sum, not both", key="sum")

    @property
    def limit(self) -> int | None:
        """How many matching rows decide this condition (``None``: every row, as for ``sum``)."""
        if self.sum is not None:
            return None
        bound = self.at_most + 1 if self.at_most is not None else self.at_least
        return max(1, math.ceil(bound))

    def label(self) -> str:
        """``"teammate_invited (distinct invitee_email) in 14d"``."""
        text = self.event + describe_where(self.where)
        if self.distinct:
            text += f" (distinct {self.distinct})"
        if self.sum:
            text += f" (sum of {self.sum})"
        if self.within:
            text += f" in {format_duration(self.within)}"
        return text

    def bound(self) -> str:
        """``"at least 5"``, ``"at most 2"`` or ``"1 to 3"``."""
        if self.at_most is None:
            return f"at least {_show(self.at_least)}"
        if self.at_least == 0:
            return f"at most {_show(self.at_most)}"
        return f"{_show(self.at_least)} to {_show(self.at_most)}"

    def matches_properties(self, properties: Mapping[str, Any]) -> bool:
        """Whether an event's properties pass ``where`` (a null property counts as missing)."""
        return where_matches(self.where, properties)

    def met_by(self, value: float) -> bool:
        """Whether a measured value satisfies the bounds."""
        return value >= self.at_least and (self.at_most is None or value <= self.at_most)


def _check_bound(key: str, value: Any, *, whole: bool) -> None:
    """A count's bound is a whole number, a sum's any number: finite, from 0 to
    :data:`~pqlsdk.limits.MAX_BOUND` (2**53), so that the store compares it exactly."""
    ok = (_is_number(value) and 0 <= value <= MAX_BOUND
          and (not whole or float(value).is_integer()))
    if not ok:
        kind = "a whole number" if whole else "a number"
        raise RuleError(f"must be {kind} >= 0 and <= 2**53 (got {shown(value)})", key=key)


SCORE_KINDS = ("fit", "behavior", "total")
#: The operators a score condition may use.
SCORE_OPERATORS = (*COMPARISON_OPERATORS, *EQUALITY_OPERATORS)


@attrs.frozen
class ScoreCondition:
    """The subject's ``fit``, ``behavior`` or ``total`` score, compared with operators.

    ``{ score = "total", gte = 60 }`` is how a score threshold makes an MQL.
    """

    score: str = attrs.field()
    check: Check = attrs.field()

    @score.validator
    def _check_score(self, _attr: Any, value: Any) -> None:
        if value not in SCORE_KINDS:
            raise RuleError(f"must be one of {', '.join(SCORE_KINDS)} (got {value!r})",
                            key="score")

    @check.validator
    def _check_ops(self, _attr: Any, value: Check) -> None:
        for op, bound in value.ops:
            if op not in SCORE_OPERATORS:
                raise RuleError(f"a score takes {_allowed(SCORE_OPERATORS)}", key=op)
            if not _is_number(bound):
                raise RuleError(f"must be a number (got {bound!r})", key=op)

    def label(self) -> str:
        """``"score total"``."""
        return f"score {self.score}"

    def bound(self) -> str:
        """``"gte 60"``."""
        return self.check.describe()


def _cost(condition: Condition) -> int:
    """Rough price of checking a condition: traits are in memory, counts one indexed query,
    property filters read rows."""
    if isinstance(condition, TraitCondition):
        return 0
    if isinstance(condition, ScoreCondition):
        return 4
    if isinstance(condition, EventCondition):
        return 1 if not (condition.where or condition.distinct or condition.sum) else 2
    return 3


def _cheapest_first(conditions: tuple[Condition, ...]) -> tuple[Condition, ...]:
    return tuple(sorted(conditions, key=_cost))


def _depth(parts: Iterable[Any]) -> int:
    """A group's nesting level (a leaf is 0), refused beyond
    :data:`~pqlsdk.limits.MAX_RULE_DEPTH`: evaluation walks conditions recursively."""
    depth = 1 + max((getattr(part, "depth", 0) for part in parts), default=0)
    if depth > MAX_RULE_DEPTH:
        raise RuleError(f"conditions may nest all/any/not at most {MAX_RULE_DEPTH} levels deep")
    return depth


@attrs.frozen
class AllOf:
    """Every condition holds."""

    conditions: tuple[Condition, ...]
    #: The same conditions, cheapest first: the order the hot path checks them in.
    by_cost: tuple[Condition, ...] = attrs.field(init=False, eq=False, repr=False)
    #: Nesting level of all/any/not (at most MAX_RULE_DEPTH).
    depth: int = attrs.field(init=False, eq=False, repr=False)

    @by_cost.default
    def _by_cost(self) -> tuple[Condition, ...]:
        return _cheapest_first(self.conditions)

    @depth.default
    def _depth(self) -> int:
        return _depth(self.conditions)


@attrs.frozen
class AnyOf:
    """At least one condition holds."""

    conditions: tuple[Condition, ...]
    #: The same conditions, cheapest first: the order the hot path checks them in.
    by_cost: tuple[Condition, ...] = attrs.field(init=False, eq=False, repr=False)
    #: Nesting level of all/any/not (at most MAX_RULE_DEPTH).
    depth: int = attrs.field(init=False, eq=False, repr=False)

    @by_cost.default
    def _by_cost(self) -> tuple[Condition, ...]:
        return _cheapest_first(self.conditions)

    @depth.default
    def _depth(self) -> int:
        return _depth(self.conditions)


@attrs.frozen
class Not:
    """The condition does not hold."""

    condition: Condition
    #: Nesting level of all/any/not (at most MAX_RULE_DEPTH).
    depth: int = attrs.field(init=False, eq=False, repr=False)

    @depth.default
    def _depth(self) -> int:
        return _depth((self.condition,))


Condition = EventCondition | TraitCondition | ScoreCondition | AllOf | AnyOf | Not
_CONDITION_TYPES = (EventCondition, TraitCondition, ScoreCondition, AllOf, AnyOf, Not)


def walk(condition: Condition) -> Iterable[Condition]:
    """The condition and every condition inside it, depth first."""
    yield condition
    if isinstance(condition, AllOf | AnyOf):
        for part in condition.conditions:
            yield from walk(part)
    elif isinstance(condition, Not):
        yield from walk(condition.condition)


_walk = walk


def _check_condition(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, _CONDITION_TYPES):
        raise RuleError(
            "must be a condition made with pqlsdk.event, trait, score, all_of, any_of or not_ "
            f"(got {value!r})",
            key="condition",
        )


@attrs.frozen
class Rule:
    """A named PQL definition: when ``condition`` holds for a subject, it qualifies once.

    >>> Rule("slack_connected", event("integration_connected", where={"provider": "slack"}))
    """

    name: str = attrs.field(validator=_non_empty_str("name"))
    condition: Condition = attrs.field(validator=_check_condition)
    subject: str = attrs.field(default="user", kw_only=True)
    stage: str = attrs.field(default="pql", kw_only=True)
    description: str = attrs.field(default="", kw_only=True)
    #: Evaluated and recorded live, but moves no stage and is never delivered.
    shadow: bool = attrs.field(default=False, kw_only=True)
    #: Eligible again this long after its last firing, counting only events after it
    #: (``"90d"`` or a ``timedelta``); None: the rule fires once per round.
    rearm: timedelta | None = attrs.field(default=None, kw_only=True,
                                          converter=lambda v: _optional_duration(v, "rearm"))
    #: A rolling cooldown: at most one firing per this long, windows counting as usual.
    every: timedelta | None = attrs.field(default=None, kw_only=True,
                                          converter=lambda v: _optional_duration(v, "every"))
    #: Event names the rule reads: a ``track`` of any other event cannot change it.
    events: frozenset[str] = attrs.field(init=False, eq=False, repr=False)
    #: Trait names the rule reads: an ``identify``/``group`` changing none of them cannot either.
    traits: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    @subject.validator
    def _check_subject(self, _attr: Any, value: Any) -> None:
        if value not in SUBJECT_TYPES:
            raise RuleError(f"must be one of {_allowed(SUBJECT_TYPES)} (got {value!r})",
                            key="subject")

    @stage.validator
    def _check_stage(self, _attr: Any, value: Any) -> None:
        if value not in STAGES:
            raise RuleError(f"must be one of {', '.join(STAGES)} (got {value!r})", key="stage")

    @shadow.validator
    def _check_shadow(self, _attr: Any, value: Any) -> None:
        if not isinstance(value, bool):
            raise RuleError(f"must be true or false (got {value!r})", key="shadow")

    @every.validator
    def _check_every(self, _attr: Any, value: Any) -> None:
        if value is not None and self.rearm is not None:
            raise RuleError("give rearm (eligible again after the last firing, counting only "
                            "later events) or every (a rolling cooldown), not both",
                            key="every")

    @property
    def rearms(self) -> timedelta | None:
        """How long after a firing the rule may fire again (``rearm`` or ``every``), or
        None when it fires once per round."""
        return self.rearm if self.rearm is not None else self.every

    #: The fingerprint of the rule's normalized definition (see :func:`rule_version`).
    version: str = attrs.field(init=False, eq=False, repr=False)

    @version.default
    def _version(self) -> str:
        _check_condition(None, None, self.condition)  # computed before validators run
        return rule_version(self)

    @events.default
    def _events(self) -> frozenset[str]:
        return frozenset(c.event for c in _walk(self.condition) if isinstance(c, EventCondition))

    #: Score kinds (fit, behavior, total) the rule reads.
    scores: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    @traits.default
    def _traits(self) -> frozenset[str]:
        return frozenset(c.trait for c in _walk(self.condition) if isinstance(c, TraitCondition))

    @scores.default
    def _scores(self) -> frozenset[str]:
        return frozenset(c.score for c in _walk(self.condition) if isinstance(c, ScoreCondition))

    #: Whether the condition holds on some facts: the condition compiled once, when the rule
    #: is made (:func:`pqlsdk.evaluator.compile_condition`), what qualifying calls.
    check: Callable[[Any], bool] = attrs.field(init=False, eq=False, repr=False)

    @check.default
    def _check(self) -> Callable[[Any], bool]:
        from .evaluator import compile_condition  # the evaluator reads this module's classes
        return compile_condition(self.condition)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its arguments (``check`` is a closure: made again when unpickled)."""
        return _remake_rule, ({f.name: getattr(self, f.name)
                               for f in attrs.fields(Rule) if f.init},)


def _remake_rule(arguments: dict[str, Any]) -> Rule:
    return Rule(**arguments)


# --- builders -------------------------------------------------------------------------------


def event(
    name: str,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    within: str | timedelta | None = None,
    where: Mapping[str, Any] | None = None,
    distinct: str | None = None,
    sum: str | None = None,
) -> EventCondition:
    """An event condition: ``event("report_generated", at_least=5, within="14d")``.

    ``where={"provider": ["slack", "salesforce"]}`` filters on properties (a value, a list
    meaning any of, or operators such as ``{"gte": 10}``); ``distinct="invitee_email"`` counts
    distinct values; ``sum="emails_sent"`` adds a numeric property.
    """
    if at_least is None:
        at_least = 0 if at_most is not None else 1
    return EventCondition(
        name,
        at_least,
        at_most,
        parse_duration(within) if within is not None else None,
        _where(where),
        distinct,
        sum,
    )


def score(kind: str, **operators: Any) -> ScoreCondition:
    """A score condition: ``score("total", gte=60)`` (kinds fit, behavior, total; operators
    gt, gte, lt, lte, equals, not_equals). Needs a ``[scoring]`` section in the rule set."""
    return ScoreCondition(kind, Check.of(operators))


def all_of(*conditions: Condition) -> AllOf:
    """Every one of ``conditions`` holds."""
    return AllOf(_conditions(conditions, "all"))


def any_of(*conditions: Condition) -> AnyOf:
    """At least one of ``conditions`` holds."""
    return AnyOf(_conditions(conditions, "any"))


def not_(condition: Condition) -> Not:
    """``condition`` does not hold."""
    _check_condition(None, None, condition)
    return Not(condition)


def _conditions(conditions: Iterable[Condition], key: str) -> tuple[Condition, ...]:
    out = tuple(conditions)
    if not out:
        raise RuleError("needs at least one condition", key=key)
    for index, condition in enumerate(out):
        try:
            _check_condition(None, None, condition)
        except RuleError as exc:
            raise RuleError(exc.problem, key=f"{key}[{index}]") from None
    return out


# --- normal form, fingerprint, TOML ----------------------------------------------------------


def _number(value: Any) -> Any:
    """``5.0`` and ``5`` are one bound: whole floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_dict(check: Check) -> dict[str, Any]:
    return {op: [_number(v) for v in b] if isinstance(b, tuple) else _number(b)
            for op, b in sorted(check.ops)}


def condition_to_dict(condition: Condition) -> dict[str, Any]:
    """A condition in the rules file's shape (the inverse of how the file is read), with
    bounds as plain numbers, durations as ``"14d"`` and ``where`` keys sorted."""
    if isinstance(condition, EventCondition):
        out: dict[str, Any] = {"event": condition.event}
        if condition.at_most is None or condition.at_least != 0:
            out["at_least"] = _number(condition.at_least)
        if condition.at_most is not None:
            out["at_most"] = _number(condition.at_most)
        if condition.within is not None:
            out["within"] = format_duration(condition.within)
        if condition.where:
            out["where"] = {prop: _check_dict(check) for prop, check in
                            sorted(condition.where, key=lambda item: item[0])}
        if condition.distinct is not None:
            out["distinct"] = condition.distinct
        if condition.sum is not None:
            out["sum"] = condition.sum
        return out
    if isinstance(condition, TraitCondition):
        return {"trait": condition.trait, **_check_dict(condition.check)}
    if isinstance(condition, ScoreCondition):
        return {"score": condition.score, **_check_dict(condition.check)}
    if isinstance(condition, Not):
        return {"not": condition_to_dict(condition.condition)}
    key = "all" if isinstance(condition, AllOf) else "any"
    return {key: [condition_to_dict(part) for part in condition.conditions]}


def _normal(value: Any) -> Any:
    """Order-free form for fingerprints: the parts of ``all``/``any`` sorted, and a group of
    one condition is that condition."""
    if isinstance(value, dict):
        for key in ("all", "any"):
            if list(value) == [key] and len(value[key]) == 1:
                return _normal(value[key][0])
        out = {k: _normal(v) for k, v in value.items()}
        for key in ("all", "any"):
            if key in out:
                out[key] = sorted(out[key], key=lambda part: json.dumps(part, sort_keys=True))
        return out
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def rule_version(rule: Rule) -> str:
    """A stable fingerprint (12 hex digits) of what a rule decides: its subject, its stage
    and its conditions in a normal form (order of ``all``/``any`` parts, ``5`` vs ``5.0``,
    ``"2w"`` vs ``"14d"`` and ``where`` key order do not matter). The name, the
    ``description`` and ``shadow`` are not part of it.

    >>> len(rule_version(Rule("a", event("signup"))))
    12
    """
    normal: dict[str, Any] = {"subject": rule.subject, "stage": rule.stage,
                              "condition": _normal(condition_to_dict(rule.condition))}
    for key in ("rearm", "every"):  # only when set: versions recorded before stay the same
        if getattr(rule, key) is not None:
            normal[key] = getattr(rule, key).total_seconds()
    text = json.dumps(normal, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """One rule in the rules file's shape (``rule_from_dict`` reads it back)."""
    out: dict[str, Any] = {"name": rule.name}
    if rule.description:
        out["description"] = rule.description
    if rule.subject != "user":
        out["subject"] = rule.subject
    out["stage"] = rule.stage
    if rule.shadow:
        out["shadow"] = True
    for key in ("rearm", "every"):
        if getattr(rule, key) is not None:
            out[key] = format_duration(getattr(rule, key))
    condition = condition_to_dict(rule.condition)
    out.update(condition if set(condition) <= {"all", "any"} else {"all": [condition]})
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def rule_to_toml(rule: Rule) -> str:
    """One rule as a ``[[rules]]`` table, ready to paste into a rules file.

    Nested groups are written inline (``{ any = [...] }``), which the file accepts.
    """
    data = rule_to_dict(rule)
    lines = ["[[rules]]"]
    for key, value in data.items():
        if key not in ("all", "any"):
            lines.append(f"{key} = {_toml_value(value)}")
    for key in ("all", "any"):
        for part in data.get(key, ()):
            lines += ["", f"  [[rules.{key}]]"]
            lines += [f"  {_toml_key(k)} = {_toml_value(v)}" for k, v in part.items()]
    return "\n".join(lines) + "\n"


# --- loading --------------------------------------------------------------------------------

_RULE_KEYS = ("name", "description", "subject", "stage", "shadow", "rearm", "every", "all",
              "any")
_EVENT_KEYS = ("event", "at_least", "at_most", "within", "where", "distinct", "sum")
_GROUP_KEYS = ("all", "any", "not")


def _condition_from_dict(data: Any) -> Condition:
    if not isinstance(data, Mapping):
        raise RuleError(f"must be a table (got {data!r})")
    groups = [k for k in _GROUP_KEYS if k in data]
    if groups:
        extra = set(data) - {groups[0]}
        if len(groups) > 1 or extra:
            raise RuleError(
                f"a nested {groups[0]!r} must be alone in its table (also got "
                f"{_allowed(extra | set(groups[1:]))})"
            )
        key = groups[0]
        if key == "not":
            try:
                return not_(_condition_from_dict(data["not"]))
            except RuleError as exc:
                raise exc.within(key="not") from None
        return (all_of if key == "all" else any_of)(*_conditions_from_list(data[key], key))
    if "event" in data:
        _refuse_unknown(data, _EVENT_KEYS)
        return event(data["event"], **{k: v for k, v in data.items() if k != "event"})
    if "trait" in data:
        _refuse_unknown(data, ("trait", *OPERATORS))
        return trait(data["trait"], **{k: v for k, v in data.items() if k != "trait"})
    if "score" in data:
        _refuse_unknown(data, ("score", *SCORE_OPERATORS))
        return score(data["score"], **{k: v for k, v in data.items() if k != "score"})
    raise RuleError(
        "a condition needs one of: event, trait, score, all, any, not "
        f"(got keys {_allowed(data)})"
    )


def _conditions_from_list(items: Any, key: str) -> list[Condition]:
    if not isinstance(items, list | tuple) or not items:
        raise RuleError(f"must be a non-empty list of conditions (got {items!r})", key=key)
    out = []
    for index, item in enumerate(items):
        try:
            out.append(_condition_from_dict(item))
        except RuleError as exc:
            raise exc.within(key=f"{key}[{index}]") from None
    return out


def rule_from_dict(data: Mapping[str, Any]) -> Rule:
    """Build one :class:`Rule` from its TOML/dict shape."""
    if not isinstance(data, Mapping):
        raise RuleError(f"each rule must be a table (got {shown(data)})")
    name = data.get("name")
    try:
        check_tables(data)
        _non_empty_str("name")(None, None, name)
        _refuse_unknown(data, _RULE_KEYS)
        parts: list[Condition] = []
        if "all" in data:
            parts.extend(_conditions_from_list(data["all"], "all"))
        if "any" in data:
            parts.append(any_of(*_conditions_from_list(data["any"], "any")))
        if not parts:
            raise RuleError("a rule needs 'all' or 'any' conditions", key="all")
        condition = parts[0] if len(parts) == 1 and "any" in data else all_of(*parts)
        description = data.get("description", "")
        if not isinstance(description, str):
            raise RuleError(f"must be a string (got {description!r})", key="description")
        return Rule(
            str(name),
            condition,
            subject=data.get("subject", "user"),
            stage=data.get("stage", "pql"),
            description=description,
            shadow=data.get("shadow", False),
            rearm=data.get("rearm"),
            every=data.get("every"),
        )
    except RuleError as exc:
        raise exc.within(rule=name if isinstance(name, str) else None) from None


@attrs.frozen
class Lifecycle:
    """The ``[lifecycle]`` section: ``accept_within``, how long sales has to accept (move to
    ``sql`` or later) or reject a qualified lead before it is overdue (None: no deadline)."""

    accept_within: timedelta | None = None


def lifecycle_from_dict(data: Any, source: str = "rules") -> Lifecycle:
    """Build :class:`Lifecycle` from the ``[lifecycle]`` table (or a dict in its shape)."""
    if data is None or isinstance(data, Lifecycle):
        return data or Lifecycle()
    if not isinstance(data, Mapping):
        raise RuleError(f"must be a table (got {shown(data)})", source=source, key="lifecycle")
    for key in data:
        if key != "accept_within":
            raise RuleError("unknown key; allowed: accept_within", source=source,
                            key=f"lifecycle.{key}")
    try:
        return Lifecycle(_optional_duration(data.get("accept_within"), "accept_within"))
    except RuleError as exc:
        raise RuleError(exc.problem, source=source, key="lifecycle.accept_within") from None


@attrs.frozen
class RuleSet:
    """The validated rules of a Client (and its scoring model), indexed by what can change
    them."""

    rules: tuple[Rule, ...]
    source: str = "rules"
    scoring: Any = None  # pqlsdk.scoring.Scoring
    lifecycle: Lifecycle = attrs.field(factory=Lifecycle)

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise RuleError(f"each rule must be a pqlsdk.Rule (got {rule!r})",
                                source=self.source)
            if rule.name in seen:
                raise RuleError("duplicate rule name; names must be unique",
                                source=self.source, rule=rule.name, key="name")
            if rule.scores and self.scoring is None:
                raise RuleError("a score condition needs a [scoring] section",
                                source=self.source, rule=rule.name, key="score")
            seen.add(rule.name)

    def events_of(self, rule: Rule) -> frozenset[str]:
        """Events whose ``track`` can change the rule (its own, and its scores' events)."""
        if rule.scores & {"behavior", "total"}:
            return rule.events | self.scoring.events
        return rule.events

    def traits_of(self, rule: Rule) -> frozenset[str]:
        """Traits whose change can change the rule (its own, and its fit score's)."""
        if rule.scores & {"fit", "total"}:
            return rule.traits | self.scoring.traits
        return rule.traits

    def reading_traits(self, subject: str, names: Iterable[str]) -> list[Rule]:
        """Rules of ``subject`` type that read any of the trait ``names``."""
        names = set(names)
        return [r for r in self.rules if r.subject == subject and self.traits_of(r) & names]


def load_rules(source: Any, scoring: Any = None, lifecycle: Any = None) -> RuleSet:
    """Load rules from a TOML path, a dict in the file's shape, or a list of :class:`Rule`
    (with ``scoring``, a :class:`~pqlsdk.scoring.Scoring` or a dict like ``[scoring]``).

    >>> load_rules("pql_rules.toml").rules[0].name
    'team_activation'
    """
    if source is None:
        return RuleSet((), scoring=_scoring(scoring, "rules"),
                       lifecycle=lifecycle_from_dict(lifecycle))
    if isinstance(source, str | os.PathLike):
        return _ruleset_from_dict(_read_toml(source), os.fsdecode(source))
    if isinstance(source, Mapping):
        return _ruleset_from_dict(source, "rules")
    if isinstance(source, list | tuple):
        rules = [r if isinstance(r, Rule) else _located(rule_from_dict, r, "rules", i)
                 for i, r in enumerate(source)]
        return RuleSet(tuple(rules), scoring=_scoring(scoring, "rules"),
                       lifecycle=lifecycle_from_dict(lifecycle))
    raise RuleError(
        "rules must be a path to a TOML file, a dict in its shape, or a list of pqlsdk.Rule "
        f"(got {type(source).__name__})"
    )


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file's tables; any way the file cannot be read or parsed is a RuleError."""
    name = os.fsdecode(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise RuleError("no such rules file", source=name) from None
    except IsADirectoryError:
        raise RuleError("is a directory; give the path of a TOML rules file",
                        source=name) from None
    except OSError as exc:
        raise RuleError(f"cannot be read ({exc.strerror or exc})", source=name) from None
    except UnicodeDecodeError as exc:
        raise RuleError(f"not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset "
                        f"{exc.start}); a TOML file is UTF-8 text", source=name) from None
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"not valid TOML: {exc}", source=name) from None
    except (ValueError, RecursionError) as exc:  # NUL in the path, huge numbers, deep nesting
        raise RuleError(f"not a readable TOML rules file ({shown(str(exc), 120)})",
                        source=name) from None


def _located(build: Any, data: Any, source: str, index: int) -> Rule:
    try:
        return build(data)
    except RuleError as exc:
        located = exc.within(source=source)
        if located.rule is None:
            located = exc.within(source=source, key=f"rules[{index}]")
        raise located from None


def _ruleset_from_dict(data: Mapping[str, Any], source: str) -> RuleSet:
    # each rule is checked by rule_from_dict, so that its errors name it
    check_tables({key: value for key, value in data.items() if key != "rules"}, source)
    for key in data:
        if key not in ("rules", "scoring", "lifecycle"):
            raise RuleError("unknown top-level key; allowed: rules, scoring, lifecycle",
                            source=source,
                            key=key)
    items = data.get("rules", [])
    if not isinstance(items, list):
        raise RuleError("must be an array of tables ([[rules]])", source=source, key="rules")
    rules = tuple(_located(rule_from_dict, item, source, i) for i, item in enumerate(items))
    return RuleSet(rules, source, _scoring(data.get("scoring"), source),
                   lifecycle_from_dict(data.get("lifecycle"), source))


def _scoring(data: Any, source: str) -> Any:
    if data is None or isinstance(data, Scoring):
        return data
    try:
        return scoring_from_dict(data)
    except RuleError as exc:
        raise exc.within(source=source) from None
