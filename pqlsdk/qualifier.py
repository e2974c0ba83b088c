"""Qualify subjects inside a write transaction: evaluate the rules, record each win once.

Exactly-once comes from three things together: the check runs inside the same
``BEGIN IMMEDIATE`` transaction as the event that may complete the rule, the
qualification row is unique per (subject, rule), and the insert is ``ON CONFLICT DO
NOTHING``, so a second process racing on the same subject records nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from .evaluator import holds, measure
from .ids import decode_names, qualification_id
from .models import Qualification, StageChange
from .rules import EventCondition, Rule
from .scoring import Score, Scoring, compute
from .stages import FIRST_STAGE, rank
from .store import Transaction
from .timestamps import to_micros

_MICROSECOND = timedelta(microseconds=1)


class Subject(NamedTuple):
    """A user or an account as evaluation needs it: traits, stage, round, rules met."""

    type: str
    id: str
    traits_json: str = "{}"
    stage: str = FIRST_STAGE
    round: int = 0
    #: When the current round began (events before it do not count), or None.
    since: int | None = None
    done: frozenset[str | tuple[str]] = frozenset()

    @classmethod
    def from_columns(cls, subject_type: str, subject_id: str, columns: tuple[Any, ...]
                     ) -> Subject:
        """Build from a snapshot's ``traits, stage, round, round start, rules met``."""
        traits_json, stage, round_, since, done = columns
        return cls(subject_type, subject_id, traits_json or "{}", stage, round_, since,
                   decode_names(done))


def load_subjects(
    tx: Transaction, user_id: str, account_id: str | None, ts: int
) -> tuple[Subject, Subject | None]:
    """The user (created if new, moved to ``account_id`` if given) and its account."""
    row = tx.user_snapshot(user_id)
    if row is None:
        tx.add_user(user_id, account_id, ts)
        user = Subject("user", user_id)
    else:
        user = Subject.from_columns("user", user_id, row[1:6])
        if account_id is None or account_id == row[0]:
            if row[0] is None:
                return user, None
            return user, Subject.from_columns("account", row[0], row[6:11])
        tx.move_user(user_id, account_id)
    if account_id is None:
        return user, None
    tx.add_account(account_id, ts)
    return user, load_subject(tx, "account", account_id)


def load_subject(tx: Transaction, subject_type: str, subject_id: str) -> Subject:
    """A known user or account (an unknown one has no traits and has met no rule)."""
    row = tx.subject_snapshot(subject_type, subject_id)
    if row is None:
        return Subject(subject_type, subject_id)
    return Subject.from_columns(subject_type, subject_id, row)


class SubjectFacts:
    """:class:`~pqlsdk.evaluator.Facts` for one subject as of one moment, read from the store."""

    def __init__(self, tx: Transaction, subject: Subject, until: int,
                 scoring: Scoring | None = None) -> None:
        self.tx, self.subject, self.until, self.scoring = tx, subject, until, scoring
        self._traits: dict[str, Any] | None = None
        self._score: Score | None = None

    def measure(self, condition: EventCondition, limit: int | None) -> float:
        """Count, distinct-count or sum the subject's matching events."""
        matches = condition.matches_properties if condition.where else None
        return self.tx.measure(self.subject.type, self.subject.id, condition, self.until,
                               limit, matches, self.subject.since)

    def trait(self, name: str) -> tuple[bool, Any]:
        """``(present, value)``; a trait set to null counts as missing."""
        if self._traits is None:
            self._traits = json.loads(self.subject.traits_json)
        value = self._traits.get(name)
        return value is not None, value

    def event_rows(self, event: str, since: int | None, limit: int | None
                   ) -> Iterator[tuple[int, str]]:
        """``(ts, properties JSON)`` of the subject's events, newest first."""
        if self.subject.since is not None:
            since = self.subject.since if since is None else max(since, self.subject.since)
        return self.tx.event_rows(self.subject.type, self.subject.id, event, self.until, since,
                                  limit)

    def weighted_counts(self, lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """Decayed counts of the subject's events per scoring line, in one statement."""
        if self.subject.since is not None:
            lines = [(event, self.subject.since if since is None else max(since,
                                                                           self.subject.since),
                      half_life, limit) for event, since, half_life, limit in lines]
        return self.tx.weighted_counts(self.subject.type, self.subject.id, self.until, lines)

    def score(self, kind: str) -> float:
        """The subject's ``fit``, ``behavior`` or ``total`` score (computed once)."""
        if self._score is None:
            self._score = compute(self.scoring or Scoring(), self, lines=False)
        return self._score.get(kind)

    def scores(self) -> Score:
        """The subject's whole :class:`~pqlsdk.scoring.Score`, each line's points included."""
        return compute(self.scoring or Scoring(), self)


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
    ts = to_micros(at)
    pending = eligible(tx, rules, subject, ts)
    if not pending:
        return []
    facts = SubjectFacts(tx, subject, ts, scoring)
    stage = subject.stage
    created = []
    for rule, firing, since in pending:
        if since is not None:  # a re-armed rule counts only events after its last firing
            if not holds(rule.condition, SubjectFacts(tx, subject._replace(since=since), ts,
                                                      scoring)):
                continue
        elif not holds(rule.condition, facts):
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
    for rule in rules:
        if done_key(rule) not in subject.done:
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
