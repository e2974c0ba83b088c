"""``Client.health()``: what a /health endpoint, a dashboard or a shell needs to see whether
deliveries are backing up, read cheaply (the outbox is short: delivered rows are removed; the
events table is never counted)."""

from __future__ import annotations

import os
from typing import Any

import attrs


@attrs.frozen
class DestinationHealth:
    """One destination's outbox: ``pending`` rows (waiting or retrying), the age in seconds
    of its oldest pending row (None when nothing is pending), ``failed`` rows (gave up or
    refused for good), its latest recorded error, and whether this process delivers to it
    (``active``: False for Segment under ``send=False``, or for a callback name no Client
    of this process registered)."""

    destination: str
    pending: int
    oldest_pending_age: float | None
    failed: int
    last_error: str | None
    active: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return attrs.asdict(self)


@attrs.frozen
class Health:
    """A snapshot of the outbox and the file, from :meth:`pqlsdk.Client.health`.

    ``destinations`` lists each destination this Client delivers to and each one that has
    rows in the outbox; ``last_error`` is the latest recorded delivery error of any of them;
    ``schema_version`` the database's; ``file_bytes`` the SQLite file's size with its WAL
    (None in memory); ``sending`` is False under ``Client(send=False)``.

    >>> health = client.health()
    >>> health.destination("segment").pending
    0
    """

    destinations: tuple[DestinationHealth, ...]
    last_error: str | None
    schema_version: int
    file_bytes: int | None
    sending: bool

    @property
    def pending(self) -> int:
        """Pending rows over every destination."""
        return sum(d.pending for d in self.destinations)

    @property
    def failed(self) -> int:
        """Failed rows over every destination."""
        return sum(d.failed for d in self.destinations)

    @property
    def oldest_pending_age(self) -> float | None:
        """The oldest pending row's age in seconds, over every destination."""
        ages = [d.oldest_pending_age for d in self.destinations
                if d.oldest_pending_age is not None]
        return max(ages) if ages else None

    def destination(self, name: str) -> DestinationHealth:
        """The figures of one destination (``"segment"`` or ``"callback:module.name"``);
        zeros for one with nothing in the outbox."""
        for found in self.destinations:
            if found.destination == name:
                return found
        return DestinationHealth(name, 0, None, 0, None, False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for a /health endpoint)."""
        return {"destinations": [d.to_dict() for d in self.destinations],
                "pending": self.pending, "failed": self.failed,
                "oldest_pending_age": self.oldest_pending_age,
                "last_error": self.last_error, "schema_version": self.schema_version,
                "file_bytes": self.file_bytes, "sending": self.sending}


def build_health(rows: list[tuple[Any, ...]], active: list[str], schema_version: int,
                 path: str | None, now: int, sending: bool) -> Health:
    """A :class:`Health` from the store's per-destination rows ``(destination, pending,
    oldest pending created_at µs, failed, last error, when it was scheduled µs)`` as of
    ``now`` (µs); ``active`` names the destinations this process delivers to."""
    found = {row[0]: row for row in rows}
    destinations = []
    for name in sorted(set(found) | set(active)):
        _, pending, oldest, failed, error, _ = found.get(name, (name, 0, None, 0, None, None))
        age = None if oldest is None else max(0.0, (now - oldest) / 1e6)
        destinations.append(DestinationHealth(name, pending, age, failed, error,
                                              name in active))
    errors = [row for row in rows if row[4] is not None]
    last_error = max(errors, key=lambda row: row[5])[4] if errors else None
    return Health(tuple(destinations), last_error, schema_version, file_bytes(path), sending)


def file_bytes(path: str | None) -> int | None:
    """The database file's size plus its WAL's (None in memory); two ``stat`` calls."""
    if path is None:
        return None
    wal = path + "-wal"
    size = os.path.getsize(path) if os.path.exists(path) else 0
    return size + (os.path.getsize(wal) if os.path.exists(wal) else 0)
