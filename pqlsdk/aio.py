"""``AsyncClient``: the Client for asyncio applications (FastAPI, Starlette, aiohttp).

Every call runs on one worker thread of the AsyncClient's own (a ``ThreadPoolExecutor``
with ``max_workers=1`` around a :class:`~pqlsdk.Client`): the event loop only awaits, so
a write that waits for another process's lock, or a slow ``sync_mode`` delivery, never
stalls it; and one thread is one writer, so calls keep the order they were awaited in and
each is applied exactly once. It wraps the public Client API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import sqlite_utils

from .client import Callback, Client
from .health import Health
from .models import Qualification, StageChange, Status
from .outbox import Delivery
from .rules import Rule

T = TypeVar("T")


class AsyncClient:
    """:class:`~pqlsdk.Client` with every method awaitable; the same arguments.

    >>> async with pqlsdk.AsyncClient(database="pql.db", rules="pql_rules.toml") as client:
    ...     await client.track("u1", "report_generated")
    []

    Opening the file happens in the constructor (make it at startup, e.g. in a FastAPI
    lifespan). Callbacks may be ``async def``: while the loop the AsyncClient was first
    used on runs, they run on it (so they may use the application's loop-bound clients);
    after it stopped, on a loop of their own in the delivery thread. A call whose await is
    cancelled before it started is not applied; once started, it completes.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | sqlite_utils.Database = "pql.db",
        rules: str | os.PathLike[str] | list[Rule] | dict[str, Any] | None = None,
        on_qualified: Callback | Iterable[Callback] | dict[str, Callback] | None = None,
        segment: Any = None,
        forward_events: bool = False,
        sync_mode: bool = False,
        **options: Any,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        wrapped: Any
        if isinstance(on_qualified, dict):  # {name: callback}: names kept
            wrapped = {name: self._on_loop(c) for name, c in on_qualified.items()}
        else:
            callbacks = [on_qualified] if callable(on_qualified) else list(on_qualified or [])
            wrapped = [self._on_loop(c) for c in callbacks]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pqlsdk-async")
        #: The wrapped :class:`~pqlsdk.Client` (for code that must call it synchronously).
        self.client = Client(database, rules, wrapped, segment, forward_events, sync_mode,
                             **options)

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is None or not self._loop.is_running():
            self._loop = loop
        return await loop.run_in_executor(self._executor,
                                          functools.partial(function, *args, **kwargs))

    def _on_loop(self, callback: Any) -> Any:
        """An ``async def`` callback as one the delivery thread calls: its coroutine runs on
        this AsyncClient's loop while it runs, else is handed back (and run on a loop of
        its own). The name (the callback's identity in the outbox) is kept."""
        if not inspect.iscoroutinefunction(callback):
            return callback

        @functools.wraps(callback)
        def deliver(qualification: Qualification) -> Any:
            loop = self._loop
            coroutine = callback(qualification)
            if loop is None or not loop.is_running() or _on_thread_of(loop):
                return coroutine  # CallbackSink runs it with asyncio.run
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
            while True:
                try:
                    return future.result(timeout=0.1)
                except TimeoutError:
                    if not loop.is_running():
                        future.cancel()
                        raise RuntimeError("the event loop stopped during the callback"
                                           ) from None

        return deliver

    # -- registration ---------------------------------------------------------------------

    def on_qualified(self, callback: Callback | None = None, *, name: str | None = None
                     ) -> Any:
        """Register ``callback(qualification)`` (a function or an ``async def``):
        ``client.on_qualified(fn)``, ``@client.on_qualified`` or
        ``@client.on_qualified(name="crm")``. See :meth:`pqlsdk.Client.on_qualified`."""
        if callback is None:
            def decorator(fn: Callback) -> Callback:
                self.client.on_qualified(self._on_loop(fn), name=name)
                return fn
            return decorator
        self.client.on_qualified(self._on_loop(callback), name=name)
        return callback

    # -- recording --------------------------------------------------------------------------

    async def track(self, user_id: str | None, event: str,
                    properties: dict[str, Any] | None = None, **options: Any
                    ) -> list[Qualification]:
        """See :meth:`pqlsdk.Client.track` (``account_id``, ``timestamp``, ``message_id``,
        ``anonymous_id``, ``context``, ``integrations``)."""
        return await self._run(self.client.track, user_id, event, properties, **options)

    async def identify(self, user_id: str | None, traits: dict[str, Any] | None = None,
                       **options: Any) -> list[Qualification]:
        """See :meth:`pqlsdk.Client.identify`."""
        return await self._run(self.client.identify, user_id, traits, **options)

    async def group(self, user_id: str, account_id: str, traits: dict[str, Any] | None = None,
                    **options: Any) -> list[Qualification]:
        """See :meth:`pqlsdk.Client.group`."""
        return await self._run(self.client.group, user_id, account_id, traits, **options)

    async def evaluate(self, *, as_of: datetime | str | None = None) -> list[Qualification]:
        """See :meth:`pqlsdk.Client.evaluate`."""
        return await self._run(self.client.evaluate, as_of=as_of)

    async def set_stage(self, user_id: str | None = None, *, stage: str,
                        account_id: str | None = None, reason: str | None = None,
                        timestamp: datetime | str | None = None, **options: Any
                        ) -> StageChange | None:
        """See :meth:`pqlsdk.Client.set_stage`."""
        return await self._run(self.client.set_stage, user_id, stage=stage,
                               account_id=account_id, reason=reason, timestamp=timestamp,
                               **options)

    async def forget(self, user_id: str) -> None:
        """See :meth:`pqlsdk.Client.forget`."""
        await self._run(self.client.forget, user_id)

    async def prune(self, *, as_of: datetime | str | None = None) -> int:
        """See :meth:`pqlsdk.Client.prune`."""
        return await self._run(self.client.prune, as_of=as_of)

    # -- reading ----------------------------------------------------------------------------

    async def status(self, user_id: str | None = None, *, account_id: str | None = None,
                     as_of: datetime | str | None = None) -> Status:
        """See :meth:`pqlsdk.Client.status`."""
        return await self._run(self.client.status, user_id, account_id=account_id,
                               as_of=as_of)

    async def explain(self, user_id: str | None = None, *, account_id: str | None = None,
                      as_of: datetime | str | None = None) -> str:
        """See :meth:`pqlsdk.Client.explain`."""
        return await self._run(self.client.explain, user_id, account_id=account_id,
                               as_of=as_of)

    async def qualifications(self, *, since: datetime | str | None = None,
                             rule: str | None = None, shadow: bool | None = False
                             ) -> list[Qualification]:
        """See :meth:`pqlsdk.Client.qualifications`."""
        return await self._run(self.client.qualifications, since=since, rule=rule,
                               shadow=shadow)

    async def history(self, user_id: str | None = None, *, account_id: str | None = None
                      ) -> list[StageChange]:
        """See :meth:`pqlsdk.Client.history`."""
        return await self._run(self.client.history, user_id, account_id=account_id)

    async def export(self, user_id: str) -> dict[str, Any]:
        """See :meth:`pqlsdk.Client.export`."""
        return await self._run(self.client.export, user_id)

    async def score(self, user_id: str | None = None, **options: Any) -> Any:
        """See :meth:`pqlsdk.Client.score`."""
        return await self._run(self.client.score, user_id, **options)

    async def scores(self, **options: Any) -> list[float]:
        """See :meth:`pqlsdk.Client.scores`."""
        return await self._run(self.client.scores, **options)

    async def funnel(self, **options: Any) -> Any:
        """See :meth:`pqlsdk.Client.funnel`."""
        return await self._run(self.client.funnel, **options)

    async def rule_report(self, **options: Any) -> Any:
        """See :meth:`pqlsdk.Client.rule_report`."""
        return await self._run(self.client.rule_report, **options)

    async def backtest(self, rules: Any = None, **options: Any) -> Any:
        """See :meth:`pqlsdk.Client.backtest`."""
        return await self._run(self.client.backtest, rules, **options)

    async def suggest(self, **options: Any) -> Any:
        """See :meth:`pqlsdk.Client.suggest`."""
        return await self._run(self.client.suggest, **options)

    # -- delivery ---------------------------------------------------------------------------

    async def health(self) -> Health:
        """See :meth:`pqlsdk.Client.health`."""
        return await self._run(self.client.health)

    async def deliveries(self, *, status: str | None = None) -> list[Delivery]:
        """See :meth:`pqlsdk.Client.deliveries`."""
        return await self._run(self.client.deliveries, status=status)

    async def retry_failed(self) -> int:
        """See :meth:`pqlsdk.Client.retry_failed`."""
        return await self._run(self.client.retry_failed)

    async def flush(self, timeout: float | None = None) -> bool:
        """See :meth:`pqlsdk.Client.flush`. With a ``timeout`` it runs on a thread of its
        own, so a long call queued on the writer thread cannot hold it past its deadline."""
        if timeout is None:
            return await self._run(self.client.flush, None)
        return await asyncio.to_thread(self.client.flush, timeout)

    async def close(self, timeout: float = 5.0) -> bool:
        """Let the calls already made finish (for at most ``timeout`` seconds), then flush
        and close the Client with the time left, on a thread of its own: it returns within
        about ``timeout`` whatever a queued call does. See :meth:`pqlsdk.Client.close`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queued = loop.run_in_executor(self._executor, lambda: None)  # after those calls
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(queued), timeout)
        try:
            return await asyncio.to_thread(self.client.close,
                                           max(0.0, deadline - loop.time()))
        finally:
            self._executor.shutdown(wait=False)

    def __getattr__(self, name: str) -> Any:
        """Any other public method of the Client, awaitable (registrations, ``on_*``,
        stay plain calls); its attributes as they are."""
        if name.startswith("_") or name == "client":
            raise AttributeError(name)
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute
        if name.startswith("on_"):
            @functools.wraps(attribute)
            def register(callback: Any = None, *args: Any, **kwargs: Any) -> Any:
                found = attribute(None if callback is None else self._on_loop(callback),
                                  *args, **kwargs)
                return callback if callback is not None else found

            return register

        @functools.wraps(attribute)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._run(attribute, *args, **kwargs)

        return call

    async def __aenter__(self) -> AsyncClient:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
