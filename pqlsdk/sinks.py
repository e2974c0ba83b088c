"""Destinations: the application's callbacks and Segment.

A sink turns outbox rows into deliveries and reports, per row, whether the destination
acknowledged it. Segment messages are built when the row is written (inside the
transaction), so a retry sends the very same message, ``messageId`` included.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from segment.analytics.request import APIError, post
from segment.analytics.version import VERSION as SEGMENT_VERSION

from .models import Qualification, StageChange

log = logging.getLogger("pqlsdk")

#: The Segment event a qualification is forwarded as.
QUALIFIED_EVENT = "Lead Qualified"
#: How many messages go in one Segment batch (Segment's own ``upload_size`` default).
SEGMENT_BATCH = 100
#: Segment refuses batches over 500 KB; stay under it.
SEGMENT_BATCH_BYTES = 450_000


class Fatal(Exception):
    """A destination refused a delivery for good (e.g. Segment answered 400): do not retry."""


def callback_name(callback: Callable[..., Any]) -> str:
    """The outbox destination of a callback: ``callback:module.qualname``.

    The name is the callback's identity across restarts: rows written for it are delivered
    by any Client (in any process) that registers a callback of the same name.
    """
    module = getattr(callback, "__module__", None) or "?"
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    return f"callback:{module}.{name}"


class CallbackSink:
    """Calls one application callback with the :class:`Qualification` of each row."""

    def __init__(self, callback: Callable[[Qualification], Any]) -> None:
        self.callback = callback

    def deliver(self, items: list[Qualification | None]) -> list[Exception | None]:
        """Call the callback once per qualification; an exception fails only that one."""
        results: list[Exception | None] = []
        for qualification in items:
            try:
                if qualification is not None:
                    result = self.callback(qualification)
                    if inspect.isawaitable(result):
                        run_awaitable(result)
                results.append(None)
            except Exception as exc:  # the application's code: anything may happen
                results.append(exc)
        return results


def run_awaitable(awaitable: Any) -> Any:
    """Run an ``async def`` callback's coroutine to completion from the delivery thread.

    The delivery thread (the worker, or the caller in ``sync_mode``) runs no event loop, so
    the coroutine gets one of its own with ``asyncio.run``; if this thread does run a loop
    (a sync_mode Client called from ``async def`` code), it runs on a new thread's loop so
    as not to re-enter the running one. :class:`pqlsdk.AsyncClient` instead runs its async
    callbacks on the application's own loop.
    """

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(wait())
        except BaseException as exc:  # handed back to the delivering thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="pqlsdk-async-callback", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class SegmentSink:
    """Posts rows' messages to Segment in batches with the application's Segment client's
    own transport and settings (write key, host, gzip, timeout, proxies, OAuth).

    pqlsdk does not hand messages to that client's in-memory queue: it drops messages when
    full and reports failures only to its own ``on_error``. A batch counts as delivered when
    Segment answers 2xx; a 4xx other than 429 is final (as in Segment's own consumer).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def deliver(self, items: list[list[dict[str, Any]] | None]) -> list[Exception | None]:
        """Send each item's messages, in batches; every item of a failed batch fails."""
        results: list[Exception | None] = []
        batch: list[dict[str, Any]] = []
        batch_rows = 0
        size = 0
        for messages in items:
            messages = messages or []
            row_size = len(json.dumps(messages))
            if batch and (size + row_size > SEGMENT_BATCH_BYTES or
                          len(batch) + len(messages) > SEGMENT_BATCH):
                results += [self._post(batch)] * batch_rows
                batch, batch_rows, size = [], 0, 0
            batch += messages
            batch_rows += 1
            size += row_size
        if batch:
            results += [self._post(batch)] * batch_rows
        return results

    def _post(self, batch: list[dict[str, Any]]) -> Exception | None:
        if not getattr(self.client, "send", True):
            return None  # the application turned sending off: Segment's own semantics
        record = getattr(self.client, "record_batch", None)
        if record is not None:  # pqlsdk.testing.RecordingSegment: kept, not sent
            record(batch)
            return None
        try:
            post(
                self.client.write_key,
                self.client.host,
                gzip=getattr(self.client, "gzip", False),
                timeout=getattr(self.client, "timeout", 15),
                proxies=getattr(self.client, "proxies", None),
                oauth_manager=getattr(self.client, "oauth_manager", None),
                batch=batch,
            )
        except APIError as exc:
            if 400 <= exc.status < 500 and exc.status != 429:
                return Fatal(str(exc))
            return exc
        except Exception as exc:  # connection refused, timeout, TLS: all worth a retry
            return exc
        return None


def reset_http_session() -> None:
    """Give this process its own pool of HTTP connections to Segment.

    ``segment.analytics.request.post`` sends through one module-level ``requests`` session;
    a child made by fork() inherits its open keep-alive sockets, and two processes talking
    over one socket garble each other's requests. The child gets a fresh session.
    """
    from requests import sessions
    from segment.analytics import request as segment_request

    if hasattr(segment_request, "_session"):
        segment_request._session = sessions.Session()


def _message(kind: str, user_id: str, timestamp: str, message_id: str,
             account_id: str | None, **fields: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"library": {"name": "analytics-python",
                                           "version": SEGMENT_VERSION}}
    if account_id is not None:
        context["groupId"] = account_id
    return {"type": kind, "userId": user_id, "timestamp": timestamp, "messageId": message_id,
            "context": context, "integrations": {}, **fields}


def qualification_messages(q: Qualification) -> list[dict[str, Any]]:
    """What Segment receives for a qualification: ``track("Lead Qualified")`` with the
    qualification id as ``messageId`` and ``qualified_at`` as its timestamp."""
    properties = {
        "rule": q.rule,
        "stage": q.stage,
        "subject_type": q.subject_type,
        "subject_id": q.subject_id,
        "account_id": q.account_id,
        "qualification_id": q.id,
        "qualified_at": q.qualified_at.isoformat(),
    }
    return [_message("track", q.user_id, q.qualified_at.isoformat(timespec="milliseconds"),
                     q.id, q.account_id, event=QUALIFIED_EVENT, properties=properties)]


def stage_messages(change: StageChange, user_id: str, account_id: str | None,
                   message_id: str) -> list[dict[str, Any]]:
    """What Segment receives when a subject changes stage: ``identify(user_id,
    {"lifecycle_stage": stage})``, and for an account also ``group`` with the same trait."""
    at = change.at.isoformat(timespec="milliseconds")
    traits = {"lifecycle_stage": change.to_stage}
    messages = [_message("identify", user_id, at, derived_id(message_id, "identify"),
                         account_id, traits=traits)]
    if change.subject_type == "account":
        messages.append(_message("group", user_id, at, derived_id(message_id, "group"),
                                 account_id, groupId=change.subject_id, traits=traits))
    return messages


def event_message(kind: str, user_id: str, timestamp: str, message_id: str,
                  account_id: str | None, **fields: Any) -> dict[str, Any]:
    """A mirrored ``track``/``identify``/``group`` call (``forward_events=True``)."""
    return _message(kind, user_id, timestamp, message_id, account_id, **fields)


def derived_id(base: str, purpose: str) -> str:
    """A stable id for a second message about the same thing (``identify`` after ``track``)."""
    return str(uuid.uuid5(uuid.UUID(base), purpose))
