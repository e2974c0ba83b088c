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
