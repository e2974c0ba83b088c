"""The edge: validate the arguments of a public call (:mod:`pqlsdk.calls` builds its
named :class:`~pqlsdk.calls.Call` from them).

Every public entry point (the Client's methods, the importer through ``prepare_*``, the
command line through the Client) checks its arguments here before anything is written, so
bad input is refused as one :class:`~pqlsdk.errors.ValidationError` naming the argument,
what was given and what is allowed. The limits, also in the README's "Limits":

- **Ids and names** (user, account, event, message id, rule, trait, property names): strings
  (ids may also be integers) of 1 to :data:`MAX_ID_LENGTH` characters, not only spaces,
  valid Unicode (no lone surrogate, which UTF-8 and SQLite cannot hold) and without NUL
  (U+0000, SPEC §13). Every other character is allowed: control characters and
  non-BMP characters included.
- **Free text** (a stage change's ``reason``): the same, up to :data:`MAX_TEXT_LENGTH`
  characters, empty allowed.
- **JSON values** (``properties``, ``traits``): a dict with string keys of JSON values
  (datetimes become ISO-8601 strings), at most :data:`MAX_JSON_DEPTH` levels deep, at most
  :data:`MAX_JSON_BYTES` bytes as JSON, numbers finite, text without NUL or lone
  surrogates.
- **Timestamps**: :data:`~pqlsdk.timestamps.MIN_TIME` to :data:`~pqlsdk.timestamps.MAX_TIME`
  after the offset is applied (see :func:`pqlsdk.timestamps.coerce`).

The limits themselves are in :mod:`pqlsdk.limits`; rules are checked by their loader.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from .errors import ValidationError
from .limits import (
    MAX_ID_LENGTH,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_TEXT_LENGTH,
    shown,
    text_problem,
)
from .models import json_default
from .stages import SIDE_STATES, STAGES
from .timestamps import coerce, now

SUBJECT_TYPES = ("user", "account")


# --- text ---------------------------------------------------------------------------------


def identifier(name: str, value: Any) -> str:
    """An id or a name: a non-empty string (or an integer, stored as its decimal string) of
    at most :data:`MAX_ID_LENGTH` valid characters without NUL."""
    if type(value) is str and value and len(value) <= MAX_ID_LENGTH and value.isascii() \
            and "\x00" not in value and not value.isspace():
        return value  # the common case, as cheap as it gets
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 3 * MAX_ID_LENGTH:  # str() of a huge int is refused anyway
            raise ValidationError(
                f"{name} must be at most {MAX_ID_LENGTH} characters (got {shown(value)})")
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string (got {shown(value)})")
    problem = text_problem(value, MAX_ID_LENGTH)
    if problem:
        raise ValidationError(f"{name} {problem}")
    return value


def optional_identifier(name: str, value: Any) -> str | None:
    """:func:`identifier`, or None."""
    return None if value is None else identifier(name, value)


def free_text(name: str, value: Any) -> str | None:
    """Optional free text of at most :data:`MAX_TEXT_LENGTH` characters (a ``reason``)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string (got {shown(value)})")
    problem = text_problem(value, MAX_TEXT_LENGTH)
    if problem:
        raise ValidationError(f"{name} {problem}")
    return value


# --- JSON ---------------------------------------------------------------------------------


#: ``json.dumps(value, default=json_default, allow_nan=False, sort_keys=True)``, made once
#: (``json.dumps`` with arguments builds a new encoder per call).
_ENCODER = json.JSONEncoder(default=json_default, allow_nan=False, sort_keys=True)
#: The same encoder's C core without its check for circular references, made once: for a
#: value parsed from JSON text (which cannot hold a cycle nor be shared with another
#: thread), as an import's properties are. None where Python has no C speedups.
_PARSED = (c_make_encoder(None, json_default, encode_basestring_ascii, None, ": ", ", ", True,
                          False, False) if c_make_encoder is not None else None)


def json_object(name: str, value: Any, *, parsed: bool = False) -> str:
    """``properties``/``traits`` as the JSON text to store (``"{}"`` for None); ``parsed``
    says ``value`` came from ``json.loads`` (so it holds no cycle): the same text and the
    same errors, with less work."""
    if value is None or (type(value) is dict and not value):
        return "{}"
    if not isinstance(value, dict):
        raise ValidationError(
            f"{name} must be a dict of JSON values (got {type(value).__name__}: "
            f"{shown(value)})")
    try:
        text = ("".join(_PARSED(value, 0)) if parsed and _PARSED is not None
                else _ENCODER.encode(value))
    except RecursionError:
        raise ValidationError(
            f"{name} must be at most {MAX_JSON_DEPTH} levels deep (got a deeper value)"
        ) from None
    except (TypeError, ValueError) as exc:
        # name the culprit precisely when the walk can; else say what json said
        _check_json(name, value, strings=True)
        raise ValidationError(f"{name} must be a dict of JSON values: {exc}") from None
    if len(text) > MAX_JSON_BYTES:
        raise ValidationError(
            f"{name} must be at most {MAX_JSON_BYTES} bytes as JSON (got {len(text)})")
    # Without "\u" escapes the text holds no NUL, no surrogate (nor any non-ASCII): only
    # the key types and (when brackets say it could be deep) the depth are left to check.
    strings = "\\u" in text
    if strings or text.count("{") + text.count("[") > MAX_JSON_DEPTH or _nested(value):
        _check_json(name, value, strings=strings)
    return text


def _nested(value: dict[str, Any]) -> bool:
    """Whether a dict holds containers or non-string keys (the flat, string-keyed case is
    checked by json.dumps alone)."""
    for key, item in value.items():
        if type(key) is not str or isinstance(item, dict | list | tuple):
            return True
    return False


def _check_json(name: str, root: Any, *, strings: bool) -> None:
    """Walk a JSON value without recursion: string keys, depth, finite numbers, and (with
    ``strings``) text without NUL or lone surrogates; raise naming the path."""
    stack: list[tuple[Any, str, int]] = [(root, name, 1)]

    def refuse(path: str, problem: str) -> ValidationError:
        return ValidationError(f"{name} must be a dict of JSON values: {path} {problem}")

    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise ValidationError(f"{name} must be at most {MAX_JSON_DEPTH} levels deep "
                                      f"(got deeper at {path})")
            short = len(path) < 200  # a path is named up to a point, then its start stands
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise refuse(path, f"keys must be strings (got {shown(key)} of type "
                                           f"{type(key).__name__})")
                    problem = strings and text_problem(key, MAX_TEXT_LENGTH)
                    if problem:
                        raise refuse(f"{path} key", problem)
                    stack.append((item, f"{path}[{shown(key, 40)}]" if short else path,
                                  depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]" if short else path, depth + 1)
                             for i, item in enumerate(value))
        elif isinstance(value, str):
            problem = strings and text_problem(value, MAX_JSON_BYTES)
            if problem:
                raise refuse(path, problem)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise refuse(path, f"must be a finite number (got {value!r})")
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                str(value)
            except ValueError:  # over Python's limit of digits for int-to-text
                raise refuse(path, f"is too large a number to write (got {shown(value)})"
                             ) from None
        elif value is not None and not isinstance(value, bool):
            try:
                json_default(value)
            except TypeError:
                raise refuse(path, f"must be a string, number, boolean, null, list, dict or "
                                   f"datetime (got {shown(value)} of type "
                                   f"{type(value).__name__})") from None


# --- the calls ----------------------------------------------------------------------------


def moment(value: Any, name: str = "timestamp") -> datetime:
    """A timestamp argument (None = now), as an aware UTC datetime within the store's range."""
    return now() if value is None else coerce(value, name)


def subject(user_id: Any, account_id: Any) -> tuple[str, str]:
    """``("user", id)`` or ``("account", id)`` from exactly one of the two arguments."""
    if (user_id is None) == (account_id is None):
        raise ValidationError("pass exactly one of user_id or account_id=")
    if user_id is not None:
        return "user", identifier("user_id", user_id)
    return "account", identifier("account_id", account_id)


def subject_type(value: Any, name: str = "subject") -> str:
    """``"user"`` or ``"account"``."""
    if value not in SUBJECT_TYPES:
        raise ValidationError(f"{name} must be 'user' or 'account' (got {shown(value)})")
    return str(value)


def stage(value: Any) -> str:
    """One of the stages or side states."""
    if not isinstance(value, str) or value not in STAGES + SIDE_STATES:
        raise ValidationError(
            f"stage must be one of {', '.join(STAGES + SIDE_STATES)} (got {shown(value)})")
    return value
