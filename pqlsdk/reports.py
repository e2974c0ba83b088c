"""Conversion reports: the stage funnel and each rule's outcomes.

They answer the questions sales and marketing ask of their definitions: how many leads
reach each stage, how many move on and how fast, and which PQL rules produce leads that
sales goes on to work (or rejects, and why).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import attrs

from .handoff import HandoffTimes, handoff_times
from .stages import STAGES
from .store import StageCounts, Transaction
from .timestamps import from_micros

#: Later stages whose reach rule_report counts, and the rejections it counts.
REACHED = ("sql", "opportunity", "customer")
REJECTED = ("unqualified", "disqualified")


@attrs.frozen
class FunnelStage:
    """One stage of a :class:`Funnel`.

    ``entered``: subjects that entered the stage (in the period); ``moved_on``: of those,
    how many later entered any later stage; ``conversion``: ``moved_on / entered`` (None
    for the last stage, which has no next one, and when nobody entered); ``median_time``:
    the median time from entering this stage to entering a later one. With
    ``funnel(to=...)``, ``reached``: of those who entered, how many then reached ``to`` (or
    a later stage), and ``reach_rate``: ``reached / entered``; both None for ``to`` and
    the stages after it.
    """

    stage: str
    entered: int
    moved_on: int
    conversion: float | None
    median_time: timedelta | None
    reached: int | None = None
    reach_rate: float | None = None


@attrs.frozen
class Funnel:
    """Stage-to-stage conversion; ``segments`` splits it by the ``by`` trait's values;
    ``handoff``: how long sales took to accept or reject the period's qualified leads."""

    subject_type: str
    by: str | None
    stages: tuple[FunnelStage, ...]
    segments: dict[str, tuple[FunnelStage, ...]] = attrs.field(factory=dict)
    handoff: HandoffTimes = attrs.field(factory=HandoffTimes)
    #: The target stage of ``reached``/``reach_rate`` (``funnel(to=...)``), or None.
    to: str | None = None

    def stage(self, name: str) -> FunnelStage:
        """The row of one stage."""
        return next(s for s in self.stages if s.stage == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in seconds)."""
        def rows(stages: Iterable[FunnelStage]) -> list[dict[str, Any]]:
            return [{**attrs.asdict(s), "median_time": None if s.median_time is None
                     else s.median_time.total_seconds()} for s in stages]

        return {"subject_type": self.subject_type, "by": self.by, "to": self.to,
                "stages": rows(self.stages),
                "segments": {k: rows(v) for k, v in self.segments.items()},
                "handoff": self.handoff.to_dict()}


@attrs.frozen
class VersionOutcome:
    """One version of a rule (the fingerprint of its definition) in a :class:`RuleOutcome`:
    when it first and last qualified a subject, how many, and how many of those reached
    ``sql``/``opportunity``/``customer``. ``version`` is None for qualifications recorded
    before versions were kept."""

    version: str | None
    first: datetime
    last: datetime
    qualified: int
    reached: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO-8601)."""
        return {**attrs.asdict(self), "first": self.first.isoformat(),
                "last": self.last.isoformat()}


@attrs.frozen
class RuleOutcome:
    """What became of one rule's qualifications: how many, how many later reached
    ``sql``/``opportunity``/``customer``, how many sales rejected, and why.

    A shadow rule's qualifications make a row of their own (``shadow`` True); ``versions``
    splits the row by the rule's definition, oldest first, so a change shows when it
    happened. ``qualified`` counts subjects; ``firings`` counts qualifications (more than
    ``qualified`` when the rule re-arms, or a subject qualified again after a rejection)."""

    rule: str
    qualified: int
    reached: dict[str, int]
    rejected: dict[str, int]
    top_reasons: tuple[tuple[str, int], ...]
    shadow: bool = False
    versions: tuple[VersionOutcome, ...] = ()
    firings: int = 0
    #: Rejections (``unqualified``/``disqualified``) per criterion sales marked False in
    #: ``set_stage(criteria=...)``, most common first.
    rejected_by: dict[str, int] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**attrs.asdict(self, recurse=False),
                "top_reasons": [list(r) for r in self.top_reasons],
                "versions": [v.to_dict() for v in self.versions]}


def funnel(tx: Transaction, subject_type: str, since: int | None, until: int | None,
           by: str | None, *, to: str | None = None, exclude_rejected: bool = False
           ) -> Funnel:
    """Build a :class:`Funnel` from the subjects' stage histories (aggregated in SQL)."""
    rows = tx.funnel_rows(subject_type, since, until, by, to=to,
                          exclude_rejected=exclude_rejected)
    segments: dict[str, tuple[FunnelStage, ...]] = {}
    if by is not None:
        for value, parts in rows.groups:
            segments[_segment(value)] = _stages(parts, to)
    return Funnel(subject_type, by, _stages(rows.overall, to), dict(sorted(segments.items())),
                  handoff_times(tx, subject_type, since, until), to)


def _segment(value: Any) -> str:
    """A group's name: the trait's JSON value as text, ``(none)`` when it was not set."""
    if value is None:
        return "(none)"
    decoded = json.loads(value)
    return "(none)" if decoded is None else str(decoded)


def _stages(parts: list[StageCounts], to: str | None) -> tuple[FunnelStage, ...]:
    last = len(STAGES) - 1
    target = -1 if to is None else STAGES.index(to)  # no reach without a target
    return tuple(
        FunnelStage(stage, entered, moved,
                    moved / entered if entered and k < last else None,
                    None if median is None else timedelta(microseconds=median),
                    reached if k < target else None,
                    reached / entered if entered and k < target else None)
        for k, (stage, (entered, moved, median, reached)) in enumerate(
            zip(STAGES, parts, strict=True))
    )


def rule_report(tx: Transaction, rule_names: Iterable[str | tuple[str, bool]],
                since: int | None) -> list[RuleOutcome]:
    """A :class:`RuleOutcome` per rule (configured rules first, then any others on file);
    ``rule_names`` are names or ``(name, shadow)`` pairs."""
    Key = tuple[str, bool]
    subjects: dict[Key, set] = defaultdict(set)
    firings: dict[Key, set] = defaultdict(set)
    by_criterion: dict[Key, Counter] = defaultdict(Counter)
    reached: dict[Key, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    reasons: dict[Key, Counter] = defaultdict(Counter)
    by_version: dict[Key, dict[str | None, dict[tuple[str, str], int]]] = defaultdict(
        lambda: defaultdict(dict))
    for (rule, subject_type, subject_id, to_stage, reason, shadow, version,
         at, qualification_id, criteria) in tx.rule_outcomes(since):
        key = (rule, bool(shadow))
        subject = (subject_type, subject_id)
        subjects[key].add(subject)
        firings[key].add(qualification_id)
        by_version[key][version][subject] = at
        if to_stage is None:
            continue
        reached[key][to_stage].add(subject)
        if to_stage in REJECTED and reason:
            reasons[key][reason] += 1
        if to_stage in REJECTED and criteria:
            unmet = [name for name, value in json.loads(criteria).items() if value is False]
            by_criterion[key].update(unmet)
    wanted = [(n, False) if isinstance(n, str) else n for n in rule_names]
    keys = list(dict.fromkeys([*wanted, *sorted(subjects)]))
    return [
        RuleOutcome(
            name,
            len(subjects[(name, shadow)]),
            {stage: len(reached[(name, shadow)][stage]) for stage in REACHED},
            {stage: len(reached[(name, shadow)][stage]) for stage in REJECTED},
            tuple(reasons[(name, shadow)].most_common(3)),
            shadow,
            _versions(by_version[(name, shadow)], reached[(name, shadow)]),
            len(firings[(name, shadow)]),
            dict(by_criterion[(name, shadow)].most_common()),
        )
        for name, shadow in keys
    ]


def _versions(found: dict[str | None, dict[tuple[str, str], int]],
              reached: dict[str, set]) -> tuple[VersionOutcome, ...]:
    out = [
        VersionOutcome(version, from_micros(min(times.values())),
                       from_micros(max(times.values())), len(times),
                       {stage: len(reached[stage] & times.keys()) for stage in REACHED})
        for version, times in found.items()
    ]
    return tuple(sorted(out, key=lambda v: v.first))


def format_funnel(result: Funnel) -> str:
    """A plain-text table for people."""
    lines = []
    groups = [("all", result.stages), *result.segments.items()]
    for name, stages in groups:
        if result.by is not None:
            lines.append(f"{result.by} = {name}" if name != "all" else "all subjects")
        reach = "" if result.to is None else f"{'to ' + result.to:>12}"
        lines.append(f"{'stage':<13}{'entered':>9}{'moved on':>10}{'conversion':>12}"
                     f"{'median time':>14}{reach}")
        for s in stages:
            rate = "-" if s.conversion is None else f"{s.conversion:.1%}"
            to = "" if result.to is None else (
                f"{'-':>12}" if s.reach_rate is None else f"{s.reach_rate:>12.1%}")
            lines.append(f"{s.stage:<13}{s.entered:>9}{s.moved_on:>10}{rate:>12}"
                         f"{format_timespan(s.median_time):>14}{to}")
        lines.append("")
    return "\n".join(lines).rstrip()


def format_rule_report(outcomes: list[RuleOutcome]) -> str:
    """A plain-text table for people: per rule, subjects qualified and firings
    (qualifications: more when the rule re-arms), how many reached each later stage, how
    many sales rejected and why, and a line of the rejections by criterion."""
    head = (f"{'rule':<24}{'qualified':>10}{'fired':>7}{'sql':>6}{'opp':>6}{'cust':>6}"
            f"{'unq':>6}{'disq':>6}  top reasons")
    lines = [head]
    for o in outcomes:
        reasons = "; ".join(f"{r} ({n})" for r, n in o.top_reasons)
        name = o.rule + (" (shadow)" if o.shadow else "")
        lines.append(f"{name:<24}{o.qualified:>10}{o.firings:>7}{o.reached['sql']:>6}"
                     f"{o.reached['opportunity']:>6}{o.reached['customer']:>6}"
                     f"{o.rejected['unqualified']:>6}{o.rejected['disqualified']:>6}  {reasons}")
        if o.rejected_by:  # sales' criteria marked False, most common first
            lines.append("  rejected by criterion: " + ", ".join(
                f"{criterion} ({n})" for criterion, n in o.rejected_by.items()))
        if len(o.versions) > 1:  # the rule changed: when, and how each version did
            for v in o.versions:
                label = f"  version {v.version or '(before versions)'}"
                lines.append(f"{label:<24}{v.qualified:>10}{'':>7}{v.reached['sql']:>6}"
                             f"{v.reached['opportunity']:>6}{v.reached['customer']:>6}"
                             f"{'':>12}  {v.first:%Y-%m-%d} to {v.last:%Y-%m-%d}")
    return "\n".join(lines)


def format_timespan(value: timedelta | None) -> str:
    """``"1.5d"``, ``"3.0h"`` or ``"-"``: a time in stage for a table."""
    if value is None:
        return "-"
    hours = value.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if hours >= 24 else f"{hours:.1f}h"



def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_backtest(result: Any) -> str:
    """A plain-text table of a :class:`~pqlsdk.Backtest` for people."""
    outcome = result.outcome if isinstance(result.outcome, str) else (
        f"event {result.outcome['event']}")
    hours = result.horizon.total_seconds() / 3600
    horizon = f"{hours / 24:g}d" if hours >= 24 else f"{hours:g}h"
    lines = [f"outcome: {outcome} within {horizon} · {result.subjects} "
             f"{result.subject_type}s, {result.converters} converted (base rate "
             f"{_pct(result.base_rate)}) · {result.pending} still inside the horizon"]
    groups = [("rules", result.rules)]
    if result.baseline:
        groups = [("given rules", result.rules), ("current rules", result.baseline)]
    for title, rules in groups:
        if len(groups) > 1:
            lines += ["", title]
        lines.append(f"{'rule':<30}{'version':<14}{'qualified':>9}{'converted':>10}"
                     f"  {'precision (95% interval)':<26}{'recall':>7}{'lift':>7}"
                     f"{'lead time':>11}{'missed':>8}")
        for r in rules:
            name = r.rule + (" (shadow)" if r.shadow else "")
            interval = "-" if r.precision is None else (
                f"{r.precision:.1%} ({r.precision_low:.1%}-{r.precision_high:.1%})")
            lift = "-" if r.lift is None else f"{r.lift:.2f}x"
            lines.append(f"{name:<30}{r.version:<14}{r.qualified:>9}{r.converted:>10}"
                         f"  {interval:<26}{_pct(r.recall):>7}{lift:>7}"
                         f"{format_lead_time(r.median_lead_time):>11}{r.missed:>8}")
            if r.leaky:
                lines.append(f"  ! {r.late} qualified only at or after converting: this rule "
                             "describes the outcome, it does not predict it")
            elif r.pending:
                lines.append(f"  {r.pending} qualified still inside the horizon (not counted)")
    if result.baseline:
        for title, pairs in (("added", result.added), ("dropped", result.dropped)):
            converted = sum(1 for _, c in pairs if c)
            lines += ["", f"{title}: {len(pairs)} ({converted} converted)"]
            lines += [f"  {s}{'  converted' if c else ''}" for s, c in pairs[:50]]
            if len(pairs) > 50:
                lines.append(f"  ... and {len(pairs) - 50} more (--json lists all)")
    return "\n".join(lines)


def format_lead_time(value: timedelta | None) -> str:
    """Like :func:`format_timespan`, signed: a negative lead time (the outcome came first)
    reads ``"-7.9d"``."""
    if value is None or value >= timedelta(0):
        return format_timespan(value)
    return "-" + format_timespan(-value)


def format_suggestions(found: list[Any]) -> str:
    """Suggestions for people: figures, then each rule's TOML."""
    if not found:
        return "no candidate rule qualifies enough subjects (try a lower --min-support)"
    lines = []
    for n, s in enumerate(found, start=1):
        lift = "-" if s.lift is None else f"{s.lift:.2f}x"
        lines += [f"# {n}. lift {lift}: {s.converted} of {s.qualified} converted "
                  f"(precision {s.precision:.1%}, {s.precision_low:.1%}-"
                  f"{s.precision_high:.1%}), recall {_pct(s.recall)}",
                  s.toml]
    return "\n".join(lines).rstrip()
