"""Apply a time-ordered batch of recorded track calls in one transaction, as a bulk job.

Replaying history one call at a time costs a subject lookup, an event insert and a rule
check per message. :func:`apply_tracks` does the same work with fewer statements and the
same result as live calls in time order (replay = live):

1. Walk the batch in order, resolving each event's user (an id an alias linked counts for
   its user) and account (the call's ``account_id``, else the user's current one) as the
   live call would, and creating or moving users and accounts at the moment they first
   appear (one snapshot read per user per batch, which also gives the user and its account
   as evaluation needs them). Moving a user takes its stored events to the account's
   tenant, so the events pending before a move are stored (and evaluated) first.
2. Insert the events in one ``executemany``, each in its user's tenant at the time (the
   account it counted for, else the user), but an event whose message id that tenant
   holds already (stored before, or earlier in the batch): that track is a duplicate, as
   the live call's insert would find, and changes nothing more (its call's subjects were
   created or moved all the same, as live).
3. Evaluate, in time order, only the rules each event can change, for its user and its
   account, then, for a user or account the event's call created, the rules that hold on
   a subject first seen (as a live call does), with each subject read once and read again
   only after a qualification changed it. Rule checks count events up to the evaluated
   event's timestamp, so the later events of the batch, already inserted, are not seen;
   the one case they would be (a second event of the same user or account at the same
   microsecond) ends the segment first, so such an event is inserted only after the one
   before it was evaluated. Re-arming rules (``rearm``/``every``) are checked by the same
   qualify step as live calls, from their last firing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .batchfacts import BatchFacts, Reach, SegmentEvents
from .conditions import TraitCondition
from .evaluator import holds
from .facts import Subject, SubjectFacts, load_subject
from .models import Qualification, StageChange
from .qualifier import done_key
from .rules import AllOf, Condition, Rule
from .store import Transaction
from .timestamps import from_micros

#: A forward stage move and the qualification that caused it.
Move = tuple[StageChange, Qualification]


class Track(NamedTuple):
    """One recorded track call, as an import replays it."""

    message_id: str
    ts: int
    user_id: str
    account_id: str | None
    event: str
    properties: str


class Result(NamedTuple):
    """What a batch created (live qualifications and their stage moves), and the tracks
    left out as duplicates (their message id was stored already where their event goes)."""

    qualifications: list[Qualification]
    moves: list[Move]
    duplicates: list[Track]


_NEW = object()  # a user first seen in this batch, not yet written


class Rules(NamedTuple):
    """What :func:`apply_tracks` needs of the engine: the rules each event name can change
    (``(user rules, account rules)``), the qualify step, and per subject type the rules
    checked when a subject is first seen (those that hold on an empty subject)."""

    by_event: dict[str, tuple[list[Rule], list[Rule]]]
    qualify: Callable[..., list[Qualification]]
    first_seen: dict[str, list[Rule]]
    #: How far back the event conditions look, per event name (:func:`batchfacts.reaches`).
    reach: dict[str, Reach]


class _Pending(NamedTuple):
    """A track waiting in the segment: its account, and the subjects it created
    (``"user"``, ``"account"``: their first-seen rules are checked after its own)."""

    track: Track
    account: str | None
    created: tuple[str, ...]


def apply_tracks(tx: Transaction, rules: Rules, tracks: Sequence[Track]) -> Result:
    """Record ``tracks`` (in replay order, none stored yet) inside ``tx`` and qualify their
    subjects as live calls in that order would."""
    accounts: dict[str, Any] = {}  # user -> current account (or _NEW)
    linked: dict[str, str | None] = {}  # id -> the user an alias links it to
    pending: list[_Pending] = []
    seen: set[tuple[str, str, int]] = set()
    subjects: dict[tuple[str, str], Subject] = {}
    locked: set[tuple[str, str | None]] = set()
    out = Result([], [], [])
    aliased = tx.has_aliases()  # none stored (the common backfill): no id to look up
    for track in tracks:
        if track.user_id not in linked:  # aliases change only between segments
            linked[track.user_id] = tx.alias_of(track.user_id) if aliased else None
        canonical = linked[track.user_id]
        if canonical is not None:  # an id linked to a user counts for that user
            track = track._replace(user_id=canonical)
        user_id, ts = track.user_id, track.ts
        if (user_id, track.account_id) not in locked:  # row locks on PostgreSQL, held to commit
            tx.lock_subjects(user_id, track.account_id)
            locked.add((user_id, track.account_id))
        if user_id not in accounts:  # one read gives the user and its account
            row = tx.user_snapshot(user_id)
            accounts[user_id] = _NEW if row is None else row.account_id
            if row is not None:
                subjects.setdefault(("user", user_id), Subject.from_row("user", user_id,
                                                                        row.user))
                if row.account_id is not None and row.account is not None:
                    subjects.setdefault(("account", row.account_id), Subject.from_row(
                        "account", row.account_id, row.account))
        current = accounts[user_id]
        account = track.account_id if track.account_id is not None else (
            None if current is _NEW else current)
        if ("u", user_id, ts) in seen or (account is not None and ("a", account, ts) in seen):
            _flush(tx, rules, pending, subjects, out)
            seen.clear()
        created: list[str] = []
        if current is _NEW:
            tx.add_user(user_id, track.account_id, ts)
            subjects.setdefault(("user", user_id), Subject("user", user_id))
            created.append("user")
        if track.account_id is not None and track.account_id != current:
            if current is not _NEW:
                # the move takes the user's stored events to the new tenant: store the
                # pending ones first (evaluated in order, as they come before this one)
                _flush(tx, rules, pending, subjects, out)
                seen.clear()
                tx.move_user(user_id, track.account_id)
            if tx.add_account(track.account_id, ts):
                subjects.setdefault(("account", track.account_id),
                                    Subject("account", track.account_id))
                created.append("account")
        accounts[user_id] = account
        pending.append(_Pending(track, account, tuple(created)))
        seen.add(("u", user_id, ts))
        if account is not None:
            seen.add(("a", account, ts))
    _flush(tx, rules, pending, subjects, out)
    return out


def _flush(tx: Transaction, rules: Rules, pending: list[_Pending],
           subjects: dict[tuple[str, str], Subject], out: Result) -> None:
    """Insert the pending events in one statement, then evaluate them in order, their
    event conditions answered from memory (:mod:`pqlsdk.batchfacts`), each subject against
    only the rules it can still meet (:func:`open_rules`)."""
    if not pending:
        return
    # an event's tenant is its user's at the time: the account it counted for, else the
    # user; a message id stored there already makes the track a duplicate (as live)
    stored = tx.stored_events([(account or t.user_id, t.message_id)
                               for t, account, _ in pending])
    fresh: list[_Pending] = []
    for item in pending:
        key = (item.account or item.track.user_id, item.track.message_id)
        if key in stored:
            out.duplicates.append(item.track)
            continue
        stored.add(key)
        fresh.append(item)
    pending[:] = fresh
    if not pending:
        return
    tx.insert_events([(account or t.user_id, t.message_id, t.user_id, account, t.event, t.ts,
                       t.properties) for t, account, _ in pending])
    conn = tx.conn
    facts = None
    if not tx.has_rollups():  # a rollup straddling a window counts whole: SQL knows how
        spans: dict[tuple[str, str], tuple[int, int]] = {}  # subject -> first, last ts
        tenants: dict[tuple[str, str], str] = {}  # subject -> its events' tenant
        for track, account, _ in pending:
            keys = [("user", track.user_id)] + ([("account", account)] if account else [])
            for key in keys:
                spans[key] = (spans[key][0] if key in spans else track.ts, track.ts)
                tenants[key] = account or track.user_id
        events = SegmentEvents(tx, rules.reach, spans, tenants)
        facts = functools.partial(BatchFacts, events=events)
    # subject -> event name -> the rules worth checking; dropped with the subject's row
    worth: dict[tuple[str, str], dict[str, list[Rule]]] = {}
    by_event, first_seen = rules.by_event, rules.first_seen
    for track, account, created in pending:
        found = by_event.get(track.event)
        if found is None and not created:
            continue  # no rule reads this event (the common case for many names)
        checks: list[tuple[str, str | None, Sequence[Rule], bool]] = []
        if found is not None:
            checks += [("user", track.user_id, found[0], True), ("account", account, found[1],
                                                                  True)]
        # then, as a live call does, the rules that hold on a subject first seen
        checks += [(kind, track.user_id if kind == "user" else account,
                    first_seen.get(kind, ()), False) for kind in created]
        at = None
        for kind, subject_id, which, narrow in checks:
            if not which or subject_id is None:
                continue
            key = (kind, subject_id)
            subject = subjects.get(key)
            if subject is None:
                subject = subjects[key] = load_subject(tx, kind, subject_id)
            if narrow:
                plans = worth.setdefault(key, {})
                narrowed = plans.get(track.event)
                if narrowed is None:
                    narrowed = plans[track.event] = open_rules(tx, which, subject)
                if not narrowed:
                    continue
                which = narrowed
            if at is None:
                at = from_micros(track.ts)
            if kind == "user":  # locked by the walk; its writes and reads need no lookup
                tx.bind(subject_id, account or subject_id)
            before = conn.total_changes
            out.qualifications.extend(rules.qualify(
                tx, which, subject, user_id=track.user_id, account_id=account, at=at,
                moves=out.moves, make_facts=facts, ts=track.ts))
            if conn.total_changes != before:  # a qualification (live or shadow) was recorded
                del subjects[key]
                worth.pop(key, None)
    pending.clear()


def open_rules(tx: Transaction, rules: Sequence[Rule], subject: Subject) -> list[Rule]:
    """Those of ``rules`` the subject can still meet while a bulk segment is evaluated:
    none when it is ``disqualified``; else each rule it has not met this round, or that
    re-arms, and whose trait conditions (a bare one, or the parts of an ``all``) hold on
    its traits, which a track does not change (:func:`pqlsdk.qualifier.qualify` would
    find every other one false or already met)."""
    if subject.stage == "disqualified":
        return []
    traits = SubjectFacts(tx, subject, 0)  # traits only: no statement
    return [rule for rule in rules
            if (rule.rearms is not None or done_key(rule) not in subject.done)
            and all(holds(part, traits) for part in _trait_parts(rule.condition))]


def _trait_parts(condition: Condition) -> tuple[TraitCondition, ...]:
    """The trait conditions that must hold for ``condition`` to hold: itself when it is
    one, the trait parts of an ``all``, else none."""
    if isinstance(condition, TraitCondition):
        return (condition,)
    if isinstance(condition, AllOf):
        return tuple(part for part in condition.conditions if isinstance(part, TraitCondition))
    return ()
