"""The hand-off to sales: which qualified leads are overdue (``[lifecycle] accept_within``),
telling ``on_overdue`` of each once, and how long sales took to accept or reject.

A live qualification opens a hand-off (table ``handoffs``) unless its subject is already at
``sql`` or later; any move of the subject to ``sql``, ``opportunity``, ``customer``,
``unqualified`` or ``disqualified`` settles every open hand-off of it. What is still open
``accept_within`` after it was qualified is overdue.

    >>> overdue(tx, timedelta(days=2), as_of)
    [Overdue(subject_type='user', subject_id='ada', stage='pql', ...)]
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs

from .models import Overdue
from .store import Transaction
from .timestamps import from_micros

_MICROSECOND = timedelta(microseconds=1)
#: At most this many overdue qualifications are told of per transaction.
NOTIFY_CHUNK = 500
#: Stages that accept a hand-off (the others of the settling stages reject it).
ACCEPTING = ("sql", "opportunity", "customer")


def overdue(tx: Transaction, accept_within: timedelta, as_of: int) -> list[Overdue]:
    """Every open hand-off qualified at least ``accept_within`` before ``as_of``, oldest
    first."""
    return _found(tx.overdue(as_of - accept_within // _MICROSECOND), accept_within)


def _found(rows: list[tuple[Any, ...]], accept_within: timedelta) -> list[Overdue]:
    found = []
    for qid, kind, sid, stage, rule, at, _tenant in rows:
        qualified_at = from_micros(at)
        found.append(Overdue(kind, sid, stage, qualified_at, rule, qid,
                             qualified_at + accept_within))
    return found


def notify(tx: Transaction, accept_within: timedelta, now: int,
           rows_for: Callable[[list[Overdue]], list[tuple[str, str, str | None, str, int]]]
           ) -> int:
    """Write ``on_overdue`` outbox rows (``rows_for``) for overdue hand-offs not yet told
    of (at most :data:`NOTIFY_CHUNK`), and mark them told of, in ``tx``; how many."""
    rows = tx.overdue(now - accept_within // _MICROSECOND, unnotified=True,
                      limit=NOTIFY_CHUNK)
    found = _found(rows, accept_within)
    if not found:
        return 0
    outbox = rows_for(found)
    if outbox:
        tx.enqueue(outbox)
    tx.mark_notified([(row[6], row[0]) for row in rows], now)
    return len(found)


@attrs.frozen
class HandoffTimes:
    """How long sales took with qualified leads (in a funnel's period): of the live
    qualifications, how many were ``accepted`` (the subject moved to ``sql`` or later) and
    ``rejected`` (to ``unqualified``/``disqualified``) first, and the median and 90th
    percentile (nearest rank) of the time from qualification to each. None when there is
    none."""

    accepted: int = 0
    rejected: int = 0
    median_to_acceptance: timedelta | None = None
    p90_to_acceptance: timedelta | None = None
    median_to_rejection: timedelta | None = None
    p90_to_rejection: timedelta | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in seconds)."""
        return {k: v.total_seconds() if isinstance(v, timedelta) else v
                for k, v in attrs.asdict(self).items()}


def handoff_times(tx: Transaction, subject_type: str, since: int | None, until: int | None
                  ) -> HandoffTimes:
    """:class:`HandoffTimes` of the qualifications of ``subject_type`` subjects qualified in
    ``[since, until]``: each settled by its subject's first later move to a settling stage
    (other than the rule's own move)."""
    waits: dict[bool, list[int]] = {True: [], False: []}
    seen: set[str] = set()
    for qid, qualified_at, to_stage, at in tx.settlements(subject_type, since, until):
        if qid in seen:
            continue  # only the first settling move counts
        seen.add(qid)
        waits[to_stage in ACCEPTING].append(at - qualified_at)
    accepted, rejected = sorted(waits[True]), sorted(waits[False])
    return HandoffTimes(len(accepted), len(rejected), _median(accepted), _p90(accepted),
                        _median(rejected), _p90(rejected))


def _median(values: list[int]) -> timedelta | None:
    return None if not values else timedelta(microseconds=statistics.median(values))


def _p90(values: list[int]) -> timedelta | None:
    """The nearest-rank 90th percentile of sorted ``values``."""
    if not values:
        return None
    return timedelta(microseconds=values[math.ceil(0.9 * len(values)) - 1])
