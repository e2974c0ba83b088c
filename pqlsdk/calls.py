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
    """A validated ``track``/``identify``/``group`` call, ready to be applied: a track's
    properties as ``data_json``, traits as ``data``."""

    kind: str
    user_id: str
    at: datetime
    account_id: str | None
    event: str = ""
    data: dict[str, Any] = {}  # noqa: RUF012 - never mutated
    data_json: str = "{}"
    message_id: str | None = None


def prepare_track(user_id: Any, event: Any, properties: Any = None, *,
                  account_id: Any = None, timestamp: Any = None, message_id: Any = None
                  ) -> Call:
    """A validated ``track`` call."""
    # validation.moment(), inlined: the hot path
    at = now() if timestamp is None else coerce(timestamp)
    text = validation.json_object("properties", properties)
    return Call("track", validation.identifier("user_id", user_id), at,
                validation.optional_identifier("account_id", account_id),
                event=validation.identifier("event", event), data_json=text,
                message_id=validation.optional_identifier("message_id", message_id))


def prepare_identify(user_id: Any, traits: Any = None, *, account_id: Any = None,
                     timestamp: Any = None) -> Call:
    """A validated ``identify`` call."""
    at = validation.moment(timestamp)
    return Call("identify", validation.identifier("user_id", user_id), at,
                validation.optional_identifier("account_id", account_id),
                data=json.loads(validation.json_object("traits", traits)))


def prepare_group(user_id: Any, account_id: Any, traits: Any = None, *,
                  timestamp: Any = None) -> Call:
    """A validated ``group`` call."""
    at = validation.moment(timestamp)
    return Call("group", validation.identifier("user_id", user_id), at,
                validation.identifier("account_id", account_id),
                data=json.loads(validation.json_object("traits", traits)))


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
