"""Identities: link an id to a user (Segment's ``alias``; an ``identify`` that names both a
user id and an anonymous id), merging what was recorded under the previous id into the user.

What the previous id recorded counts for the user from then on (SPEC §11): its events,
traits (the user's win where both have one), history and qualifications join the user's;
the previous subject does not remain a separate lead (the user keeps its account); the
later of the two stages stands
(the user's stays when sales put it in a side state); a rule both had met stays one
qualification, the earlier. Later calls under the previous id are recorded for the user.

    >>> linked = link(tx, "anon-7f3", "ada", ts)
    >>> linked.stage_change
    StageChange(subject_type='user', subject_id='ada', from_stage='lead', to_stage='mql', ...)
"""

from __future__ import annotations

import json
from typing import NamedTuple

from .errors import ValidationError
from .models import StageChange
from .stages import SIDE_STATES, rank
from .store import Transaction
from .timestamps import from_micros

#: The history source of a stage move made by merging two subjects.
ALIAS_SOURCE = "alias"


class Linked(NamedTuple):
    """What :func:`link` did: the user the previous id now counts for, whether two
    subjects were merged, and the user's stage move it caused (or None)."""

    user_id: str
    merged: bool
    stage_change: StageChange | None = None


def canonical(tx: Transaction, user_id: str) -> str:
    """The user an id counts for: the user it was linked to, else itself."""
    return tx.alias_of(user_id) or user_id


def resolve(tx: Transaction, subject_type: str, subject_id: str) -> str:
    """The subject a read about ``subject_id`` is about: for a user, the user the id was
    linked to (an aliased previous id, a linked anonymous id), as Segment and PostHog
    resolve an alias; an account id is itself."""
    return canonical(tx, subject_id) if subject_type == "user" else subject_id


def link(tx: Transaction, previous: str, user_id: str, ts: int) -> Linked:
    """Link ``previous`` to ``user_id`` (to the user ``user_id`` counts for) inside ``tx``;
    idempotent. Raises :class:`ValidationError` when ``previous`` already counts for
    another user, or is that user itself."""
    target = canonical(tx, user_id)
    root = tx.alias_of(previous)
    if root is not None:
        if root == target:
            return Linked(target, False)
        raise ValidationError(f"{previous!r} is already linked to user {root!r}; an id "
                              f"counts for one user")
    if previous == target:
        raise ValidationError(f"{user_id!r} already counts for {previous!r}: nothing to link")
    tx.lock_subjects(previous, None)
    tx.lock_subjects(target, None)
    old, new = tx.user_row(previous), tx.user_row(target)
    tx.add_alias(previous, target, ts)
    if old is None:
        return Linked(target, False)
    if new is None:  # the user takes over the previous subject as it is
        tenants = tx.rename_user(previous, target)
        tx.move_user_rows(previous, target, None, tenants)
        return Linked(target, True)
    _keep_earlier_qualifications(tx, previous, target)
    traits = {**json.loads(old["traits"] or "{}"), **json.loads(new["traits"] or "{}")}
    tenants = tx.merge_user_row(previous, target, json.dumps(traits, sort_keys=True))
    tx.move_user_rows(previous, target, merged_round(new["stage"], new["round"]), tenants)
    tx.lock_subjects(target, None)  # the call goes on in the user's tenant
    stage = merged_stage(old["stage"], new["stage"])
    # sales settled the user (sql or later, or a side state): what the previous id
    # qualified for is settled with it, as a stage move settles it
    tx.settle_handoffs("user", target, stage)
    if stage == new["stage"]:
        return Linked(target, True)
    reason = f"alias of {previous}"
    tx.change_stage("user", target, new["stage"], stage, ts, ALIAS_SOURCE, reason)
    return Linked(target, True, StageChange("user", target, new["stage"], stage,
                                            from_micros(ts), ALIAS_SOURCE, reason))


def merged_round(user_stage: str, user_round: int) -> int:
    """The round the previous id's qualifications join: the user's current one, or, for a
    user sales put in a side state, the round that move closed (they are not live in the
    round after a rejection; sales judged the person already)."""
    return user_round - 1 if user_stage in SIDE_STATES else user_round


def merged_stage(previous: str, user: str) -> str:
    """The stage of two merged subjects: the user's when sales put it in a side state,
    else the later of the two ordered stages (a side state of the previous subject does
    not carry over onto a user sales has not judged)."""
    if user in SIDE_STATES or previous in SIDE_STATES:
        return user
    return previous if rank(previous) > rank(user) else user


def _keep_earlier_qualifications(tx: Transaction, previous: str, user_id: str) -> None:
    """For each rule both met, drop the qualifications of the one that met it later."""
    firsts: dict[tuple[str, int], dict[str, int]] = {}
    for subject_id, rule, shadow, first in tx.rule_firsts((previous, user_id)):
        firsts.setdefault((rule, int(shadow)), {})[subject_id] = first
    for (rule, shadow), times in firsts.items():
        if len(times) == 2:
            later = previous if times[previous] >= times[user_id] else user_id
            tx.drop_qualifications(later, rule, shadow)
