"""Composite keys built from an unambiguous encoding: qualification ids and rule-name lists.

A composite key must never let two different tuples of parts give one key. Release 1 joined
the parts of a qualification id with ``\\x1f``, which is unambiguous only while no part holds
``\\x1f`` itself: user ``u\\x1f1`` in round 0 and user ``u`` in round 1 gave one id, and the
second qualification was lost on the primary key. Ids are now:

- the **legacy** form, ``uuid5(rule \\x1f subject_type \\x1f subject_id [\\x1f round])``, when
  no part holds ``\\x1f`` and the qualification is a first firing (``firing=0``): every id recorded
  before stays the same (a shadow rule's in a namespace of its own, as issue 12 made it);
- otherwise the **JSON** form, ``uuid5(json.dumps(["qualification", rule, subject_type,
  subject_id, round, firing, shadow]))``. ``json.dumps`` escapes every control character, so
  a JSON key holds no raw ``\\x1f`` while a legacy key always holds two: the two spaces are
  disjoint, and each is unambiguous on its own.

The migration ``store._unambiguous_qualification_ids`` moves stored qualifications whose parts hold
``\\x1f`` to the JSON form, so that no legacy id stays taken by a colliding tuple.
"""

from __future__ import annotations

import json
import uuid

_NAMESPACE = uuid.UUID("5b0c1c4e-7f7e-4a8e-9d55-2f1f6f1a9c3e")
#: Shadow qualifications' legacy-form ids come from a namespace of their own (issue 12).
_SHADOW_NAMESPACE = uuid.UUID("0d3c8f52-6a1e-4c1b-b7f4-9e2a5d6c8b10")
_SEPARATOR = "\x1f"


def qualification_id(
    rule: str,
    subject_type: str,
    subject_id: str,
    round_: int = 0,
    *,
    firing: int = 0,
    shadow: bool = False,
) -> str:
    """The stable, opaque id of a qualification (also its Segment ``messageId``): an
    unambiguous function of the rule, the subject, the round, the firing and ``shadow``.

    >>> qualification_id("team_activation", "user", "ada")
    '3ed980f8-d6fa-53dc-adb8-c763b259e5a7'

    New ids and names cannot hold NUL (SPEC §13: the edge refuses it), but a subject
    stored by release 1 may; its id is computed like any other, so that ``evaluate()``
    still qualifies it.
    """
    parts = (rule, subject_type, subject_id)
    if firing == 0 and not any(_SEPARATOR in part for part in parts):
        key = _SEPARATOR.join(parts)
        return str(uuid.uuid5(_SHADOW_NAMESPACE if shadow else _NAMESPACE,
                              key if round_ == 0 else f"{key}\x1f{round_}"))
    return json_form_id(rule, subject_type, subject_id, round_, firing=firing, shadow=shadow)


def json_form_id(rule: str, subject_type: str, subject_id: str, round_: int = 0, *,
                 firing: int = 0, shadow: bool = False) -> str:
    """The JSON form of :func:`qualification_id`, whatever the parts hold (the migration gives
    it to stored rows whose legacy id was ambiguous)."""
    key = json.dumps(["qualification", rule, subject_type, subject_id, round_, firing,
                      bool(shadow)])
    return str(uuid.uuid5(_NAMESPACE, key))


def decode_names(text: str | None) -> frozenset[str | tuple[str]]:
    """The rules a subject met this round, from the JSON array SQLite's ``json_group_array``
    builds (a live rule as its name, a shadow rule as ``[name]``, read as ``(name,)``):
    unambiguous whatever the names hold."""
    if not text or text == "[]":
        return frozenset()
    return frozenset(tuple(item) if isinstance(item, list) else item
                     for item in json.loads(text))
