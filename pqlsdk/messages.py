"""Every Segment payload pqlsdk sends, built in one place: a qualification's
``track("Lead Qualified")``, a stage change's ``identify`` (and ``group``), and a mirrored
``track``/``identify``/``group`` call (``forward_events=True``).

Messages of a mirrored call or a stage change are built when the outbox row is written; a
qualification's are built from the stored qualification when it is delivered. Either way a
retry sends the very same messages, ``messageId`` included.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from segment.analytics.version import VERSION as SEGMENT_VERSION

from .calls import Call
from .models import Qualification, StageChange

#: The Segment event a qualification is forwarded as.
QUALIFIED_EVENT = "Lead Qualified"


def _message(kind: str, user_id: str, timestamp: str, message_id: str,
             account_id: str | None, **fields: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"library": {"name": "analytics-python",
                                           "version": SEGMENT_VERSION}}
    if account_id is not None:
        context["groupId"] = account_id
    return {"type": kind, "userId": user_id, "timestamp": timestamp, "messageId": message_id,
            "context": context, "integrations": {}, **fields}


def qualification_messages(q: Qualification) -> list[dict[str, Any]]:
    """What Segment receives for a qualification: ``track("Lead Qualified")`` with the
    qualification id as ``messageId`` and ``qualified_at`` as its timestamp."""
    properties = {
        "rule": q.rule,
        "stage": q.stage,
        "subject_type": q.subject_type,
        "subject_id": q.subject_id,
        "account_id": q.account_id,
        "qualification_id": q.id,
        "qualified_at": q.qualified_at.isoformat(),
    }
    return [_message("track", q.user_id, q.qualified_at.isoformat(timespec="milliseconds"),
                     q.id, q.account_id, event=QUALIFIED_EVENT, properties=properties)]


def stage_messages(change: StageChange, user_id: str, account_id: str | None,
                   message_id: str) -> list[dict[str, Any]]:
    """What Segment receives when a subject changes stage: ``identify(user_id,
    {"lifecycle_stage": stage})``, and for an account also ``group`` with the same trait."""
    at = change.at.isoformat(timespec="milliseconds")
    traits = {"lifecycle_stage": change.to_stage}
    messages = [_message("identify", user_id, at, derived_id(message_id, "identify"),
                         account_id, traits=traits)]
    if change.subject_type == "account":
        messages.append(_message("group", user_id, at, derived_id(message_id, "group"),
                                 account_id, groupId=change.subject_id, traits=traits))
    return messages


def event_message(kind: str, user_id: str, timestamp: str, message_id: str,
                  account_id: str | None, **fields: Any) -> dict[str, Any]:
    """A ``track``/``identify``/``group`` message with pqlsdk's context."""
    return _message(kind, user_id, timestamp, message_id, account_id, **fields)


#: The context every message of pqlsdk's carries, as JSON text (before its ``groupId``).
_LIBRARY = json.dumps({"library": {"name": "analytics-python", "version": SEGMENT_VERSION}})
_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def event_message_text(user_id: str, timestamp: str, message_id: str,
                       account_id: str | None, event: str, properties: str) -> str:
    """The JSON text of the ``track`` message :func:`event_message` builds (the same keys,
    in the same order), from a stored event row: its ``properties`` are put in as stored
    (JSON text), so a mirrored track is not encoded again at delivery. They are parsed
    once, to be sure they are a JSON object: a damaged row raises here and fails alone,
    rather than making the whole batch's request invalid."""
    if not isinstance(json.loads(properties), dict):
        raise ValueError("the stored properties are not a JSON object")
    context = (_LIBRARY if account_id is None
               else f'{_LIBRARY[:-1]}, "groupId": {_string(account_id)}}}')
    return (f'{{"type": "track", "userId": {_string(user_id)}, '
            f'"timestamp": {_string(timestamp)}, "messageId": {_string(message_id)}, '
            f'"context": {context}, "integrations": {{}}, "event": {_string(event)}, '
            f'"properties": {properties}}}')


def call_message(call: Call, account_id: str | None) -> dict[str, Any]:
    """A mirrored ``track``/``identify``/``group``/``alias`` call (``forward_events=True``;
    a page or screen is mirrored as the track it is recorded as), as of ``account_id``
    (the account the call counted for), with the call's ids, ``context`` and
    ``integrations`` as given; a call without a ``message_id`` gets a new one."""
    fields: dict[str, Any] = (
        {"event": call.event, "properties": json.loads(call.data_json)}
        if call.kind == "track"
        else {"traits": call.data} if call.kind == "identify"
        else {"previousId": call.event} if call.kind == "alias"
        else {"groupId": account_id, "traits": call.data})
    message = event_message(call.kind, call.user_id,
                            call.at.isoformat(timespec="milliseconds"),
                            call.message_id or str(uuid.uuid4()), account_id, **fields)
    if call.anonymous_id is not None:
        message["anonymousId"] = call.anonymous_id
        if call.anonymous_id == call.user_id:  # before signup: no user id yet
            message["userId"] = None
    if call.context is not None:  # the call's own context, as given (with pqlsdk's library)
        message["context"] = {**message["context"], **json.loads(call.context)}
    if call.integrations is not None:
        message["integrations"] = json.loads(call.integrations)
    return message


def derived_id(base: str, purpose: str) -> str:
    """A stable id for a second message about the same thing (``identify`` after ``track``)."""
    return str(uuid.uuid5(uuid.UUID(base), purpose))
