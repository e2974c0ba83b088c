"""The framework recipes in examples/, started for real and driven over HTTP: FastAPI under
uvicorn with AsyncClient, Flask under gunicorn --preload, Django under gunicorn with a
management command. Each checks the SQLite file and what the test Segment server got."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from .segment_server import SegmentServer
from .servers import BIN, EXAMPLES, free_port, request, serving, wait_for


def rows(db: str, sql: str, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def qualified(db: str) -> list[tuple[str, str, str]]:
    return sorted(rows(db, "SELECT rule, subject_type, subject_id FROM qualifications"))


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def lead_qualified(segment: SegmentServer) -> list[dict]:
    return [m for m in segment.messages if m.get("event") == "Lead Qualified"]


@pytest.fixture(scope="module")
def segment():
    server = SegmentServer()
    yield server
    server.close()


def app_env(tmp, segment: SegmentServer) -> dict[str, str]:
    return {"PQL_DB": str(tmp / "pql.db"), "SEGMENT_WRITE_KEY": "recipe-key",
            "SEGMENT_HOST": segment.url, "PQL_CALLBACK_LOG": str(tmp / "callbacks.txt"),
            "SERVER_LOG": str(tmp / "server.log")}


# -- FastAPI + uvicorn + AsyncClient ---------------------------------------------------------

@pytest.fixture(scope="module")
def fastapi_app(tmp_path_factory, segment):
    tmp = tmp_path_factory.mktemp("fastapi")
    env = {**app_env(tmp, segment), "PQL_SLOW_CALLBACK": "0.2",
           "PQL_CALLBACK_GATE": str(tmp / "gate")}
    port = free_port()
    command = [str(BIN / "uvicorn"), "app:app", "--app-dir", str(EXAMPLES / "fastapi_app"),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with serving(command, env, port) as url:
        yield url, tmp


def test_fastapi_tracks_qualifies_once_and_forwards_to_segment(fastapi_app, segment):
    url, tmp = fastapi_app
    answers = [request(f"{url}/track", {"user_id": "fa-ada", "event": "report_generated",
                                        "account_id": "fa-acme"})[1] for _ in range(5)]
    assert [a["qualified"] for a in answers] == [[], [], ["reports"], [], ["busy_workspace"]]
    assert request(f"{url}/status/fa-ada")[1] == {"stage": "mql", "rules": ["reports"]}
    db = str(tmp / "pql.db")
    assert [q for q in qualified(db) if "fa-" in q[2]] == [
        ("busy_workspace", "account", "fa-acme"), ("reports", "user", "fa-ada")]
    ids = {qid for (qid,) in rows(db, "SELECT id FROM qualifications WHERE user_id = 'fa-ada'")}
    wait_for(lambda: ids <= {m["messageId"] for m in lead_qualified(segment)}, 30,
             "Segment to receive both qualifications")
    wait_for(lambda: ids == {line.split()[0] for line in lines(tmp / "callbacks.txt")
                             if "fa-" in line}, 30, "the async callback")
    assert len([m for m in lead_qualified(segment) if m["messageId"] in ids]) == 2
    wait_for(lambda: request(f"{url}/health")[1]["pending"] == 0, 30, "an empty outbox")


def test_fastapi_answers_while_another_process_holds_the_write_lock(fastapi_app):
    url, tmp = fastapi_app
    request(f"{url}/track", {"user_id": "fa-warm", "event": "opened"})
    holder = sqlite3.connect(str(tmp / "pql.db"), isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    outcome: dict = {}
    writer = threading.Thread(target=lambda: outcome.update(
        answer=request(f"{url}/track", {"user_id": "fa-bob", "event": "opened"}, 60)))
    try:
        writer.start()
        # the write waits on the lock; meanwhile the trivial endpoint answers, many times
        for _ in range(20):
            assert request(f"{url}/ping", timeout=10) == (200, {"pong": "ok"})
        assert "answer" not in outcome
    finally:
        holder.execute("COMMIT")
        holder.close()
    writer.join(60)
    assert outcome["answer"] == (200, {"qualified": []})


def test_fastapi_answers_and_records_while_a_slow_async_callback_runs(fastapi_app):
    url, tmp = fastapi_app
    for _ in range(3):
        request(f"{url}/track", {"user_id": "gated-1", "event": "report_generated"})
    wait_for((tmp / "gate.gated-1.started").exists, 30, "the callback to start")
    # the callback is awaiting on the app's loop; the app keeps answering and recording
    for n in range(10):
        assert request(f"{url}/ping", timeout=10) == (200, {"pong": "ok"})
        assert request(f"{url}/track", {"user_id": f"fa-during{n}", "event": "opened"},
                       timeout=10)[0] == 200
    assert not [line for line in lines(tmp / "callbacks.txt") if "gated-1" in line]
    (tmp / "gate.gated-1").touch()
    wait_for(lambda: [line for line in lines(tmp / "callbacks.txt") if "gated-1" in line], 30,
             "the callback to finish")


def test_fastapi_a_burst_of_writes_is_each_recorded_once(fastapi_app):
    url, tmp = fastapi_app
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda n: request(f"{url}/track", {
            "user_id": f"fa-burst{n % 10}", "event": "report_generated"}), range(60)))
    assert all(status == 200 for status, _ in answers)
    assert sum(len(body["qualified"]) for _, body in answers) == 10
    db = str(tmp / "pql.db")
    assert rows(db, "SELECT count(*) FROM events WHERE user_id LIKE 'fa-burst%'") == [(60,)]
    assert len([q for q in qualified(db) if q[2].startswith("fa-burst")]) == 10


# -- Flask + gunicorn --preload ----------------------------------------------------------------

@pytest.fixture(scope="module")
def flask_app(tmp_path_factory, segment):
    tmp = tmp_path_factory.mktemp("flask")
    env = app_env(tmp, segment)
    port = free_port()
    # two connections at most per worker (an idle one counts until --keep-alive expires):
    # a worker holding two stops accepting, which lets the test reach each worker for sure
    command = [str(BIN / "gunicorn"), "--preload", "-w", "2", "--threads", "2",
               "--worker-connections", "2", "--keep-alive", "120",
               "-b", f"127.0.0.1:{port}", "--chdir", str(EXAMPLES / "flask_app"), "app:app"]
    with serving(command, env, port) as url:
        yield url, tmp, port


def accept_queue(port: int) -> int:
    """Connections to ``port`` that no worker has accepted yet (the listening socket's
    queue: its rx_queue in /proc/net/tcp)."""
    waiting = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:  # LISTEN
                waiting += int(fields[4].split(":")[1], 16)
    return waiting


def pinned(port: int, count: int) -> list[socket.socket]:
    """``count`` open connections, each accepted by a worker and waiting to send."""
    connections = [socket.create_connection(("127.0.0.1", port), timeout=30)
                   for _ in range(count)]
    wait_for(lambda: accept_queue(port) == 0, 30, "the workers to accept every connection")
    return connections


def post_on(connection: socket.socket, path: str, body: dict) -> None:
    data = json.dumps(body).encode()
    connection.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                       f"Connection: close\r\n\r\n".encode() + data)


def answer_on(connection: socket.socket) -> tuple[int, dict]:
    with connection:
        raw = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_flask_under_gunicorn_preload_qualifies_each_user_once(flask_app, segment):
    url, tmp, port = flask_app
    users = [f"fl-{n}" for n in range(12)]
    # Three connections held open before any sends: a worker takes two at most, so both
    # workers hold one or more (whichever way the kernel hands them out). The first user's
    # three qualifying events go one on each, at once: the two processes race to record
    # them, and the user must qualify once.
    connections = pinned(port, 3)
    for connection in connections:
        post_on(connection, "/track", {"user_id": users[0], "event": "report_generated"})
    first = [answer_on(connection) for connection in connections]
    assert [status for status, _ in first] == [200, 200, 200]
    assert len({body["pid"] for _, body in first}) == 2  # both forked workers recorded
    assert sorted(rule for _, body in first for rule in body["qualified"]) == ["reports"]
    with ThreadPoolExecutor(8) as pool:  # then a burst, spread however the kernel likes
        answers = list(pool.map(lambda n: request(f"{url}/track", {
            "user_id": users[n % 12], "event": "report_generated"}), range(12 * 4)))
    assert all(status == 200 for status, _ in answers)
    db = str(tmp / "pql.db")
    assert qualified(db) == sorted(("reports", "user", u) for u in users)
    ids = {qid for (qid,) in rows(db, "SELECT id FROM qualifications")}
    wait_for(lambda: ids <= {m["messageId"] for m in lead_qualified(segment)}, 30,
             "Segment to receive every qualification")
    sent = [m["messageId"] for m in lead_qualified(segment) if m["messageId"] in ids]
    assert sorted(sent) == sorted(ids)  # once each
    wait_for(lambda: len(lines(tmp / "callbacks.txt")) >= len(ids), 30, "the callbacks")
    assert sorted(line.split()[0] for line in lines(tmp / "callbacks.txt")) == sorted(ids)
    assert request(f"{url}/health")[1]["failed"] == 0


# -- Django: Client in AppConfig.ready, callbacks by name, evaluate from a command ----------

@pytest.fixture(scope="module")
def django_app(tmp_path_factory, segment):
    tmp = tmp_path_factory.mktemp("django")
    env = app_env(tmp, segment)
    port = free_port()
    command = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}",
               "--chdir", str(EXAMPLES / "django_app"), "pqlsite.wsgi"]
    with serving(command, env, port) as url:
        yield url, tmp, env


def test_django_tracks_and_delivers_to_callbacks_named_in_settings(django_app, segment):
    url, tmp, _ = django_app
    answers = [request(f"{url}/track", {"user_id": "dj-ada", "event": "report_generated"})
               for _ in range(3)]
    assert [body["qualified"] for _, body in answers] == [[], [], ["reports"]]
    db = str(tmp / "pql.db")
    [(qid,)] = rows(db, "SELECT id FROM qualifications WHERE subject_id = 'dj-ada'")
    wait_for(lambda: qid in {m["messageId"] for m in lead_qualified(segment)}, 30,
             "Segment to receive the qualification")
    wait_for(lambda: [line.split()[0] for line in lines(tmp / "callbacks.txt")] == [qid], 30,
             "pqlapp.callbacks.notify_sales")


def test_django_management_command_evaluates_time_based_rules(django_app, segment):
    url, tmp, env = django_app
    for user in ("dj-t1", "dj-t2"):
        assert request(f"{url}/track", {"user_id": user, "event": "trial_started"})[0] == 200
    db = str(tmp / "pql.db")
    assert not [q for q in qualified(db) if q[0] == "stayed"]  # the trial is too recent
    as_of = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    done = subprocess.run([sys.executable, "manage.py", "pql_evaluate", "--as-of", as_of],
                          cwd=EXAMPLES / "django_app", env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 new qualification(s)" in done.stdout
    assert [q for q in qualified(db) if q[0] == "stayed"] == [
        ("stayed", "user", "dj-t1"), ("stayed", "user", "dj-t2")]
    ids = {qid for (qid,) in rows(db, "SELECT id FROM qualifications WHERE rule = 'stayed'")}
    assert ids <= {m["messageId"] for m in lead_qualified(segment)}  # delivered before exit
    assert ids <= {line.split()[0] for line in lines(tmp / "callbacks.txt")}
