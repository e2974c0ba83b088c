"""Testing your own application's pqlsdk code: a pytest plugin and assertions.

Installed with pqlsdk (entry point ``pytest11``), it gives every test suite a ``pql_client``
fixture: an in-memory :class:`RecordingClient` in ``sync_mode`` whose Segment messages are
recorded rather than sent and whose qualifications are captured as they are delivered::

    def test_invites_qualify(pql_client):
        pql_client.track("u1", "teammate_invited", {"invitee_email": "a@x.io"})
        assert_qualified(pql_client, "u1", "team_builder")
        assert pql_client.segment_messages[0]["event"] == "Lead Qualified"

The rules come from the ``pql_rules`` fixture (override it in your ``conftest.py``), which
by default reads the file named by the ``pqlsdk_rules`` ini option, relative to the rootdir.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from .client import Client
from .errors import UnknownSubject
from .models import Qualification

__all__ = ["RecordingClient", "RecordingSegment", "assert_not_qualified", "assert_qualified"]


class RecordingSegment:
    """Stands where a ``segment.analytics.Client`` goes; keeps each batch pqlsdk would have
    posted to Segment instead of sending it (nothing leaves the process)."""

    write_key = "pqlsdk-testing"
    host = "https://segment.invalid"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches: list[list[dict[str, Any]]] = []

    def record_batch(self, batch: list[dict[str, Any]]) -> None:
        """Called by pqlsdk where it would post ``batch`` to Segment."""
        with self._lock:
            self.batches.append(list(batch))

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every recorded message, in order."""
        with self._lock:
            return [message for batch in self.batches for message in batch]


class RecordingClient(Client):
    """A :class:`~pqlsdk.Client` (in memory and in ``sync_mode`` by default) whose Segment
    messages go to a :class:`RecordingSegment` and whose delivered qualifications are kept
    in :attr:`qualified`."""

    def __init__(self, rules: Any = None, **options: Any) -> None:
        options.setdefault("database", ":memory:")
        options.setdefault("sync_mode", True)
        self.recorder: RecordingSegment = options.setdefault("segment", RecordingSegment())
        #: Each qualification delivered to callbacks, in delivery order.
        self.qualified: list[Qualification] = []
        super().__init__(rules=rules, **options)
        self.on_qualified(self._capture)

    def _capture(self, qualification: Qualification) -> None:
        self.qualified.append(qualification)

    @property
    def segment_messages(self) -> list[dict[str, Any]]:
        """The Segment messages pqlsdk delivered (recorded, not sent)."""
        return self.recorder.messages


def _client_of(client: Any) -> Client:
    inner = getattr(client, "client", None)  # an AsyncClient wraps a Client
    return inner if isinstance(inner, Client) else client


def _find(client: Client, subject_id: str, rule: str, account: bool) -> Qualification | None:
    kind = "account" if account else "user"
    for qualification in client.qualifications(rule=rule, shadow=None):
        if qualification.subject_type == kind and qualification.subject_id == subject_id:
            return qualification
    return None


def _explanation(client: Client, subject_id: str, account: bool) -> str:
    try:
        if account:
            return client.explain(account_id=subject_id)
        return client.explain(subject_id)
    except UnknownSubject:
        return f"({'account' if account else 'user'} {subject_id!r} was never seen)"


def assert_qualified(client: Client | Any, user_id: str | None = None, rule: str | None = None,
                     *, account_id: str | None = None) -> Qualification:
    """Assert that the user (or, with ``account_id=``, the account) is qualified for
    ``rule``; return the :class:`~pqlsdk.Qualification`. On failure the message says
    which rules it did meet and, per condition, how far it got (:meth:`Client.explain`).
    Takes a :class:`~pqlsdk.Client` or an :class:`~pqlsdk.AsyncClient`."""
    if rule is None or (user_id is None) == (account_id is None):
        raise TypeError("assert_qualified(client, user_id, rule) or "
                        "assert_qualified(client, rule=..., account_id=...)")
    inner = _client_of(client)
    subject = account_id if account_id is not None else user_id
    assert subject is not None
    account = account_id is not None
    found = _find(inner, subject, rule, account)
    if found is None:
        kind = "account" if account else "user"
        met = sorted({q.rule for q in inner.qualifications(shadow=None)
                      if q.subject_type == kind and q.subject_id == subject})
        raise AssertionError(
            f"{kind} {subject!r} is not qualified for rule {rule!r}; it met "
            f"{', '.join(met) if met else 'no rule'}.\n"
            f"{_explanation(inner, subject, account)}")
    return found


def assert_not_qualified(client: Client | Any, user_id: str | None = None,
                         rule: str | None = None, *, account_id: str | None = None) -> None:
    """Assert that the user (or account) is not qualified for ``rule``; the failure message
    shows the qualification found."""
    if rule is None or (user_id is None) == (account_id is None):
        raise TypeError("assert_not_qualified(client, user_id, rule)")
    subject = account_id if account_id is not None else user_id
    assert subject is not None
    found = _find(_client_of(client), subject, rule, account_id is not None)
    if found is not None:
        raise AssertionError(f"{found.subject_type} {subject!r} was qualified for rule "
                             f"{rule!r} at {found.qualified_at.isoformat()} ({found.id})")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``pqlsdk_rules`` ini option: the rules file ``pql_client`` loads."""
    parser.addini("pqlsdk_rules", "the PQL rules file (TOML) the pql_client fixture loads",
                  default="")


@pytest.fixture
def pql_rules(request: pytest.FixtureRequest) -> Any:
    """The rules ``pql_client`` loads: the ``pqlsdk_rules`` ini option's file (relative to
    the rootdir), or no rules. Override this fixture to give a list, dict or path."""
    name = request.config.getini("pqlsdk_rules")
    if not name:
        return None
    return str(request.config.rootpath / str(name))


@pytest.fixture
def pql_client(pql_rules: Any) -> Iterator[RecordingClient]:
    """An in-memory :class:`RecordingClient` in ``sync_mode`` with ``pql_rules``; closed
    after the test."""
    client = RecordingClient(pql_rules)
    yield client
    client.close(timeout=1.0)
