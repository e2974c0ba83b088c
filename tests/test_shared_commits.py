"""Shared commits: calls from many threads, one transaction per batch, each call isolated."""

from __future__ import annotations

import threading
from collections import deque
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
    # rolled back, then the two others again, each in a savepoint: one transaction commits
    assert (commits.batches, commits.calls, commits.reruns) == (1, 2, 1)
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


# -- real threads: a leader, and seven callers that queue while it works ------------------------

class WatchedQueue(deque):
    """The commits' queue, telling the test when callers have queued (no sleeps)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def append(self, request) -> None:
        super().append(request)
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self) >= n, timeout=60)


class Crowd:
    """A leader whose first call holds its transaction open until ``works`` are all queued
    (so they join its batch), then one thread per work. ``outcomes[i]`` is what work i's
    ``run`` returned or raised (the leader's is ``"leader"``)."""

    def __init__(self, client, works) -> None:
        self.client, self.works = client, works
        self.commits = client._commits
        self.queue = self.commits._queue = WatchedQueue()
        self.started = threading.Event()
        self.outcomes: dict = {}
        self.held = False

    def leader_work(self, tx):
        result = track(self.client, "leader")(tx)
        if not self.held:  # the first time only (a re-run does not wait)
            self.held = True
            self.started.set()
            self.queue.wait_for(len(self.works))
        return result

    def call(self, key, work) -> None:
        try:
            self.outcomes[key] = self.commits.run(work)
        except BaseException as exc:  # the test looks at what each got
            self.outcomes[key] = exc

    def run(self) -> dict:
        leader = threading.Thread(target=self.call, args=("leader", self.leader_work))
        leader.start()
        assert self.started.wait(60)  # the leader is inside its transaction
        others = [threading.Thread(target=self.call, args=(n, work))
                  for n, work in enumerate(self.works)]
        for thread in others:
            thread.start()
        for thread in [leader, *others]:
            thread.join(60)
            assert not thread.is_alive()
        return self.outcomes


def track(client, user):
    return lambda tx: client.apply(tx, client.prepare_track(user, "report_generated",
                                                            timestamp=T0))


def test_calls_queued_while_the_leader_works_join_its_transaction(make_client):
    client = make_client(RULES)
    outcomes = Crowd(client, [track(client, f"u{n}") for n in range(7)]).run()
    assert outcomes == {"leader": ([], False), **{n: ([], False) for n in range(7)}}
    assert (client._commits.batches, client._commits.calls) == (1, 8)  # one commit for all
    assert client._commits.reruns == 0
    assert event_count(client) == 8


def test_a_failing_call_among_joined_ones_raises_alone_and_the_others_commit(make_client):
    client = make_client(RULES)

    def half_then_fail(tx):
        track(client, "half")(tx)  # its event is written, then the call fails
        raise ValueError("the application's bug")

    works = [track(client, f"u{n}") for n in range(3)] + [half_then_fail] + [
        track(client, f"u{n}") for n in range(3, 6)]
    outcomes = Crowd(client, works).run()
    assert isinstance(outcomes[3], ValueError)
    assert {key: value for key, value in outcomes.items() if key != 3} == {
        "leader": ([], False), **{n: ([], False) for n in (0, 1, 2, 4, 5, 6)}}
    # the batch was rolled back and applied again without savepoint trouble: one commit
    assert (client._commits.batches, client._commits.calls, client._commits.reruns) == (
        1, 7, 1)
    assert event_count(client) == 7
    with pytest.raises(pqlsdk.UnknownSubject):
        client.status("half")
    # and each good call's effects are there once: five more events qualify each user once
    for n in range(6):
        for _ in range(4):
            client.track(f"u{n}", "report_generated", timestamp=T0)
    assert sorted(q.subject_id for q in client.qualifications()) == [
        f"u{n}" for n in range(6)]


def test_a_driver_error_among_joined_calls_runs_each_alone(make_client):
    client = make_client(RULES)

    def broken(tx):  # NOT NULL refused by the database itself
        tx.conn.execute("INSERT INTO events (user_id, event, ts, properties) "
                        "VALUES (NULL, 'x', 0, '{}')")

    works = [track(client, f"u{n}") for n in range(3)] + [broken] + [
        track(client, f"u{n}") for n in range(3, 6)]
    outcomes = Crowd(client, works).run()
    assert "null" in str(outcomes[3]).lower()
    assert {key: value for key, value in outcomes.items() if key != 3} == {
        "leader": ([], False), **{n: ([], False) for n in (0, 1, 2, 4, 5, 6)}}
    assert (client._commits.batches, client._commits.calls) == (7, 7)  # each alone
    assert event_count(client) == 7


def test_an_interrupted_leader_wakes_every_caller_and_commits_nothing(make_client):
    client = make_client(RULES)

    def interrupt(tx):  # runs in the leader's thread, as a joined call
        raise KeyboardInterrupt

    works = [track(client, f"u{n}") for n in range(3)] + [interrupt] + [
        track(client, f"u{n}") for n in range(3, 6)]
    outcomes = Crowd(client, works).run()
    assert isinstance(outcomes["leader"], KeyboardInterrupt)
    for n in range(7):
        assert isinstance(outcomes[n], pqlsdk.StoreError)
        assert "interrupted (KeyboardInterrupt); nothing of it was committed" in str(
            outcomes[n])
    assert event_count(client) == 0
    assert client._commits.batches == 0
    # nobody is left leading: the next call runs (and leads) at once
    client.track("after", "report_generated", timestamp=T0)
    assert event_count(client) == 1


def test_a_lone_calls_driver_error_is_not_run_twice(make_client):
    client = make_client(RULES)
    runs = []

    def broken(tx):
        runs.append(1)
        tx.conn.execute("INSERT INTO events (user_id, event, ts, properties) "
                        "VALUES (NULL, 'x', 0, '{}')")

    with pytest.raises(Exception, match=r"(?i)null"):
        client._commits.run(broken)
    assert runs == [1]
    assert (client._commits.batches, client._commits.calls) == (0, 0)


def test_a_lone_call_that_raises_is_rolled_back_and_raises_its_own_error(make_client):
    client = make_client(RULES)

    def half_then_fail(tx):
        track(client, "half")(tx)  # its event is written, then the call fails
        raise ValueError("the application's bug")

    with pytest.raises(ValueError, match="the application's bug"):
        client._commits.run(half_then_fail)
    assert event_count(client) == 0  # nothing of it committed
    assert (client._commits.batches, client._commits.calls, client._commits.reruns) == (
        0, 0, 0)
    assert not client._commits._leading  # the next call runs at once
    assert client._commits.run(track(client, "after")) == ([], False)
    assert (client._commits.batches, client._commits.calls) == (1, 1)
    assert event_count(client) == 1


def test_an_interrupt_while_a_batch_is_run_again_wakes_every_caller(make_client):
    """Ctrl-C in the lone caller's thread while its batch is run again (a joined call
    raised) leaves no joined caller waiting or leading forever."""
    client = make_client(RULES)

    class RunAgainInterrupted(Crowd):
        def leader_work(self, tx):
            if self.held:  # the batch is run again: Ctrl-C arrives now
                raise KeyboardInterrupt
            return super().leader_work(tx)

    def fails(tx):
        raise ValueError("the application's bug")

    crowd = RunAgainInterrupted(client, [track(client, "u0"), fails, track(client, "u1")])
    outcomes = crowd.run()  # each thread returned (none spins leading)
    assert isinstance(outcomes["leader"], KeyboardInterrupt)
    for n in (0, 2):
        assert isinstance(outcomes[n], pqlsdk.StoreError)
        assert "interrupted (KeyboardInterrupt)" in str(outcomes[n])
    assert event_count(client) == 0
    assert not client._commits._leading and not crowd.queue
    client.track("after", "report_generated", timestamp=T0)  # the next call runs at once
    assert event_count(client) == 1


def test_a_caller_interrupted_while_it_waits_leaves_no_one_waiting_after_it(make_client,
                                                                           monkeypatch):
    """Ctrl-C while a call waits its turn: it leaves the queue, and the lead handed to it
    passes on, so every later call still runs."""
    import _thread
    from types import SimpleNamespace

    import pqlsdk.commits as commits_module

    client = make_client(RULES)
    commits = SharedCommits(client.store, limit=1)  # one call a batch: the lead is handed
    inside, go = threading.Event(), threading.Event()

    def slow(tx):
        inside.set()
        assert go.wait(60)
        return track(client, "slow")(tx)

    leader = threading.Thread(target=commits.run, args=(slow,))
    leader.start()
    assert inside.wait(60)

    class InterruptedWait:  # the waiting caller's lock: its wait is cut by Ctrl-C
        def __init__(self) -> None:
            self.lock, self.taken = _thread.allocate_lock(), False

        def acquire(self) -> bool:
            if self.taken:
                raise KeyboardInterrupt
            self.taken = True
            return self.lock.acquire()

        def release(self) -> None:
            self.lock.release()

    monkeypatch.setattr(commits_module, "threading", SimpleNamespace(Lock=InterruptedWait))
    with pytest.raises(KeyboardInterrupt):
        commits.run(track(client, "interrupted"))
    monkeypatch.undo()
    go.set()
    leader.join(60)
    later = threading.Thread(target=commits.run, args=(track(client, "later"),))
    later.start()
    later.join(30)
    assert not later.is_alive()
    assert not commits._leading and not commits._queue
    assert event_count(client) == 2  # slow's and later's; the interrupted call left
