"""Qualify subjects inside a write transaction: evaluate the rules, record each win once.

Exactly-once comes from three things together: the check runs inside the same
``BEGIN IMMEDIATE`` transaction as the event that may complete the rule, the
qualification row is unique per (subject, rule), and the insert is ``ON CONFLICT DO
NOTHING``, so a second process racing on the same subject records nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .evaluator import holds, measure
from .facts import Subject, SubjectFacts
from .ids import qualification_id
from .models import Qualification, StageChange
from .rules import Rule
from .scoring import Scoring
from .stages import rank
from .store import Transaction
from .timestamps import to_micros


def qualify(
    tx: Transaction,
    rules: Iterable[Rule],
    subject: Subject,
    *,
    user_id: str,
    account_id: str | None,
    at: datetime,
    moves: list[tuple[StageChange, Qualification]] | None = None,
    scoring: Scoring | None = None,
) -> list[Qualification]:
    """Record a qualification for each of ``rules`` the subject meets as of ``at`` and had not
    met this round; move the subject forward to each one's stage (appending the move and
    the qualification that caused it to ``moves``); return the qualifications created.

    A ``disqualified`` subject qualifies for nothing until a person moves it back.
    """
    if subject.stage == "disqualified":
        return []
    pending = [rule for rule in rules if done_key(rule) not in subject.done]
    if not pending:
        return []
    ts = to_micros(at)
    facts = SubjectFacts(tx, subject, ts, scoring)
    stage = subject.stage
    created = []
    for rule in pending:
        if not holds(rule.condition, facts):
            continue
        qualification = Qualification(
            id=qualification_id(rule.name, subject.type, subject.id, subject.round,
                                shadow=rule.shadow),
            rule=rule.name,
            stage=rule.stage,
            subject_type=subject.type,
            subject_id=subject.id,
            user_id=user_id,
            account_id=account_id,
            qualified_at=at,
            evidence=measure(rule.condition, facts, exact=False),
            rule_version=rule.version,
            shadow=rule.shadow,
        )
        if not tx.insert_qualification({**qualification.to_row(), "round": subject.round}):
            continue
        if rule.shadow:
            continue  # recorded beside the live ones: no stage, no delivery, not returned
        created.append(qualification)
        if moves_forward(stage, rule.stage):
            source = f"rule:{rule.name}"
            tx.change_stage(subject.type, subject.id, stage, rule.stage, ts, source, None)
            if moves is not None:
                moves.append((StageChange(subject.type, subject.id, stage, rule.stage, at,
                                          source), qualification))
            stage = rule.stage
    return created


def done_key(rule: Rule) -> str | tuple[str]:
    """How a rule appears in :attr:`Subject.done`: its name, or ``(name,)`` for a shadow rule
    (a shadow qualification does not stop the live rule of the same name, whatever the
    names hold)."""
    return (rule.name,) if rule.shadow else rule.name


def moves_forward(current: str, target: str) -> bool:
    """Whether a qualification for ``target`` moves a subject at ``current``: forward only,
    and from ``unqualified`` to any stage."""
    return current == "unqualified" or rank(target) > rank(current)
