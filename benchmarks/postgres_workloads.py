"""The SQLite benchmarks' workloads on PostgreSQL, each against PostgreSQL's own bare operation.

Used by ``benchmarks/postgres.py`` (``python benchmarks/run.py --only PostgreSQL``). Each
part takes the server's URL, builds its data the way the SQLite benchmark does (the same
rules, users, event kinds and sizes: ``track.populate`` writes a file and ``pqlsdk copy``
moves it into a schema of its own), and alternates rounds of pqlsdk and of the bare
psycopg operation, reporting the median and the range of the per-round ratios:

- :func:`hot_path`: ``track()`` for an event no rule reads, a user's first event, a returning
  light user and a heavy user, against a bare autocommit INSERT into a copy of the same
  events table (same indexes, same size); and the light user's CPU per call (client
  process + its server backend) against the bare INSERT's;
- :func:`forwarding`: ``forward_events=True`` (and delivery on) against delivery off;
- :func:`threads`: 8 threads with shared commits against a transaction per call, and the
  cost per event against one bare autocommit INSERT;
- :func:`bulk_import`: the import of the same JSONL against a bare ``executemany`` of the
  same rows in one transaction.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

import threads as thread_bench
from delivery import DELIVERY_RULES, Recorder
from import_bench import history, shuffled_copy
from segment.analytics import Client as SegmentClient

import pqlsdk
from pqlsdk.copy import copy_file
from pqlsdk.importer import import_jsonl
from pqlsdk.timestamps import to_micros

from track import NOW, RULES, per_call, populate

Rows = list[tuple[str, str]]


def ratio_rows(ratios: list[float], what: str = "rounds") -> str:
    """``1.23x (range 1.10-1.40 over 5 rounds)``."""
    return (f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f} "
            f"over {len(ratios)} {what})")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used (0 for one that ended)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _drop(url: str, *schemas: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextmanager
def _populated(url: str, events: int, heavy: int, copies: int
               ) -> Iterator[tuple[list[str], list[str]]]:
    """``copies`` schemas holding the same ``events`` events (``track.populate``'s users,
    copied by ``pqlsdk copy``): yields their names and the light users; drops them after."""
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    schemas = [_schema("bench") for _ in range(copies)]
    try:
        path = os.path.join(folder, "pql.db")
        users = populate(path, events, heavy)
        for schema in schemas:
            pqlsdk.Client(url, schema=schema).close()
            copy_file(path, url, schema=schema)
        shutil.rmtree(folder)
        yield schemas, users
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _drop(url, *schemas)


def _clone_events(conn: Any, source: str) -> str:
    """A schema whose ``events`` table is a copy of ``source``'s (same indexes, same rows)."""
    schema = _schema("bare")
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"CREATE TABLE {schema}.events (LIKE {source}.events INCLUDING ALL)")
    conn.execute(f"INSERT INTO {schema}.events SELECT * FROM {source}.events")
    conn.execute(f"SELECT setval(pg_get_serial_sequence('{schema}.events', 'id'), "
                 f"(SELECT max(id) FROM {schema}.events))")
    conn.execute(f"ANALYZE {schema}.events")
    return schema


def hot_path(url: str, events: int, rounds: int, calls: int) -> Rows:
    """``track.py``'s workload with ``events`` events stored (see the module's docstring)."""
    import psycopg

    heavy = min(events // 5, 100_000)
    setup = time.perf_counter()
    with _populated(url, events, heavy, 1) as ([schema], users), \
            psycopg.connect(url, autocommit=True) as base:
        bare_schema = _clone_events(base, schema)
        setup = time.perf_counter() - setup
        try:
            client = pqlsdk.Client(url, schema=schema, rules=RULES)
            insert = (f"INSERT INTO {bare_schema}.events (tenant_key, message_id, user_id, "
                      f"account_id, event, ts, properties) VALUES (%s, %s, %s, %s, %s, %s, %s)")
            tenant = {u: f"acct-{i // 5}" for i, u in enumerate(users)}
            rng = random.Random(11)
            ts = to_micros(NOW)
            newcomers = iter(range(10**9))

            def bare() -> None:
                user = rng.choice(users)
                base.execute(insert, (tenant[user], None, user, tenant[user],
                                      "report_generated", ts, "{}"))

            sides: dict[str, Callable[[], object]] = {
                "light": lambda: client.track(rng.choice(users), "report_generated",
                                              timestamp=NOW),
                "heavy": lambda: client.track("heavy", "report_generated", timestamp=NOW),
                "unread": lambda: client.track(rng.choice(users), "page_viewed",
                                               timestamp=NOW),
                "first": lambda: client.track(f"new-{next(newcomers)}", "report_generated",
                                              timestamp=NOW),
            }
            ours_pid = client.store._conn.info.backend_pid
            bare_pid = base.info.backend_pid

            def timed(fn: Callable[[], object], pid: int) -> tuple[float, float]:
                """(seconds, client + server backend CPU seconds) per call."""
                cpu = time.process_time() + cpu_seconds([pid])
                took = per_call(fn, calls)
                return took, (time.process_time() + cpu_seconds([pid]) - cpu) / calls

            ratios: dict[str, list[float]] = {name: [] for name in (*sides, "cpu")}
            base_times = []
            for _ in range(rounds):
                b, b_cpu = timed(bare, bare_pid)
                times = {}
                for name, fn in sides.items():
                    times[name], cpu = timed(fn, ours_pid)
                    if name == "light":
                        light_cpu = cpu
                again, again_cpu = timed(bare, bare_pid)
                b, b_cpu = (b + again) / 2, (b_cpu + again_cpu) / 2
                base_times.append(b)
                for name, took in times.items():
                    ratios[name].append(took / b)
                if b_cpu > 0:
                    ratios["cpu"].append(light_cpu / b_cpu)
            client.close()
        finally:
            base.execute(f"DROP SCHEMA {bare_schema} CASCADE")
    heavy_light = [h / w for h, w in zip(ratios["heavy"], ratios["light"], strict=True)]
    return [
        (f"bare autocommit INSERT into {events:,} events, same indexes (baseline)",
         f"{statistics.median(base_times) * 1e6:.0f} us/call (setup {setup:.0f}s)"),
        (f"track(), an event no rule reads ({events:,} events)", ratio_rows(ratios["unread"])),
        (f"track(), a user's first event, three rules ({events:,} events; goal <= 1.5x)",
         ratio_rows(ratios["first"])),
        (f"track(), light user, three rules ({events:,} events; goal <= 1.3x)",
         ratio_rows(ratios["light"])),
        (f"track(), heavy user ({heavy:,} events of that kind; {events:,} events)",
         f"{ratio_rows(ratios['heavy'])}; {statistics.median(heavy_light):.2f}x light"),
        (f"track(), light user, CPU per call (client + server backend; {events:,} events)",
         ratio_rows(ratios["cpu"]) if ratios["cpu"] else "not measured"),
    ]


def forwarding(url: str, events: int, rounds: int, calls: int) -> Rows:
    """``delivery.py``'s on/off workload: delivery on and ``forward_events=True`` against
    delivery off, each client on its own copy of the same ``events`` events."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    segment = SegmentClient(write_key="bench", host=f"http://127.0.0.1:{server.server_address[1]}",
                            sync_mode=True)
    try:
        with _populated(url, events, 0, 3) as ([off, on, mirror], users):
            clients = {
                "off": pqlsdk.Client(url, schema=off, rules=DELIVERY_RULES),
                "on": pqlsdk.Client(url, schema=on, rules=DELIVERY_RULES, segment=segment,
                                    on_qualified={"bench": lambda q: None}),
                "mirror": pqlsdk.Client(url, schema=mirror, rules=DELIVERY_RULES,
                                        segment=segment, forward_events=True,
                                        on_qualified={"bench": lambda q: None}),
            }
            rng = random.Random(3)

            def caller(client: pqlsdk.Client) -> Callable[[], object]:
                return lambda: client.track(rng.choice(users), "report_generated",
                                            timestamp=NOW)

            ratios: dict[str, list[float]] = {"on": [], "mirror": []}
            for _ in range(rounds):
                first = per_call(caller(clients["off"]), calls)
                taken = {name: per_call(caller(clients[name]), calls) for name in ratios}
                off_time = (first + per_call(caller(clients["off"]), calls)) / 2
                for name, took in taken.items():
                    ratios[name].append(took / off_time)
            qualified = len(clients["on"].qualifications())
            for client in clients.values():
                client.close(timeout=30)
    finally:
        server.shutdown()
    total = rounds * calls
    return [
        (f"track(), delivery on vs off ({qualified:,} of {total:,} calls qualify: "
         "a callback row and a Segment row each)", ratio_rows(ratios["on"])),
        ("track(), forward_events=True vs delivery off (a row per call)",
         ratio_rows(ratios["mirror"])),
    ]


def threads(url: str, rounds: int, calls: int) -> Rows:
    """``threads.py``'s comparison on PostgreSQL: 8 threads on distinct users, shared
    commits vs a transaction per call; the baseline is one thread's bare autocommit
    INSERTs on the same server."""
    schemas = [_schema("threads") for _ in range(2)]
    shared = pqlsdk.Client(url, schema=schemas[0], rules=RULES)
    single = pqlsdk.Client(url, schema=schemas[1], rules=RULES, shared_commits=False)
    try:
        return [(what.removeprefix("PostgreSQL: "), figure) for what, figure in
                thread_bench._compare("PostgreSQL", shared, single,
                                      thread_bench._bare_postgres(url), rounds, calls)]
    finally:
        shared.close()
        single.close()
        _drop(url, *schemas)


def bulk_import(url: str, count: int, rounds: int) -> Rows:
    """``import_bench.py``'s file (in time order and shuffled) imported into a new schema,
    against a bare ``executemany`` of the same rows in one transaction into a new schema,
    alternating."""
    import psycopg

    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    try:
        ordered = os.path.join(folder, "history.jsonl")
        rows = history(ordered, count)
        shuffled = shuffled_copy(ordered)

        def bare() -> float:
            schema = _schema("bare")
            pqlsdk.Client(url, schema=schema).close()
            try:
                with psycopg.connect(url) as conn:
                    began = time.perf_counter()
                    with conn.cursor() as cur:
                        # the same rows as the import writes them: in the tenant of the
                        # account, else the user
                        cur.executemany(
                            f"INSERT INTO {schema}.events (tenant_key, message_id, user_id, "
                            f"account_id, event, ts, properties) "
                            f"VALUES (coalesce(%(a)s, %(u)s), %(m)s, %(u)s, %(a)s, %(e)s, "
                            f"%(t)s, %(p)s)",
                            ({"m": m, "u": u, "a": a, "e": e, "t": t, "p": p}
                             for m, u, a, e, t, p in rows))
                    conn.commit()
                    return time.perf_counter() - began
            finally:
                _drop(url, schema)

        def imported(path: str) -> tuple[float, int]:
            schema = _schema("import")
            client = pqlsdk.Client(url, schema=schema, rules=RULES)
            try:
                began = time.perf_counter()
                result = import_jsonl(client, path)
                took = time.perf_counter() - began
                assert result.applied == count, (result.applied, count)
                return took, result.qualifications
            finally:
                client.close()
                _drop(url, schema)

        ratios: dict[str, list[float]] = {"ordered": [], "shuffled": []}
        bare_rates, rates, qualified = [], [], 0
        for _ in range(rounds):
            b = bare()
            took, qualified = imported(ordered)
            took_s, _ = imported(shuffled)
            b = (b + bare()) / 2
            bare_rates.append(count / b)
            rates.append(count / took)
            ratios["ordered"].append(b / took)
            ratios["shuffled"].append(b / took_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [
        (f"bare executemany of {count:,} events, one transaction (baseline)",
         f"{statistics.median(bare_rates):,.0f} rows/s"),
        (f"import of the same {count:,} events as JSONL, in time order, three rules "
         f"({qualified:,} qualifications)",
         f"{statistics.median(rates):,.0f} msg/s = {ratio_rows(ratios['ordered'])} "
         f"the baseline rate"),
        (f"import of the same {count:,} events shuffled (sorted runs spilled and merged)",
         f"{ratio_rows(ratios['shuffled'])} the baseline rate"),
    ]
