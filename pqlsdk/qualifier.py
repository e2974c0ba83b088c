"""Qualify subjects inside a write transaction: evaluate the rules, record each win once.

Exactly-once comes from three things together: the check runs inside the same
``BEGIN IMMEDIATE`` transaction as the event that may complete the rule, the
qualification row is unique per (subject, rule), and the insert is ``ON CONFLICT DO
NOTHING``, so a second process racing on the same subject records nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from .evaluator import measure
from .facts import FirstEventFacts, Subject, SubjectFacts
from .ids import qualification_id
from .models import Qualification, StageChange
from .rules import Rule
from .scoring import Scoring
from .stages import rank
from .store import Transaction
from .timestamps import to_micros

_MICROSECOND = timedelta(microseconds=1)


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
    event: tuple[str, str] | None = None,
    make_facts: Callable[[Transaction, Subject, int, Scoring | None], SubjectFacts] | None = None,
    ts: int | None = None,
) -> list[Qualification]:
    """Record a qualification for each of ``rules`` the subject meets as of ``at`` and had not
    met this round; move the subject forward to each one's stage (appending the move and
    the qualification that caused it to ``moves``); return the qualifications created.

    A ``disqualified`` subject qualifies for nothing until a person moves it back.
    ``event`` (name, properties JSON) is the tracked event: for a subject the call created,
    the facts come from it alone, with no statement. ``make_facts`` builds the facts otherwise
    (default :class:`SubjectFacts`; a bulk import passes its in-memory ones). ``ts`` is
    ``at`` in microseconds, when the caller has it already.
    """
    if subject.stage == "disqualified":
        return []
    if ts is None:
        ts = to_micros(at)
    pending = eligible(tx, rules, subject, ts)
    if not pending:
        return []
    facts = (FirstEventFacts(subject, ts, scoring, *event) if subject.new and event
             else (make_facts or SubjectFacts)(tx, subject, ts, scoring))
    stage = subject.stage
    created = []
    for rule, firing, since in pending:
        if since is not None:  # a re-armed rule counts only events after its last firing
            if not rule.check(SubjectFacts(tx, subject._replace(since=since), ts, scoring)):
                continue
        elif not rule.check(facts):
            continue
        if (firing == 0 and subject.since is not None
                and not _new_since(tx, rule, subject, scoring, ts)):
            continue  # a rejected lead needs something new since its rejection
        qualification = Qualification(
            id=qualification_id(rule.name, subject.type, subject.id, subject.round,
                                firing=firing, shadow=rule.shadow),
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
        if not tx.insert_qualification({**qualification.to_row(), "round": subject.round,
                                        "firing": firing}):
            continue
        if rule.shadow:
            continue  # recorded beside the live ones: no stage, no delivery, not returned
        created.append(qualification)
        if rank(rule.stage) < rank("sql") and rank(stage) < rank("sql"):
            # a qualified lead waits for sales to accept or reject it (see handoff.py)
            tx.open_handoff(qualification.id, subject.type, subject.id, rule.name, ts)
        if moves_forward(stage, rule.stage):
            source = f"rule:{rule.name}"
            tx.change_stage(subject.type, subject.id, stage, rule.stage, ts, source, None)
            if moves is not None:
                moves.append((StageChange(subject.type, subject.id, stage, rule.stage, at,
                                          source), qualification))
            stage = rule.stage
    return created


class Eligible(NamedTuple):
    """A rule a subject may meet now: which firing it would be, and from when its events
    count (after the last firing, for ``rearm``), or None (the round's start)."""

    rule: Rule
    firing: int
    since: int | None


def eligible(tx: Transaction, rules: Iterable[Rule], subject: Subject, ts: int
             ) -> list[Eligible]:
    """The rules the subject may meet at ``ts``: those it has not met this round, and the
    re-arming ones whose last firing is ``rearm``/``every`` behind (SPEC §11)."""
    found: list[Eligible] = []
    rearming: list[Rule] = []
    done = subject.done
    for rule in rules:
        if not done or done_key(rule) not in done:
            found.append(Eligible(rule, 0, None))
        elif rule.rearms is not None:
            rearming.append(rule)
    if rearming:
        firings = tx.firings(subject.type, subject.id, subject.round)
        for rule in rearming:
            count, last = firings[(rule.name, rule.shadow)]
            gap = rule.rearms
            assert gap is not None
            if ts < last + gap // _MICROSECOND:
                continue
            since = None
            if rule.rearm is not None:  # only events after the last firing count
                since = last + 1 if subject.since is None else max(last + 1, subject.since)
            found.append(Eligible(rule, count, since))
    return found


def reads(rule: Rule, scoring: Scoring | None) -> tuple[frozenset[str], frozenset[str]]:
    """The events and traits a rule reads: its own, and those of the scores it tests
    (behaviour lines' events, fit lines' traits)."""
    events, traits = rule.events, rule.traits
    if scoring is not None and rule.scores & {"behavior", "total"}:
        events = events | scoring.events
    if scoring is not None and rule.scores & {"fit", "total"}:
        traits = traits | scoring.traits
    return events, traits


def _new_since(tx: Transaction, rule: Rule, subject: Subject, scoring: Scoring | None,
               until: int) -> bool:
    """Whether, since the subject's round began (a manual move to ``unqualified`` or
    ``disqualified``), it did an event the rule reads or had a trait the rule reads changed
    (SPEC §11): a rule that holds on traits (or a fit score) alone must not undo a sales
    rejection a minute later."""
    assert subject.since is not None
    events, traits = reads(rule, scoring)
    return tx.anything_new(subject.type, subject.id, events, traits, subject.since, until)


def done_key(rule: Rule) -> str | tuple[str]:
    """How a rule appears in :attr:`Subject.done`: its name, or ``(name,)`` for a shadow rule
    (a shadow qualification does not stop the live rule of the same name, whatever the
    names hold)."""
    return (rule.name,) if rule.shadow else rule.name


def moves_forward(current: str, target: str) -> bool:
    """Whether a qualification for ``target`` moves a subject at ``current``: forward only,
    and from ``unqualified`` to any stage."""
    return current == "unqualified" or rank(target) > rank(current)
