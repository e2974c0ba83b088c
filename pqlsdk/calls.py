"""Calls: the named, validated form of a ``track``/``identify``/``group`` (and of an
imported stage change), built once at the edge and applied by :mod:`pqlsdk.engine`.

``prepare_*`` check every argument through :mod:`pqlsdk.validation` (raising
:class:`~pqlsdk.errors.ValidationError`) and write nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from . import validation
from .timestamps import coerce, now


class Call(NamedTuple):
    """A validated ``track``/``identify``/``group`` call (a ``page``/``screen`` is a
    ``track`` of the event ``page``/``screen``), or an ``alias`` (``event`` holds the
    previous id), ready to be applied: a track's properties as ``data_json``, traits as
    ``data``. ``user_id`` is the subject: the user id, else the anonymous id; an identify
    that names both links ``anonymous_id`` to the user. ``context`` and ``integrations``
    are Segment's, as JSON texts, kept and forwarded as given."""

    kind: str
    user_id: str
    at: datetime
    account_id: str | None
    event: str = ""
    data: dict[str, Any] = {}  # noqa: RUF012 - never mutated
    data_json: str = "{}"
    message_id: str | None = None
    anonymous_id: str | None = None
    context: str | None = None
    integrations: str | None = None
    #: No timestamp was given: ``at`` is when the call was made, and the engine takes the
    #: time again once it holds the subject's lock (so one subject's calls, from any
    #: thread or process, are in time order as they commit, each seeing those before it).
    stamped: bool = False


#: A track's ``data`` (its properties are ``data_json``): the field's default, shared.
_NO_DATA: dict[str, Any] = Call._field_defaults["data"]


def _who(user_id: Any, anonymous_id: Any) -> tuple[str, str | None]:
    """The subject of a call (the user id, else the anonymous id) and the anonymous id."""
    if user_id is None and anonymous_id is None:
        raise validation.ValidationError(
            "user_id must be a non-empty string (got None); pass user_id, or anonymous_id= "
            "for activity before signup")
    anonymous = validation.optional_identifier("anonymous_id", anonymous_id)
    if user_id is None:
        assert anonymous is not None
        return anonymous, anonymous
    return validation.identifier("user_id", user_id), anonymous


def _extras(context: Any, integrations: Any) -> dict[str, Any]:
    """Segment's ``context`` and ``integrations`` of a call, as JSON texts (None: absent)."""
    return {"context": None if context is None
            else validation.json_object("context", context),
            "integrations": None if integrations is None
            else validation.json_object("integrations", integrations)}


def prepare_track(user_id: Any, event: Any, properties: Any = None, *,
                  account_id: Any = None, timestamp: Any = None, message_id: Any = None,
                  anonymous_id: Any = None, context: Any = None, integrations: Any = None
                  ) -> Call:
    """A validated ``track`` call."""
    # validation.moment(), inlined: the hot path
    at = now() if timestamp is None else coerce(timestamp)
    text = "{}" if properties is None else validation.json_object("properties", properties)
    if (user_id is not None and anonymous_id is None and context is None
            and integrations is None):
        # positional (keywords cost a NamedTuple a third more): kind, user_id, at,
        # account_id, event, data, data_json, message_id, anonymous_id, context,
        # integrations, stamped
        return Call("track", validation.identifier("user_id", user_id), at,
                    validation.optional_identifier("account_id", account_id),
                    validation.identifier("event", event), _NO_DATA, text,
                    validation.optional_identifier("message_id", message_id), None, None,
                    None, timestamp is None)
    subject, anonymous = _who(user_id, anonymous_id)
    return Call("track", subject, at, validation.optional_identifier("account_id", account_id),
                event=validation.identifier("event", event), data_json=text,
                message_id=validation.optional_identifier("message_id", message_id),
                anonymous_id=anonymous, stamped=timestamp is None,
                **_extras(context, integrations))


def prepare_page(kind: str, user_id: Any, name: Any = None, properties: Any = None, *,
                 category: Any = None, **options: Any) -> Call:
    """A validated ``page`` (or ``screen``) call: a ``track`` of the event ``page`` (or
    ``screen``) whose properties hold ``name`` and ``category`` (when given) beside the
    call's own, as Segment's page properties do."""
    if properties is not None and not isinstance(properties, dict):
        validation.json_object("properties", properties)  # raises, saying what is allowed
    merged = dict(properties or {})
    for key, value in (("name", name), ("category", category)):
        if value is not None:
            merged[key] = validation.free_text(key, value)
    return prepare_track(user_id, kind, merged, **options)


def prepare_identify(user_id: Any, traits: Any = None, *, account_id: Any = None,
                     timestamp: Any = None, message_id: Any = None, anonymous_id: Any = None,
                     context: Any = None, integrations: Any = None) -> Call:
    """A validated ``identify`` call; naming both ``user_id`` and ``anonymous_id`` links
    the anonymous id to the user."""
    at = validation.moment(timestamp)
    subject, anonymous = _who(user_id, anonymous_id)
    return Call("identify", subject, at,
                validation.optional_identifier("account_id", account_id),
                data=json.loads(validation.json_object("traits", traits)),
                message_id=validation.optional_identifier("message_id", message_id),
                anonymous_id=anonymous, stamped=timestamp is None,
                **_extras(context, integrations))


def prepare_group(user_id: Any, account_id: Any, traits: Any = None, *,
                  timestamp: Any = None, message_id: Any = None, context: Any = None,
                  integrations: Any = None) -> Call:
    """A validated ``group`` call."""
    at = validation.moment(timestamp)
    return Call("group", validation.identifier("user_id", user_id), at,
                validation.identifier("account_id", account_id),
                data=json.loads(validation.json_object("traits", traits)),
                message_id=validation.optional_identifier("message_id", message_id),
                stamped=timestamp is None, **_extras(context, integrations))


def prepare_alias(previous_id: Any, user_id: Any, *, timestamp: Any = None,
                  message_id: Any = None, context: Any = None, integrations: Any = None
                  ) -> Call:
    """A validated ``alias`` call: what was recorded under ``previous_id`` counts for
    ``user_id`` from then on (``event`` holds the previous id)."""
    at = validation.moment(timestamp)
    previous = validation.identifier("previous_id", previous_id)
    user = validation.identifier("user_id", user_id)
    if previous == user:
        raise validation.ValidationError(
            f"alias needs two different ids (got {previous!r} twice)")
    return Call("alias", user, at, None, event=previous,
                message_id=validation.optional_identifier("message_id", message_id),
                **_extras(context, integrations))


def prepare_stage(user_id: Any, account_id: Any, to_stage: Any, reason: Any = None, *,
                  timestamp: Any = None, criteria: Any = None) -> Call:
    """A validated manual stage change (an imported CRM line): a ``stage`` call of exactly
    one of a user or an account, its ``event`` the stage, its ``data`` the reason and the
    criteria (a JSON object, or None)."""
    subject_type, subject_id = validation.subject(user_id, account_id)
    data: dict[str, Any] = {"reason": validation.free_text("reason", reason)}
    if criteria is not None:
        data["criteria"] = json.loads(validation.json_object("criteria", criteria))
    return Call("stage", subject_id if subject_type == "user" else "",
                validation.moment(timestamp), subject_id if subject_type == "account" else None,
                event=validation.stage(to_stage), data=data)
