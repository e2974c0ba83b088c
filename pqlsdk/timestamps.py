"""Timestamps in and out: aware datetimes for people, integer microseconds for SQLite."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ValidationError
from .limits import shown

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


def now() -> datetime:
    """The current time, UTC (freezegun-friendly)."""
    return datetime.now(timezone.utc)


#: The earliest moment pqlsdk stores (after a timestamp's offset is applied).
MIN_TIME = datetime.min.replace(tzinfo=timezone.utc)
#: The latest moment pqlsdk stores (after a timestamp's offset is applied).
MAX_TIME = datetime.max.replace(tzinfo=timezone.utc)
#: Longest ISO-8601 string accepted (the longest valid form is 38 characters).
_MAX_TEXT = 64
_RANGE = "between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in UTC"


def coerce(value: Any, name: str = "timestamp") -> datetime:
    """An aware UTC datetime from a datetime (naive = UTC) or an ISO-8601 string, within
    :data:`MIN_TIME` and :data:`MAX_TIME` once converted to UTC (so
    ``0001-01-01T00:00:00+01:00``, which is in year 0 in UTC, is refused).

    >>> coerce("2026-11-23T10:00:00Z")
    datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc)
    """
    if type(value) is datetime and value.tzinfo is timezone.utc:
        return value  # the common case, as cheap as it gets
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            if len(text) > _MAX_TEXT:
                raise ValueError(text)
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"{name} must be a datetime or an ISO-8601 string (got {shown(value)})"
            ) from None
    if not isinstance(value, datetime):
        raise ValidationError(
            f"{name} must be a datetime or an ISO-8601 string "
            f"(got {shown(value)} of type {type(value).__name__})"
        )
    try:
        offset = value.utcoffset()
        if offset is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValidationError(
            f"{name} must be {_RANGE} (got {value.isoformat()}, outside it in UTC)"
        ) from None
    except (TypeError, ValueError) as exc:  # a tzinfo that does not work
        raise ValidationError(f"{name} has a time zone that does not work ({exc})") from None


_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat


def utc_micros(text: str) -> int | None:
    """Microseconds since the epoch of a timestamp in the shape Segment writes,
    ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` ending in ``Z`` or ``+00:00``, without the
    datetime :func:`coerce` builds; None for any other text (:func:`coerce` takes it and
    says what is wrong). Where it answers, it answers as ``to_micros(coerce(text))``."""
    if not 16 < len(text) <= 32 or text[10] != "T" or not (  # 32: ...:00.123456+00:00
            text[-1] == "Z" or text.endswith("+00:00")):
        return None
    try:
        value = _fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is not _UTC:
        return None
    return (value - EPOCH) // MICROSECOND


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding)."""
    return (value - EPOCH) // MICROSECOND


def from_micros(value: int) -> datetime:
    """The inverse of :func:`to_micros`."""
    return EPOCH + value * MICROSECOND
