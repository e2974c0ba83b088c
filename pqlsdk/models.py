"""The values pqlsdk hands back to the application: small, frozen, comparable."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, NamedTuple

import attrs

from .evaluator import Measurement
from .timestamps import from_micros, to_micros


def json_default(value: Any) -> str:
    """``json.dumps(default=...)`` for what applications put in properties: datetimes."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: Columns of a qualification's row that are not fields of :class:`Qualification`.
_STORE_ONLY = frozenset({"round", "firing", "tenant_key"})


@attrs.frozen
class Qualification:
    """A subject met a rule; recorded once, with the evidence of that moment.

    ``id`` is stable (derived from the rule and the subject) and is the Segment ``messageId``;
    ``user_id`` is the user whose call completed the rule; ``qualified_at`` the timestamp of
    the completing event (or of the ``evaluate(as_of=...)`` that found it).
    ``rule_version`` is the fingerprint of the rule's definition that fired it (None for
    qualifications recorded before versions were kept); ``shadow`` marks a shadow rule's,
    which moves no stage and is never delivered.
    """

    id: str
    rule: str
    stage: str
    subject_type: str
    subject_id: str
    user_id: str
    account_id: str | None
    qualified_at: datetime
    evidence: Measurement
    rule_version: str | None = None
    shadow: bool = False

    def to_row(self) -> dict[str, Any]:
        """The store's row for this qualification."""
        row = attrs.asdict(self, recurse=False)
        row["qualified_at"] = to_micros(self.qualified_at)
        row["evidence"] = json.dumps(self.evidence.to_dict())
        row["shadow"] = int(self.shadow)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Qualification:
        """The inverse of :meth:`to_row` (store-only columns such as ``round``, ``firing``
        and ``tenant_key`` are dropped)."""
        values = {k: v for k, v in row.items() if k not in _STORE_ONLY}
        values["qualified_at"] = from_micros(row["qualified_at"])
        values["evidence"] = Measurement.from_dict(json.loads(row["evidence"]))
        values["shadow"] = bool(row.get("shadow", False))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``qualified_at`` as ISO-8601)."""
        out = attrs.asdict(self, recurse=False)
        out["qualified_at"] = self.qualified_at.isoformat()
        out["evidence"] = self.evidence.to_dict()
        return out


@attrs.frozen
class Status:
    """Where a subject stands: its stage, its qualifications and its progress.

    ``progress`` maps each rule not yet met to its measurement: every condition's measured
    value against its bound.
    """

    subject_type: str
    subject_id: str
    stage: str
    qualifications: tuple[Qualification, ...]
    progress: dict[str, Measurement]


@attrs.frozen
class StageChange:
    """One move in a subject's lifecycle.

    ``source`` is ``rule:NAME`` (a qualification moved it), ``manual`` (``set_stage``),
    ``import`` (a stage line of ``pqlsdk import``, a CRM's verdict) or ``first_seen`` (the
    subject became a ``lead`` when pqlsdk first saw it). ``criteria``: sales' structured
    reasons beside ``reason`` (``{"budget": False, "authority": True}``), or None.
    """

    subject_type: str
    subject_id: str
    from_stage: str | None
    to_stage: str
    at: datetime
    source: str
    reason: str | None = None
    criteria: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StageChange:
        """Build from a ``stage_changes`` row."""
        criteria = row.get("criteria")
        return cls(row["subject_type"], row["subject_id"], row["from_stage"], row["to_stage"],
                   from_micros(row["at"]), row["source"], row["reason"],
                   None if criteria is None else json.loads(criteria))

    def to_payload(self) -> dict[str, Any]:
        """The change as an outbox row holds it (``at`` in microseconds)."""
        row = attrs.asdict(self, recurse=False)
        row["at"] = to_micros(self.at)
        return row

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> StageChange:
        """The inverse of :meth:`to_payload`."""
        return cls(**{**payload, "at": from_micros(payload["at"])})


class Overdue(NamedTuple):
    """A qualified lead that sales has neither accepted (moved to ``sql`` or later) nor
    rejected (``unqualified``/``disqualified``) within ``[lifecycle] accept_within``.

    ``stage`` is the subject's stage when it was found overdue; ``qualified_at`` and
    ``rule`` are the qualification's, ``qualification_id`` its id; ``due_at`` is when
    the deadline passed. (A NamedTuple: ``overdue()`` builds one per waiting lead, and a
    tuple costs a fifth of a frozen class to make.)
    """

    subject_type: str
    subject_id: str
    stage: str
    qualified_at: datetime
    rule: str
    qualification_id: str
    due_at: datetime

    def to_payload(self) -> dict[str, Any]:
        """As an outbox row holds it (times in microseconds)."""
        row = self._asdict()
        row["qualified_at"] = to_micros(self.qualified_at)
        row["due_at"] = to_micros(self.due_at)
        return row

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Overdue:
        """The inverse of :meth:`to_payload`."""
        return cls(**{**payload, "qualified_at": from_micros(payload["qualified_at"]),
                      "due_at": from_micros(payload["due_at"])})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (times as ISO-8601)."""
        out = self._asdict()
        out["qualified_at"] = self.qualified_at.isoformat()
        out["due_at"] = self.due_at.isoformat()
        return out
