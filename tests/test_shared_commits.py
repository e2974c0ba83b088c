"""Shared commits: calls from many threads, one transaction per batch, each call isolated."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

import pqlsdk
from pqlsdk.commits import SharedCommits, _Request

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
RULES = [pqlsdk.Rule("engaged", pqlsdk.event("report_generated", at_least=5), stage="mql")]


def event_count(client) -> int:
    with client.store.read() as tx:
        return len(tx.rows("events", "user_id IS NOT NULL", []))


def test_eight_threads_each_get_their_own_qualification(make_client):
    client = make_client(RULES)
    got: dict[str, list] = {}
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        mine = []
        for _ in range(20):
            mine += client.track(f"user-{n}", "report_generated", timestamp=T0)
        got[f"user-{n}"] = mine

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each caller got exactly its own user's qualification, once, at its fifth event
    assert {user: [(q.subject_id, q.rule) for q in found] for user, found in got.items()} == {
        f"user-{n}": [(f"user-{n}", "engaged")] for n in range(8)}
    assert event_count(client) == 160
    assert len(client.qualifications()) == 8
    assert client._commits.calls == 160


def requests(*works):
    return [_Request(work) for work in works]


def test_a_call_that_raises_is_rolled_back_alone_and_the_batch_commits(make_client):
    client = make_client(RULES)

    def track(user):
        return lambda tx: client.apply(tx, client.prepare_track(user, "signup", timestamp=T0))

    def half_then_fail(tx):
        track("half")(tx)  # its event is written, then the call fails: rolled back
        raise ValueError("the application's bug")

    batch = requests(track("a"), half_then_fail, track("b"))
    commits = SharedCommits(client.store)
    commits.apply(batch)
    assert [r.done for r in batch] == [True, True, True]
    assert isinstance(batch[1].error, ValueError)
    assert batch[0].error is None and batch[2].error is None
    assert (commits.batches, commits.calls) == (1, 3)  # one transaction for the three
    assert event_count(client) == 2
    with pytest.raises(pqlsdk.UnknownSubject):
        client.status("half")
    assert client.status("a").stage == client.status("b").stage == "lead"


def test_a_driver_error_in_one_call_runs_the_batch_again_call_by_call(make_client):
    client = make_client(RULES)

    def track(user):
        return lambda tx: client.apply(tx, client.prepare_track(user, "signup", timestamp=T0))

    def broken(tx):  # NOT NULL refused by the database itself
        tx.conn.execute("INSERT INTO events (user_id, event, ts, properties) "
                        "VALUES (NULL, 'x', 0, '{}')")

    batch = requests(track("a"), broken, track("b"))
    commits = SharedCommits(client.store)
    commits.apply(batch)
    assert batch[0].error is None and batch[2].error is None
    assert batch[1].error is not None and "null" in str(batch[1].error).lower()
    assert (commits.batches, commits.calls) == (2, 2)  # the batch failed; two alone
    assert event_count(client) == 2


def test_a_call_returns_only_once_its_batch_is_committed(make_client):
    client = make_client(RULES)
    seen = []
    for n in range(5):
        client.track(f"u{n}", "signup", timestamp=T0)
        # a reader (another connection) sees the event the moment track() returned
        seen.append(event_count(client))
    assert seen == [1, 2, 3, 4, 5]


def test_shared_commits_can_be_turned_off(make_client):
    client = make_client(RULES, shared_commits=False)
    client.track("u1", "signup", timestamp=T0)
    assert client._commits.calls == 0
    assert event_count(client) == 1
