"""One real SQLite file under fuzz: dump every table before and after each hostile call,
check what a successful call stored, then make an ordinary call for the same subject."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any

import pqlsdk
from pqlsdk.validation import identifier

RULES = {
    "rules": [
        {"name": "engaged", "all": [{"event": "report", "at_least": 3, "within": "30d"}]},
        {"name": "summed", "stage": "mql", "all": [{"event": "report", "sum": "n",
                                                    "at_least": 5}]},
        {"name": "inviter", "all": [{"event": "invite", "distinct": "email", "at_least": 2},
                                    {"trait": "plan", "in": ["free", "trial"]}]},
        {"name": "crm", "stage": "sql", "any": [
            {"event": "integration", "where": {"provider": ["salesforce"], "n": {"gte": 1}}},
            {"not": {"trait": "seats", "lt": 1000}}]},
        {"name": "team", "subject": "account", "all": [{"event": "report", "at_least": 2},
                                                       {"trait": "seats", "gte": 5}]},
        {"name": "scored", "stage": "mql", "all": [{"score": "total", "gte": 30}]},
    ],
    "scoring": {
        "half_life": "7d",
        "behavior": [{"event": "report", "points": 5, "max": 50},
                     {"event": "invite", "points": 3, "where": {"email": {"exists": True}}}],
        "fit": [{"trait": "seats", "gte": 5, "points": 20},
                {"trait": "email", "ends_with": "@gmail.com", "points": -10}],
    },
}
ORDINARY_TIME = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
#: Examples run per entry point, for the campaign's summary.
EXAMPLES: Counter[str] = Counter()
#: A fresh file after this many examples, so that dumps stay small.
RECYCLE = 400


def delivered(qualification: pqlsdk.Qualification) -> None:
    """The fuzz Client's callback: qualifications of hostile subjects go through the outbox."""
    assert qualification.id


def normal(value: Any) -> Any:
    """What a JSON value reads back as: tuples become lists, datetimes ISO-8601 strings."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def same(stored: Any, given: Any) -> bool:
    """JSON equality where -0.0 == 0.0 and 1 == 1.0 as JSON numbers are."""
    if isinstance(given, float) and isinstance(stored, int | float):
        return stored == given or (math.isnan(given) and math.isnan(stored))
    if isinstance(given, dict):
        return isinstance(stored, dict) and stored.keys() == given.keys() and all(
            same(stored[k], v) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(stored, list) and len(stored) == len(given) and all(
            same(s, g) for s, g in zip(stored, given, strict=True))
    return type(stored) is type(given) and stored == given


def valid_id(value: Any) -> str | None:
    """The id pqlsdk would store for ``value``, or None if it refuses it."""
    try:
        return identifier("id", value)
    except pqlsdk.ValidationError:
        return None


class Harness:
    """A Client on a real file, a second connection to read it, and the property check."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder, self.name, self.generation, self.count = folder, name, 0, 0
        self.client: pqlsdk.Client | None = None
        self._open()

    def _open(self) -> None:
        self.generation += 1
        self.path = os.path.join(self.folder, f"{self.name}-{self.generation}.db")
        self.client = pqlsdk.Client(self.path, rules=RULES, sync_mode=True,
                                    on_qualified=delivered)
        self.reader = sqlite3.connect(self.path)
        # a few ordinary subjects so that reads and evaluate() have something to chew on
        self.client.identify("seed", {"plan": "free", "seats": 9}, account_id="seed-acct",
                             timestamp=ORDINARY_TIME)
        self.client.track("seed", "report", {"n": 2}, timestamp=ORDINARY_TIME)

    def close(self) -> None:
        """Close the Client and the reader."""
        if self.client is not None:
            self.client.close(timeout=0)
        self.reader.close()

    def _recycle(self) -> None:
        self.count += 1
        EXAMPLES[self.name] += 1
        if self.count % RECYCLE == 0:
            old = self.path
            self.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old + suffix)
            self._open()

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table (what "the database is unchanged" compares)."""
        tables = [row[0] for row in self.reader.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(self.reader.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}

    def row(self, sql: str, *args: Any) -> Any:
        """One row read through the second connection."""
        return self.reader.execute(sql, args).fetchone()

    def attempt(self, call: Callable[[pqlsdk.Client], Any], *, read_only: bool = False
                ) -> tuple[bool, Any]:
        """Run a hostile call: ``(True, result)``, or ``(False, error)`` after checking that
        a refusal left every table as it was (``read_only``: a success too). Any other
        exception fails the example."""
        self._recycle()
        assert self.client is not None
        before = self.dump()
        try:
            result = call(self.client)
        except pqlsdk.PqlError as exc:
            after = self.dump()
            changed = [t for t in before if before[t] != after.get(t)]
            assert not changed, f"{exc!r} was raised but {changed} changed"
            assert str(exc)  # says something
            return False, exc
        if read_only:
            after = self.dump()
            changed = [t for t in before if before[t] != after.get(t)]
            assert not changed, f"a read changed {changed}"
        return True, result

    def ordinary(self, subject: Any = None, account: Any = None) -> None:
        """A later ordinary call for the same subject (when its id is valid) still works."""
        assert self.client is not None
        user = valid_id(subject) or "fuzz-ordinary"
        self.client.track(user, "report", {"n": 1}, timestamp=ORDINARY_TIME)
        assert self.client.status(user).subject_id == user
        self.client.explain(user)
        account_id = valid_id(account)
        if account_id is not None:
            self.client.group(user, account_id, {"seats": 1}, timestamp=ORDINARY_TIME)
            self.client.status(account_id=account_id)

    def stored_traits(self, subject_type: str, subject_id: str) -> dict[str, Any]:
        """The traits stored for a user or an account."""
        table, key = ("users", "user_id") if subject_type == "user" else ("accounts",
                                                                         "account_id")
        row = self.row(f"SELECT traits FROM {table} WHERE {key} = ?", subject_id)
        assert row is not None, f"{subject_type} {subject_id!r} was not stored"
        return json.loads(row[0])
