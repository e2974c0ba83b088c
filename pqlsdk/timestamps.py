"""Timestamps in and out: aware datetimes for people, integer microseconds for SQLite."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ValidationError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


def now() -> datetime:
    """The current time, UTC (freezegun-friendly)."""
    return datetime.now(timezone.utc)


def coerce(value: Any, name: str = "timestamp") -> datetime:
    """An aware UTC datetime from a datetime (naive = UTC) or an ISO-8601 string.

    >>> coerce("2026-11-23T10:00:00Z")
    datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc)
    """
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"{name} must be a datetime or an ISO-8601 string (got {value!r})"
            ) from None
    if not isinstance(value, datetime):
        raise ValidationError(
            f"{name} must be a datetime or an ISO-8601 string "
            f"(got {value!r} of type {type(value).__name__})"
        )
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding)."""
    return (value - EPOCH) // MICROSECOND


def from_micros(value: int) -> datetime:
    """The inverse of :func:`to_micros`."""
    return EPOCH + value * MICROSECOND
