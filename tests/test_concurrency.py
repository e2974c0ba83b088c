"""Many real processes writing one file: every event stored, every qualification once."""

from __future__ import annotations

import multiprocessing

import pqlsdk

from .conftest import count_rows

PROCESSES = 4
EVENTS_EACH = 150
USERS = ["u0", "u1", "u2"]
RULES = {"rules": [
    {"name": "busy", "all": [{"event": "report_generated", "at_least": 50}]},
    {"name": "team", "subject": "account", "all": [{"event": "report_generated",
                                                     "at_least": 100}]},
]}


def hammer(path: str, worker: int, start, results) -> None:
    client = pqlsdk.Client(path, rules=RULES)
    start.wait()
    created = []
    for i in range(EVENTS_EACH):
        user = USERS[i % len(USERS)]
        created += client.track(user, "report_generated", {"n": i}, account_id="acme",
                                message_id=f"{worker}-{i}")
    client.close()
    results.put([q.id for q in created])


def test_four_processes_on_one_file_qualify_each_subject_exactly_once(db_path):
    pqlsdk.Client(db_path, rules=RULES).close()  # create the schema once, up front
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=hammer, args=(db_path, n, start, results))
               for n in range(PROCESSES)]
    for process in workers:
        process.start()
    start.set()
    created = [qid for _ in workers for qid in results.get(timeout=120)]
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert count_rows(db_path, "events") == PROCESSES * EVENTS_EACH
    assert count_rows(db_path, "qualifications") == len(USERS) + 1
    assert sorted(created) == sorted(set(created))  # nobody was told twice
    assert len(created) == len(USERS) + 1


def test_processes_opening_a_fresh_file_together_migrate_it_once(tmp_path):
    path = str(tmp_path / "fresh.db")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=hammer, args=(path, n, start, results)) for n in range(3)]
    for process in workers:
        process.start()
    start.set()
    for _ in workers:
        results.get(timeout=120)
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert count_rows(path, "events") == 3 * EVENTS_EACH


def test_threads_sharing_one_client_lose_nothing(db_path):
    import threading

    client = pqlsdk.Client(db_path, rules=RULES)
    fired = []
    client.on_qualified(fired.append)

    def work(n: int) -> None:
        for i in range(EVENTS_EACH):
            client.track(USERS[i % len(USERS)], "report_generated", account_id="acme",
                         message_id=f"t{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(PROCESSES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert client.flush(timeout=30) is True
    client.close()
    assert count_rows(db_path, "events") == PROCESSES * EVENTS_EACH
    assert sorted(q.subject_id for q in fired) == ["acme", *USERS]


def test_a_call_made_first_but_recorded_last_still_completes_the_rule(make_client):
    """Calls without a timestamp are stamped once their subject is locked: a call made
    before two others (another thread or process took the lock first) but recorded after
    them counts them, so the third report qualifies the user. (Stamped when made, it
    would be evaluated as of a moment before the other two and nobody would qualify.)"""
    from datetime import datetime, timedelta, timezone

    from freezegun import freeze_time

    rules = {"rules": [{"name": "reports", "all": [{"event": "report_generated",
                                                    "at_least": 3}]}]}
    client = make_client(rules)
    with freeze_time(datetime(2026, 11, 2, 9, tzinfo=timezone.utc)) as clock:
        slow = client.prepare_track("ada", "report_generated")  # made first...
        for _ in range(2):
            clock.tick(timedelta(seconds=1))
            assert client.track("ada", "report_generated") == []
        clock.tick(timedelta(seconds=1))
        with client.store.write() as tx:  # ...recorded last
            created, _ = client.apply(tx, slow)
    [qualification] = created
    assert qualification.rule == "reports"
    assert qualification.qualified_at == datetime(2026, 11, 2, 9, 0, 3, tzinfo=timezone.utc)
    assert [q.id for q in client.qualifications()] == [qualification.id]


def test_a_call_with_its_own_timestamp_is_evaluated_as_of_it(make_client):
    """A timestamp given by the caller is kept (SPEC 4: windows end at the evaluated event's
    timestamp): a late event is counted as of its own time."""
    from datetime import datetime, timedelta, timezone

    rules = {"rules": [{"name": "reports", "all": [{"event": "report_generated",
                                                    "at_least": 3}]}]}
    client = make_client(rules)
    t0 = datetime(2026, 11, 2, 9, tzinfo=timezone.utc)
    client.track("ada", "report_generated", timestamp=t0 + timedelta(seconds=2))
    client.track("ada", "report_generated", timestamp=t0 + timedelta(seconds=3))
    assert client.track("ada", "report_generated", timestamp=t0) == []  # 1 as of t0
    [found] = client.evaluate(as_of=t0 + timedelta(seconds=4))
    assert found.rule == "reports"
