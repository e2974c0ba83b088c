"""Conversion reports: the stage funnel and each rule's outcomes.

They answer the questions sales and marketing ask of their definitions: how many leads
reach each stage, how many move on and how fast, and which PQL rules produce leads that
sales goes on to work (or rejects, and why).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs

from .stages import STAGES
from .store import Transaction

#: Later stages whose reach rule_report counts, and the rejections it counts.
REACHED = ("sql", "opportunity", "customer")
REJECTED = ("unqualified", "disqualified")


@attrs.frozen
class FunnelStage:
    """One stage of a :class:`Funnel`.

    ``entered``: subjects that entered the stage (in the period); ``moved_on``: of those,
    how many later entered any later stage; ``conversion``: ``moved_on / entered``;
    ``median_time``: the median time from entering this stage to entering a later one.
    """

    stage: str
    entered: int
    moved_on: int
    conversion: float | None
    median_time: timedelta | None


@attrs.frozen
class Funnel:
    """Stage-to-stage conversion; ``segments`` splits it by the ``by`` trait's values."""

    subject_type: str
    by: str | None
    stages: tuple[FunnelStage, ...]
    segments: dict[str, tuple[FunnelStage, ...]] = attrs.field(factory=dict)

    def stage(self, name: str) -> FunnelStage:
        """The row of one stage."""
        return next(s for s in self.stages if s.stage == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in seconds)."""
        def rows(stages: Iterable[FunnelStage]) -> list[dict[str, Any]]:
            return [{**attrs.asdict(s), "median_time": None if s.median_time is None
                     else s.median_time.total_seconds()} for s in stages]

        return {"subject_type": self.subject_type, "by": self.by, "stages": rows(self.stages),
                "segments": {k: rows(v) for k, v in self.segments.items()}}


@attrs.frozen
class RuleOutcome:
    """What became of one rule's qualifications: how many, how many later reached
    ``sql``/``opportunity``/``customer``, how many sales rejected, and why."""

    rule: str
    qualified: int
    reached: dict[str, int]
    rejected: dict[str, int]
    top_reasons: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**attrs.asdict(self), "top_reasons": [list(r) for r in self.top_reasons]}


def funnel(tx: Transaction, subject_type: str, since: int | None, until: int | None,
           by: str | None) -> Funnel:
    """Build a :class:`Funnel` from the subjects' stage histories (aggregated in SQL)."""
    [(_, overall)] = tx.funnel_rows(subject_type, since, until, None) or [(None, [
        (0, 0, None)] * len(STAGES))]
    segments = {} if by is None else {
        _segment(value): _stages(parts)
        for value, parts in tx.funnel_rows(subject_type, since, until, by)}
    return Funnel(subject_type, by, _stages(overall), dict(sorted(segments.items())))


def _segment(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _stages(parts: list[tuple[int, int, float | None]]) -> tuple[FunnelStage, ...]:
    return tuple(
        FunnelStage(stage, entered, moved, moved / entered if entered else None,
                    None if median is None else timedelta(microseconds=median))
        for stage, (entered, moved, median) in zip(STAGES, parts, strict=True)
    )


def rule_report(tx: Transaction, rule_names: Iterable[str], since: int | None
                ) -> list[RuleOutcome]:
    """A :class:`RuleOutcome` per rule (configured rules first, then any others on file)."""
    subjects: dict[str, set] = defaultdict(set)
    reached: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    reasons: dict[str, Counter] = defaultdict(Counter)
    for rule, subject_type, subject_id, to_stage, reason in tx.rule_outcomes(since):
        subject = (subject_type, subject_id)
        subjects[rule].add(subject)
        if to_stage is None:
            continue
        reached[rule][to_stage].add(subject)
        if to_stage in REJECTED and reason:
            reasons[rule][reason] += 1
    names = list(dict.fromkeys([*rule_names, *sorted(subjects)]))
    return [
        RuleOutcome(
            name,
            len(subjects[name]),
            {stage: len(reached[name][stage]) for stage in REACHED},
            {stage: len(reached[name][stage]) for stage in REJECTED},
            tuple(reasons[name].most_common(3)),
        )
        for name in names
    ]


def format_funnel(result: Funnel) -> str:
    """A plain-text table for people."""
    lines = []
    groups = [("all", result.stages), *result.segments.items()]
    for name, stages in groups:
        if result.by is not None:
            lines.append(f"{result.by} = {name}" if name != "all" else "all subjects")
        lines.append(f"{'stage':<13}{'entered':>9}{'moved on':>10}{'conversion':>12}"
                     f"{'median time':>14}")
        for s in stages:
            rate = "-" if s.conversion is None else f"{s.conversion:.1%}"
            lines.append(f"{s.stage:<13}{s.entered:>9}{s.moved_on:>10}{rate:>12}"
                         f"{format_timespan(s.median_time):>14}")
        lines.append("")
    return "\n".join(lines).rstrip()


def format_rule_report(outcomes: list[RuleOutcome]) -> str:
    """A plain-text table for people."""
    head = (f"{'rule':<24}{'qualified':>10}{'sql':>6}{'opp':>6}{'cust':>6}"
            f"{'unq':>6}{'disq':>6}  top reasons")
    lines = [head]
    for o in outcomes:
        reasons = "; ".join(f"{r} ({n})" for r, n in o.top_reasons)
        lines.append(f"{o.rule:<24}{o.qualified:>10}{o.reached['sql']:>6}"
                     f"{o.reached['opportunity']:>6}{o.reached['customer']:>6}"
                     f"{o.rejected['unqualified']:>6}{o.rejected['disqualified']:>6}  {reasons}")
    return "\n".join(lines)


def format_timespan(value: timedelta | None) -> str:
    """``"1.5d"``, ``"3.0h"`` or ``"-"``: a time in stage for a table."""
    if value is None:
        return "-"
    hours = value.total_seconds() / 3600
    return f"{hours / 24:.1f}d" if hours >= 24 else f"{hours:.1f}h"

