"""What the engine needs from a store, whichever database runs it: the :class:`Store`
protocol (transactions, reads, the delivery wake-up, fork and close) and the named row types
that cross the boundary. The statements themselves are the methods of
:class:`~pqlsdk.store.sqlite.Transaction`, which both engines run (the PostgreSQL store adds
its row locks and the few statements spelled differently)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from .sqlite import Transaction

T = TypeVar("T")


class SubjectRow(NamedTuple):
    """A user's or an account's row as evaluation reads it."""

    traits: str | None
    stage: str
    round: int
    #: When the current round began, or None.
    round_since: int | None
    #: The rules met this round, a JSON array (a shadow rule's as ``[name]``), or None.
    done: str | None


class UserRow(NamedTuple):
    """:meth:`Transaction.user_snapshot`: a user, its account id and its account's row."""

    account_id: str | None
    user: SubjectRow
    account: SubjectRow | None


class PropertyRow(NamedTuple):
    """The properties JSON of ``n`` events (1 for an event, more for a retention rollup)."""

    properties: str
    n: int


class StageCounts(NamedTuple):
    """One stage of the funnel as the store counts it."""

    entered: int
    moved_on: int
    #: The median microseconds in stage of those who moved on (None if nobody did).
    median: float | None
    #: Of those who entered, how many reached the funnel's ``to`` stage (or a later one).
    reached: int = 0


class OutboxKey(NamedTuple):
    """An outbox row's key: its tenant and its id (what a claimer settles it by)."""

    tenant_key: str
    id: int


class FunnelRows(NamedTuple):
    """:meth:`Transaction.funnel_rows`: per stage for all subjects, and per group."""

    overall: list[StageCounts]
    groups: list[tuple[Any, list[StageCounts]]]


class PrunedEvent(NamedTuple):
    """An event a retention sweep removed (what its rollup needs of it)."""

    tenant_key: str
    user_id: str
    account_id: str | None
    event: str
    ts: int
    properties: str


class RollupKey(NamedTuple):
    """What one rollup row counts: a subject's events of one name with the same kept
    properties, in one tenant (a user that changed accounts left the old one a copy)."""

    tenant_key: str
    user_id: str
    account_id: str | None
    event: str
    properties: str


class RollupAdd(NamedTuple):
    """Events folded into a rollup: how many, and the first and last of their times."""

    key: RollupKey
    n: int
    first_ts: int
    last_ts: int


class Store(Protocol):
    """A pqlsdk store: the SQLite file (:class:`pqlsdk.store.sqlite.Store`) or a PostgreSQL
    schema (:class:`pqlsdk.store.postgres.PostgresStore`)."""

    #: ``"sqlite"`` or ``"postgresql"``.
    engine: str
    #: Set by :meth:`close`; every later call raises :class:`~pqlsdk.StoreClosed`.
    closed: bool
    #: The database file (SQLite), else None.
    path: str | None

    def transact(self, work: Callable[[Transaction], T]) -> T:
        """Run ``work(tx)`` in one write transaction and commit; on PostgreSQL run it again
        after a serialization failure or a deadlock (so ``work`` must only write through
        ``tx``)."""

    def write(self) -> AbstractContextManager[Transaction]:
        """One write transaction, committed on success (not retried)."""

    def read(self, timeout: float | None = None) -> AbstractContextManager[Transaction]:
        """Queries that see the latest commit and wait for no writer (``timeout``: for the
        read connection, then :class:`~pqlsdk.StoreBusy`)."""

    def wait_for_rows(self, timeout: float) -> bool:
        """Block until outbox rows were written elsewhere (PostgreSQL NOTIFY) or
        ``timeout``; False at once where there is no such signal."""

    def checkpoint(self) -> None:
        """Make erased rows unrecoverable from the store's own log where it can (SQLite's
        WAL); nothing on PostgreSQL."""

    def usage(self, now: int) -> Any:
        """The file's size and growth (SQLite), else None."""

    def bulk(self) -> AbstractContextManager[None]:
        """Settings for a long run of big transactions (an import)."""

    def hold_for_fork(self) -> None:
        """Before fork(): wait until no thread is inside a transaction."""

    def release_after_fork(self) -> None:
        """After fork(), in the parent."""

    def reopen_after_fork(self) -> None:
        """In the child: new connections; the parent's are never used or closed."""

    def close(self, timeout: float | None = None) -> None:
        """Close the connections."""
