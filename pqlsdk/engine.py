"""The engine: apply one validated call to a store transaction and say what it produced.

Everything a ``track``/``identify``/``group``, a stage change or an evaluation does to the
store happens here, inside the caller's transaction: the subject rows, the event, the trait
merge, the rules the call can change (the event/trait -> rule index), each qualification
recorded once with its forward stage move, and the outbox rows for what must be delivered
after the commit. The :class:`~pqlsdk.Client` validates arguments, opens the transaction,
calls the engine and, after the commit, hands :attr:`Outcome.queued` to the delivery runtime.

Replay (the importer, and anything else feeding recorded calls) takes the same path as a live
call, through one entry point::

    outcome = engine.replay(tx, call, deliver=False)

``replay`` dispatches on ``call.kind``: ``track``/``identify``/``group`` go through
:meth:`Engine.apply`, ``stage`` (a CRM's stage change) through :meth:`Engine.move`. A new
kind of recorded line (an alias, a page or screen call) is one more ``kind`` and one more
branch here; a caller replaying many calls (a batch of one subject's calls in time order)
calls ``replay`` once per call inside one transaction and ORs :attr:`Outcome.queued`
(see :meth:`Outcome.merge`) to know whether to wake delivery after the commit.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from . import bulk
from .batchfacts import reaches
from .calls import Call
from .errors import UnknownSubject
from .evaluator import holds, measure
from .facts import EmptyFacts, Subject, SubjectFacts, load_subject, load_subjects
from .identities import canonical, link
from .messages import call_message
from .models import Qualification, StageChange, Status
from .outbox import Outbox, wall_micros
from .qualifier import done_key, qualify
from .rules import Rule, RuleSet
from .store import EVENT_REF_FORMAT, Transaction
from .timestamps import now, to_micros

#: A forward stage move and the qualification that caused it.
Move = tuple[StageChange, Qualification]


@attrs.frozen
class Outcome:
    """What applying one call (or a batch of them) produced, for the caller after commit."""

    #: New live qualifications, in the order they were recorded.
    qualifications: tuple[Qualification, ...] = ()
    #: Forward stage moves made by those qualifications.
    moves: tuple[Move, ...] = ()
    #: A stage change made by hand or by an imported stage line, if the stage changed.
    stage_change: StageChange | None = None
    #: Whether outbox rows were written (wake delivery after the commit).
    queued: bool = False
    #: False when the call was a duplicate (a ``message_id`` already stored): nothing done.
    applied: bool = True
    #: Of a batch of recorded tracks (:meth:`Engine.replay_tracks`), how many were
    #: duplicates (their message id stored already where their event goes).
    duplicates: int = 0

    def merge(self, other: Outcome) -> Outcome:
        """Both outcomes as one (for a batch applied in one transaction)."""
        return Outcome(self.qualifications + other.qualifications, self.moves + other.moves,
                       other.stage_change or self.stage_change, self.queued or other.queued,
                       self.applied or other.applied, self.duplicates + other.duplicates)


#: The outcome of a call that completed nothing (most calls): one shared frozen instance.
NOTHING = Outcome()


class Engine:
    """Apply validated calls to a store transaction under one :class:`RuleSet`.

    :param rules: the rules and scoring model.
    :param outbox: builds the outbox rows (its registered destinations decide which).
    :param forward_events: also write a row mirroring each track/identify/group to Segment.
    """

    def __init__(self, rules: RuleSet, outbox: Outbox, *, forward_events: bool = False) -> None:
        self.rules = rules
        self.outbox = outbox
        self.forward_events = forward_events
        self._by_subject = {
            kind: [r for r in rules.rules if r.subject == kind] for kind in ("user", "account")
        }
        self._by_event: dict[str, tuple[list[Rule], list[Rule]]] = {}
        for rule in rules.rules:
            for name in rules.events_of(rule):
                users, accounts = self._by_event.setdefault(name, ([], []))
                (users if rule.subject == "user" else accounts).append(rule)
        self._scoring = rules.scoring
        self._qualify = functools.partial(qualify, scoring=rules.scoring)
        self._reach = reaches(rules.rules)  # how far back a bulk segment's checks look
        #: Per subject type, the rules that hold on a subject with no events and no traits
        #: (``exists = false``, ``at_most``, ``not``): checked when a subject is first seen.
        empty = EmptyFacts(rules.scoring)
        self._first_seen = {kind: [r for r in found if holds(r.condition, empty)]
                            for kind, found in self._by_subject.items()}

    # -- recorded calls -------------------------------------------------------------------

    def replay(self, tx: Transaction, call: Call, *, deliver: bool = False) -> Outcome:
        """Apply one recorded call of any kind (``track``, ``identify``, ``group``,
        ``stage``) inside ``tx``, exactly as the live call would be. ``deliver=False`` (a
        backfill) writes no outbox rows."""
        if call.kind == "stage":
            return self.import_stage(tx, call, deliver=deliver)
        if call.kind == "alias":
            return self.alias(tx, call, deliver=deliver)
        return self.apply(tx, call, deliver=deliver)

    def apply(self, tx: Transaction, call: Call, *, deliver: bool = True) -> Outcome:
        """Record a validated track/identify/group call inside ``tx``: the subjects, the
        event or the merged traits, the qualifications it completes and, with ``deliver``,
        their outbox rows (and the mirrored call's, with ``forward_events``)."""
        ts = to_micros(call.at)
        given = call
        if call.kind == "alias":
            return self.alias(tx, call, deliver=deliver)
        if call.message_id is not None and call.kind != "track" and not tx.remember_call(
                call.message_id, call.user_id):
            return Outcome(applied=False)  # an identify/group seen before
        linked = None  # what linking an identify's anonymous id produced
        if (call.kind == "identify" and call.anonymous_id is not None
                and call.anonymous_id != call.user_id):
            linked = self._link(tx, call.anonymous_id, call.user_id, call.at, deliver)
        # an id linked to a user counts for that user
        counted_for = tx.lock_user(call.user_id, call.account_id)
        if counted_for != call.user_id:
            call = call._replace(user_id=counted_for)
        if call.stamped:  # now that the subject is locked (see Call.stamped)
            at = now()
            call, given, ts = call._replace(at=at), given._replace(at=at), to_micros(at)
        new: list[str] = []
        user, account = load_subjects(tx, call.user_id, call.account_id, ts, new)
        account_id = account.id if account else None
        moves: list[Move] = []
        # a mirrored track's outbox row refers to its event by message id (the event row
        # keeps the one generated for Segment when the call gave none), when the event row
        # holds the whole message: the call's own user id, no context, integrations or
        # anonymous id (else the row holds the message, as identify's and group's do), and
        # when every release that may read the outbox reads such rows
        mirror_id = (call.message_id or _new_id()) if (
            call.kind == "track" and self.forward_events and deliver
            and given.user_id == call.user_id and call.context is None
            and call.integrations is None and call.anonymous_id is None
            and self.outbox.event_refs(tx)) else None
        message_id = mirror_id or call.message_id
        if call.kind == "track":
            if call.context is None and call.integrations is None:
                inserted = tx.insert_event(message_id, call.user_id, account_id,
                                           call.event, ts, call.data_json)
            else:
                inserted = tx.insert_event_with(message_id, call.user_id, account_id,
                                                call.event, ts, call.data_json, call.context,
                                                call.integrations)
            if not inserted:
                return Outcome(applied=False)
            user_rules, account_rules = self._by_event.get(call.event, ((), ()))
            created = qualify(tx, user_rules, user, user_id=call.user_id,
                              account_id=account_id, at=call.at, moves=moves,
                              scoring=self._scoring, event=(call.event, call.data_json), ts=ts)
            if account is not None and account_rules:
                created += qualify(tx, account_rules, account, user_id=call.user_id,
                                   account_id=account_id, at=call.at, moves=moves,
                                   scoring=self._scoring, event=(call.event, call.data_json),
                                   ts=ts)
        elif call.kind == "identify":
            _keep_context(tx, call, account_id, ts)
            user, changed = merge_traits(tx, user, call.data, ts)
            created = self._qualify(tx, self.rules.reading_traits("user", changed), user,
                                    user_id=call.user_id, account_id=account_id, at=call.at,
                                    moves=moves)
        else:
            assert account is not None  # a group call always names its account
            _keep_context(tx, call, account_id, ts)
            account, changed = merge_traits(tx, account, call.data, ts)
            created = self._qualify(tx, self.rules.reading_traits("account", changed),
                                    account, user_id=call.user_id, account_id=account_id,
                                    at=call.at, moves=moves)
        if new:  # rules that hold on a subject first seen, whatever the call read
            created += self._check_first_seen(tx, new, call, account_id, moves)
        if not deliver or not (created or self.forward_events):
            return _with(linked, Outcome(tuple(created), tuple(moves)) if created or moves
                         else NOTHING)
        # a mirrored track by reference: its message is built from the event row at delivery
        message = (call_message(given, account_id)
                   if self.forward_events and mirror_id is None else None)
        queued = self._enqueue(tx, created, moves, call.kind, call.user_id, message)
        if mirror_id is not None:
            self.outbox.write(tx, [self.outbox.event_row(mirror_id, call.user_id,
                                                         wall_micros())],
                              payload_format=EVENT_REF_FORMAT)
            queued = True
        return _with(linked, Outcome(tuple(created), tuple(moves), queued=queued))

    def _check_first_seen(self, tx: Transaction, new: list[str], call: Call,
                          account_id: str | None, moves: list[Move]) -> list[Qualification]:
        created: list[Qualification] = []
        for kind in new:
            rules = self._first_seen[kind]
            if not rules:
                continue
            subject_id = call.user_id if kind == "user" else account_id
            assert subject_id is not None
            created += self._qualify(tx, rules, load_subject(tx, kind, subject_id),
                                     user_id=call.user_id, account_id=account_id,
                                     at=call.at, moves=moves)
        return created

    # -- identities -----------------------------------------------------------------------

    def alias(self, tx: Transaction, call: Call, *, deliver: bool = True) -> Outcome:
        """Record an ``alias`` (``event`` holds the previous id): link it to the user and
        merge what it recorded (see :mod:`pqlsdk.identities`)."""
        if call.message_id is not None and not tx.remember_call(call.message_id,
                                                                call.user_id):
            return Outcome(applied=False)
        outcome = self._link(tx, call.event, call.user_id, call.at, deliver)
        _keep_context(tx, call._replace(user_id=canonical(tx, call.user_id)), None,
                      to_micros(call.at))
        if deliver and self.forward_events:
            message = call_message(call, None)
            tx.enqueue([self.outbox.segment_row("alias", call.user_id, message,
                                                wall_micros())])
            outcome = outcome.merge(Outcome(queued=True))
        return outcome

    def _link(self, tx: Transaction, previous: str, user_id: str, at: datetime,
              deliver: bool) -> Outcome:
        """Link ``previous`` to ``user_id``; when two subjects merged, re-check the user's
        rules as of ``at`` (their events now count together) and write the outbox rows of
        what that and the merge's stage move produced."""
        linked = link(tx, previous, user_id, to_micros(at))
        if not linked.merged:
            return Outcome()
        account_id = tx.account_of(linked.user_id)
        moves: list[Move] = []
        created = self._qualify(tx, self._by_subject["user"],
                                load_subject(tx, "user", linked.user_id),
                                user_id=linked.user_id, account_id=account_id, at=at,
                                moves=moves)
        queued = False
        if deliver:
            queued = self._enqueue(tx, created, moves, "alias", linked.user_id, None)
            if linked.stage_change is not None:
                stamp = wall_micros()
                rows = self.outbox.hook_rows([(linked.stage_change, linked.user_id)], stamp)
                rows += self.outbox.stage_rows(
                    [(linked.stage_change, linked.user_id, account_id, _new_id())], stamp)
                if rows:
                    tx.enqueue(rows)
                    queued = True
        return Outcome(tuple(created), tuple(moves), linked.stage_change, queued)

    # -- bulk ----------------------------------------------------------------------------

    def replay_tracks(self, tx: Transaction, tracks: Sequence[bulk.Track], *,
                      deliver: bool = False) -> Outcome:
        """Record recorded track calls (in time order) in bulk: their events in one
        statement, then only the rules each can change, in time order, with the same result
        as :meth:`replay` of each (see :mod:`pqlsdk.bulk`); one whose message id is stored
        already is a duplicate (counted in ``duplicates``), as the live call's would be."""
        result = bulk.apply_tracks(
            tx, bulk.Rules(self._by_event, self._qualify, self._first_seen, self._reach), tracks)
        queued = deliver and self._enqueue(tx, result.qualifications, result.moves,
                                           "evaluate", "", None)
        return Outcome(tuple(result.qualifications), tuple(result.moves), queued=queued,
                       duplicates=len(result.duplicates))

    # -- stages ---------------------------------------------------------------------------

    def set_stage(self, tx: Transaction, subject_type: str, subject_id: str, stage: str,
                  at: datetime, reason: str | None, *, create: bool = False,
                  criteria: str | None = None) -> Outcome:
        """Move a subject to ``stage`` by hand (history source ``manual``), locking it first;
        its Segment row is written when it has a user to send it as. A subject never seen
        raises :class:`UnknownSubject` unless ``create``; ``criteria`` is a JSON object."""
        if subject_type == "user":
            tx.lock_subjects(subject_id, None)
        else:
            tx.lock_subject("account", subject_id)
        if not create and tx.subject_snapshot(subject_type, subject_id) is None:
            raise UnknownSubject(
                f"no {subject_type} {subject_id!r} has been seen; set_stage(..., "
                f"create=True) records it first (as a lead, then moves it)")
        return self.move(tx, subject_type, subject_id, stage, at, reason, "manual",
                         criteria=None if criteria is None else json.loads(criteria))

    def import_stage(self, tx: Transaction, call: Call, *, deliver: bool = True) -> Outcome:
        """Record an imported stage change (``call.kind == "stage"``: ``event`` holds the
        stage, ``data`` the reason; a user's when ``user_id`` is set, else the account's),
        history source ``import``."""
        if call.user_id:
            subject_type, subject_id = "user", call.user_id
        else:
            assert call.account_id is not None  # the importer checked it
            subject_type, subject_id = "account", call.account_id
        return self.move(tx, subject_type, subject_id, call.event, call.at,
                         call.data.get("reason"), "import", deliver=deliver,
                         criteria=call.data.get("criteria"))

    def move(self, tx: Transaction, subject_type: str, subject_id: str, stage: str,
             at: datetime, reason: str | None, source: str, *, deliver: bool = True,
             criteria: dict[str, Any] | None = None) -> Outcome:
        """Move a subject (created if new) to ``stage`` in any direction, recording the
        change with ``source`` (and sales' ``criteria``); nothing when it already is there.
        With ``deliver``, the stage hooks get the change and Segment its lifecycle stage."""
        ts = to_micros(at)
        if subject_type == "user":
            subject = load_subjects(tx, subject_id, None, ts)[0]
            member: str | None = subject_id
            account = tx.account_of(subject_id)
        else:
            tx.add_account(subject_id, ts)
            subject = load_subject(tx, "account", subject_id)
            member, account = tx.latest_user(subject_id, ts), subject_id
        if subject.stage == stage:
            return Outcome()
        tx.change_stage(subject_type, subject_id, subject.stage, stage, ts, source, reason,
                        None if criteria is None else json.dumps(criteria, sort_keys=True))
        change = StageChange(subject_type, subject_id, subject.stage, stage, at, source,
                             reason, criteria)
        rows = []
        if deliver:
            stamp = wall_micros()
            rows = self.outbox.hook_rows([(change, member)], stamp)
            if member is not None:
                rows += self.outbox.stage_rows([(change, member, account, _new_id())], stamp)
        if rows:
            self.outbox.write(tx, rows)
        return Outcome(stage_change=change, queued=bool(rows))

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(self, tx: Transaction, subjects: Iterable[tuple[str, str]], at: datetime
                 ) -> Outcome:
        """Re-check each ``(subject type, id)`` against every rule it has not met, as of
        ``at`` (each subject locked first); qualifications found are dated ``at``."""
        until = to_micros(at)
        found: list[Qualification] = []
        moves: list[Move] = []
        for subject_type, subject_id in subjects:
            tx.lock_subject(subject_type, subject_id)
            found += self._evaluate_subject(tx, subject_type, subject_id, at, until, moves)
        queued = self._enqueue(tx, found, moves, "evaluate", "", None)
        return Outcome(tuple(found), tuple(moves), queued=queued)

    def _evaluate_subject(self, tx: Transaction, subject_type: str, subject_id: str,
                          at: datetime, until: int, moves: list[Move]) -> list[Qualification]:
        rules = self._by_subject[subject_type]
        if not rules:
            return []
        user_id: str | None
        account_id: str | None
        if subject_type == "user":
            user_id, account_id = subject_id, tx.account_of(subject_id)
        else:
            user_id, account_id = tx.latest_user(subject_id, until), subject_id
            if user_id is None:
                return []
        return self._qualify(tx, rules, load_subject(tx, subject_type, subject_id),
                             user_id=user_id, account_id=account_id, at=at, moves=moves)

    def status(self, tx: Transaction, subject_type: str, subject_id: str, until: int
               ) -> Status:
        """Where a known subject stands: stage, qualifications, and progress (as of
        ``until``) on each rule it may still meet this round."""
        subject = known_subject(tx, subject_type, subject_id)
        found = tuple(Qualification.from_row(r) for r in
                      tx.qualifications(subject=(subject_type, subject_id), shadow=False))
        facts = SubjectFacts(tx, subject, until, self.rules.scoring)
        progress = {  # the rules it may still meet this round
            rule.name: measure(rule.condition, facts)
            for rule in self._by_subject[subject_type]
            if done_key(rule) not in subject.done
        }
        return Status(subject_type, subject_id, subject.stage, found, progress)

    # -- outbox ---------------------------------------------------------------------------

    def _enqueue(self, tx: Transaction, created: list[Qualification], moves: list[Move],
                 kind: str, user_id: str, mirror: dict[str, Any] | None) -> bool:
        """Write the outbox rows for this call in its transaction; True if there were any."""
        if not (created and self.outbox.sinks) and mirror is None:
            return False
        stamp = wall_micros()
        rows = []
        if created:
            moved = {q.id: change for change, q in moves}
            rows = self.outbox.qualification_rows(created, moved, stamp)
            rows += self.outbox.hook_rows([(change, q.user_id) for change, q in moves], stamp)
        if mirror is not None:
            rows.append(self.outbox.segment_row(kind, user_id, mirror, stamp))
        if rows:
            self.outbox.write(tx, rows)
        return bool(rows)


def _with(linked: Outcome | None, outcome: Outcome) -> Outcome:
    """``outcome`` after what linking an anonymous id produced, if anything was linked."""
    return outcome if linked is None else linked.merge(outcome)


def _keep_context(tx: Transaction, call: Call, account_id: str | None, ts: int) -> None:
    """Keep an identify/group/alias call's Segment ``context`` and ``integrations`` (when
    it carried either) for the user it counted for, as events keep a track's."""
    if call.context is not None or call.integrations is not None:
        tx.insert_call_context(call.kind, call.user_id, account_id, call.message_id, ts,
                               call.context, call.integrations)


def known_subject(tx: Transaction, subject_type: str, subject_id: str) -> Subject:
    """A subject that has been seen; raises :class:`UnknownSubject` otherwise. The
    transaction is bound to its tenant from here (what follows reads this subject)."""
    tx.enter(subject_type, subject_id)
    row = tx.subject_snapshot(subject_type, subject_id)
    if row is None:
        raise UnknownSubject(f"no {subject_type} {subject_id!r} has been seen")
    return Subject.from_row(subject_type, subject_id, row)


def merge_traits(tx: Transaction, subject: Subject, traits: dict[str, Any], ts: int
                 ) -> tuple[Subject, set[str]]:
    """Merge ``traits`` into the subject's (null removes one), keeping each change in its
    trait history at ``ts``; return it and what changed."""
    old = json.loads(subject.traits_json)
    changed = {k for k, v in traits.items() if old.get(k) != v}
    if not changed:
        return subject, changed
    merged = {k: v for k, v in {**old, **traits}.items() if v is not None}
    text = json.dumps(merged, sort_keys=True)
    tx.set_traits(subject.type, subject.id, text)
    tx.record_traits(subject.type, subject.id,
                     [(k, None if traits[k] is None else json.dumps(traits[k], sort_keys=True))
                      for k in sorted(changed)], ts)
    return subject._replace(traits_json=text), changed


def _new_id() -> str:
    return str(uuid.uuid4())
