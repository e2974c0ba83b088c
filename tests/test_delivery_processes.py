"""Delivery across real processes: SIGKILL mid-delivery, two writers, a forked child."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from segment.analytics import Client as SegmentClient

import pqlsdk

from .conftest import count_rows, count_table

RULES = {"rules": [{"name": "reports", "all": [{"event": "report_generated", "at_least": 2}]}]}


def test_process_killed_mid_delivery_loses_nothing(database, segment_server):
    segment_server.hold = True  # the first delivery hangs until the process is gone
    script = textwrap.dedent(f"""
        import pqlsdk
        from segment.analytics import Client as SegmentClient
        segment = SegmentClient(write_key="k", host={segment_server.url!r}, sync_mode=True)
        client = pqlsdk.Client(**{database!r}, rules={RULES!r}, segment=segment,
                               delivery_lease=0.5)
        client.track("ada", "report_generated")
        [q] = client.track("ada", "report_generated")
        print(q.id, flush=True)
        client.flush()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        qualification_id = child.stdout.readline().strip()
        assert segment_server.arrived.wait(30), "the child never started delivering"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        child.kill()
        child.stdout.close()
    segment_server.release()
    assert segment_server.messages == []
    assert count_table(database, "outbox") == 1  # leased by the dead process, not lost

    segment = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    client = pqlsdk.Client(**database, rules=RULES, segment=segment)
    assert client.flush(timeout=20) is True  # waits out the dead process's lease
    client.close()
    assert segment_server.messages[0]["messageId"] == qualification_id
    assert len(segment_server.messages) == 2  # track + identify, once


def deliver_from(database: dict, url: str, users: list[str], start, done) -> None:
    segment = SegmentClient(write_key="k", host=url, sync_mode=True)
    client = pqlsdk.Client(**database, rules=RULES, segment=segment, poll_interval=0.05)
    start.wait(30)
    for user in users:
        client.track(user, "report_generated")
        client.track(user, "report_generated")
    done.put(client.close(timeout=30))


def test_two_processes_sharing_a_store_deliver_each_row_once(database, segment_server):
    """Each process's workers claim from the one outbox: every row goes out once."""
    pqlsdk.Client(**database, rules=RULES).close()
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=deliver_from,
                    args=(database, segment_server.url, [f"p{n}-u{i}" for i in range(40)],
                          start, done))
        for n in range(2)
    ]
    for process in workers:
        process.start()
    start.set()
    assert [done.get(timeout=120) for _ in workers] == [True, True]
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    ids = [m["messageId"] for m in segment_server.messages if m["type"] == "track"]
    assert len(ids) == 80
    assert len(set(ids)) == 80
    assert count_table(database, "outbox") == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_delivers_its_own_rows(db_path, segment_server):
    segment = SegmentClient(write_key="k", host=segment_server.url, sync_mode=True)
    client = pqlsdk.Client(db_path, rules=RULES, segment=segment)
    client.track("parent", "report_generated")
    client.track("parent", "report_generated")
    assert client.flush(timeout=10) is True  # the parent's worker thread is running

    from segment.analytics import request as segment_request

    parent_connection, parent_session = client.store.db.conn, segment_request._session
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not survive fork()
        code = 1
        try:
            if client.store.db.conn is parent_connection:
                os._exit(3)  # a SQLite connection must not cross fork()
            if segment_request._session is parent_session:
                os._exit(4)  # nor may pooled keep-alive sockets
            client.track("child", "report_generated")
            client.track("child", "report_generated")
            code = 0 if client.close(timeout=10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.close()
    users = [m["userId"] for m in segment_server.messages if m["type"] == "track"]
    assert users == ["parent", "child"]


def test_interpreter_exit_does_not_wait_for_a_hanging_delivery(db_path, segment_server):
    segment_server.hold = True
    script = textwrap.dedent(f"""
        import pqlsdk
        from segment.analytics import Client as SegmentClient
        segment = SegmentClient(write_key="k", host={segment_server.url!r}, sync_mode=True,
                                timeout=60)
        client = pqlsdk.Client({db_path!r}, rules={RULES!r}, segment=segment)
        client.track("ada", "report_generated")
        client.track("ada", "report_generated")
        print("qualified", flush=True)
        input()  # returns once the test has seen the delivery arrive
    """)  # no close(): the delivery is mid-request when the interpreter exits
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "qualified"
        assert segment_server.arrived.wait(30)
        child.stdin.write("exit\n")
        child.stdin.flush()
        assert child.wait(timeout=20) == 0
    finally:
        child.kill()
        child.stdout.close()
        child.stdin.close()
    segment_server.release()
    assert count_rows(db_path, "outbox") == 1  # still there for the next start
