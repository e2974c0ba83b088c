"""AsyncClient: awaitable calls on one worker thread, in order, exactly once, never
blocking the event loop; async def callbacks on the application's loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import pqlsdk
from pqlsdk import event

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
REPORTS = [pqlsdk.Rule("reports", event("report_generated", at_least=3), stage="mql")]


def test_the_same_methods_as_client_each_awaitable(db_path):
    async def main():
        async with pqlsdk.AsyncClient(db_path, REPORTS, sync_mode=True) as client:
            await client.identify("ada", {"plan": "trial"}, account_id="acme")
            await client.group("ada", "acme", {"seats": 3})
            for minute in range(3):
                found = await client.track("ada", "report_generated",
                                           timestamp=T0 + timedelta(minutes=minute))
            [q] = found
            assert (await client.status("ada")).stage == "mql"
            assert "reports" in await client.explain("ada")
            assert await client.qualifications() == [q]
            assert await client.evaluate() == []
            assert {c.to_stage for c in await client.history("ada")} == {"lead", "mql"}
            change = await client.set_stage("ada", stage="sql", reason="call booked")
            assert change.to_stage == "sql"
            assert (await client.export("ada"))["traits"] == {"plan": "trial"}
            assert (await client.health()).pending == 0
            assert await client.deliveries() == []
            assert await client.retry_failed() == 0
            assert await client.flush(timeout=1) is True
            await client.forget("ada")
            assert await client.qualifications() == []
        return client

    client = asyncio.run(main())
    with pytest.raises(pqlsdk.StoreClosed):
        client.client.status("ada")


def test_every_public_method_of_client_is_awaitable_on_async_client(db_path):
    import inspect

    async def main():
        async with pqlsdk.AsyncClient(db_path, REPORTS) as client:
            for name in dir(pqlsdk.Client):
                if name.startswith("_"):
                    continue
                method = getattr(client, name)
                if name.startswith("on_"):
                    assert not inspect.iscoroutinefunction(method), name  # registration
                else:
                    assert inspect.iscoroutinefunction(method), name
            # one not spelled out in AsyncClient goes through the generic wrapper
            assert "deliver_pending" not in vars(pqlsdk.AsyncClient)
            await client.deliver_pending()
            assert client.sync_mode is False  # attributes as they are
            with pytest.raises(AttributeError):
                client.no_such_method  # noqa: B018

    asyncio.run(main())


def test_calls_run_in_order_on_one_thread_exactly_once(db_path):
    threads = set()

    async def main():
        client = pqlsdk.AsyncClient(db_path, REPORTS)
        original = client.client.track

        def track(*args, **kwargs):
            threads.add(threading.current_thread().name)
            return original(*args, **kwargs)

        client.client.track = track
        results = await asyncio.gather(*[
            client.track("ada", "report_generated", {"n": n}, message_id=f"m{n % 20}",
                         timestamp=T0 + timedelta(seconds=n))
            for n in range(40)])
        await client.close()
        return results

    results = asyncio.run(main())
    assert len(threads) == 1 and threads != {threading.current_thread().name}
    created = [q for found in results for q in found]
    assert len(created) == 1
    assert results[2] == created  # the third distinct call met the rule: order was kept
    with sqlite3.connect(db_path) as conn:
        ns = [n for (n,) in conn.execute(
            "SELECT json_extract(properties, '$.n') FROM events ORDER BY id")]
    assert ns == list(range(20))  # the duplicates (same message_id) were stored once


def test_the_loop_keeps_running_while_another_process_holds_the_write_lock(db_path):
    pqlsdk.Client(db_path, REPORTS).close()
    holder = sqlite3.connect(db_path, isolation_level=None)

    async def main():
        client = pqlsdk.AsyncClient(db_path, REPORTS, busy_timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        task = asyncio.ensure_future(client.track("ada", "report_generated"))
        ticks = 0
        while ticks < 20:  # other coroutines run while track() waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()
        holder.execute("COMMIT")
        assert await task == []
        await client.close()
        return ticks

    assert asyncio.run(main()) == 20
    holder.close()


def test_async_callbacks_run_on_the_applications_loop(db_path):
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        done = asyncio.Event()

        async def notify(q):
            seen.append((q.subject_id, asyncio.get_running_loop() is loop))
            done.set()

        def plain(q):
            seen.append((q.subject_id, "plain"))

        client = pqlsdk.AsyncClient(db_path, REPORTS, on_qualified=[notify, plain])
        for minute in range(3):
            await client.track("ada", "report_generated",
                               timestamp=T0 + timedelta(minutes=minute))
        await asyncio.wait_for(done.wait(), 10)
        assert await client.flush(timeout=5) is True
        await client.close()
        return seen

    assert sorted(asyncio.run(main()), key=str) == [("ada", "plain"), ("ada", True)]


def test_async_callbacks_in_sync_mode_finish_before_track_returns(db_path):
    async def main():
        seen = []
        client = pqlsdk.AsyncClient(db_path, REPORTS, sync_mode=True)

        @client.on_qualified
        async def notify(q):
            await asyncio.sleep(0.01)
            seen.append(q.id)

        for minute in range(3):
            found = await client.track("ada", "report_generated",
                                       timestamp=T0 + timedelta(minutes=minute))
        assert seen == [found[0].id]
        await client.close()

    asyncio.run(main())


def test_an_async_callback_left_pending_is_delivered_after_the_loop_is_gone(db_path):
    seen, loop_gone = [], threading.Event()

    async def notify(q):
        if not loop_gone.is_set():
            raise RuntimeError("not while the application's loop runs")
        seen.append((q.subject_id, _running_loop_id()))

    async def main():
        client = pqlsdk.AsyncClient(db_path, REPORTS, on_qualified={"notify": notify},
                                    max_backoff=0.2)
        for minute in range(3):
            await client.track("ada", "report_generated",
                               timestamp=T0 + timedelta(minutes=minute))
        return client, id(asyncio.get_running_loop())

    client, app_loop = asyncio.run(main())
    loop_gone.set()
    assert client.client.flush(timeout=5) is True  # the loop is closed: a loop of its own
    assert [subject for subject, _ in seen] == ["ada"]
    assert seen[0][1] not in (None, app_loop)
    client.client.close()


def _running_loop_id():
    try:
        return id(asyncio.get_running_loop())
    except RuntimeError:
        return None


def test_validation_errors_are_raised_from_the_await(db_path):
    async def main():
        async with pqlsdk.AsyncClient(db_path, REPORTS) as client:
            with pytest.raises(pqlsdk.ValidationError):
                await client.track("", "report_generated")

    asyncio.run(main())


def test_named_callbacks_register_on_the_async_client_as_on_the_client(db_path):
    seen = []

    async def main():
        async with pqlsdk.AsyncClient(db_path, REPORTS, sync_mode=True) as client:
            @client.on_qualified(name="crm")
            async def to_crm(q):
                seen.append(q.subject_id)

            for minute in range(3):
                await client.track("ada", "report_generated",
                                   timestamp=T0 + timedelta(minutes=minute))
            return [d.destination for d in await client.deliveries()]

    assert asyncio.run(main()) == []
    assert seen == ["ada"]
    with sqlite3.connect(db_path) as conn:  # nothing is left for the name in the outbox
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_close_keeps_its_deadline_behind_a_call_that_hangs(db_path):
    release, entered = threading.Event(), threading.Event()

    def crm(q):
        entered.set()
        release.wait(30)

    async def main():
        client = pqlsdk.AsyncClient(db_path, REPORTS, on_qualified={"crm": crm})
        client.client._worker.stop(1)  # only the flush below delivers, in the writer thread
        for minute in range(3):
            await client.track("ada", "report_generated",
                               timestamp=T0 + timedelta(minutes=minute))
        stuck = asyncio.create_task(client.flush())  # no timeout: runs the hanging callback
        await asyncio.to_thread(entered.wait, 10)
        started = time.monotonic()
        assert await client.flush(timeout=0.5) is False
        assert await client.close(timeout=1) is False
        elapsed = time.monotonic() - started
        release.set()
        await stuck
        return elapsed

    assert asyncio.run(main()) < 4
