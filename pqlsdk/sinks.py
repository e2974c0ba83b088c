"""Destinations: the application's callbacks and Segment.

A sink delivers a list of items (a :class:`Qualification` for a callback, a row's Segment
messages for Segment) and reports, per item, whether the destination acknowledged it: None,
or the exception that says why not. The messages themselves are built in
:mod:`pqlsdk.messages`.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import gzip
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from segment.analytics import request as segment_request

from .models import Qualification

log = logging.getLogger("pqlsdk")

#: How many messages go in one Segment batch (Segment's own ``upload_size`` default).
SEGMENT_BATCH = 100
#: Segment refuses batches over 500 KB; stay under it.
SEGMENT_BATCH_BYTES = 450_000
#: Segment refuses a message over 32 KB (its client's ``MAX_MSG_SIZE``).
SEGMENT_MESSAGE_BYTES = 32 << 10
#: The longest ``Retry-After`` honoured, in seconds (a guard against an absurd header).
MAX_RETRY_AFTER = 300.0


class Fatal(Exception):
    """A destination refused a delivery for good (e.g. Segment answered 400): do not retry."""


class Retry(Exception):
    """A delivery failed for now; ``retry_after`` is how long the destination asked to be
    left alone (seconds, from ``Retry-After``), or None to back off as usual."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAttempted(Exception):
    """A row left alone because an earlier row of the same destination failed for now:
    sending it would break the destination's order. It is released, its attempt uncounted."""


class StatusClass(enum.Enum):
    """What an HTTP status from Segment means for the rows of the batch."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FINAL = "final"


#: 4xx statuses worth another try (SPEC section 5); every other 4xx is final.
RETRY_4XX = frozenset({408, 410, 429, 460})
#: 5xx statuses that no retry will change.
FINAL_5XX = frozenset({501, 505})


def status_class(status: int) -> StatusClass:
    """Segment's status table: 2xx delivered; 408, 410, 429, 460 and every 5xx but 501
    and 505 retried; any other status (other 4xx, 501, 505, an unfollowed 3xx) final."""
    if 200 <= status < 300:
        return StatusClass.DELIVERED
    if status in RETRY_4XX or (500 <= status < 600 and status not in FINAL_5XX):
        return StatusClass.RETRY
    return StatusClass.FINAL


def retry_after(header: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), at most
    :data:`MAX_RETRY_AFTER`; None when absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return min(float(header), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def callback_name(callback: Callable[..., Any]) -> str:
    """A callback's ``module.qualname`` (its identity when it is given no ``name``)."""
    module = getattr(callback, "__module__", None) or "?"
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    return f"{module}.{name}"


class CallbackSink:
    """Calls one application callback with the :class:`Qualification` of each row."""

    def __init__(self, callback: Callable[[Qualification], Any]) -> None:
        self.callback = callback

    @property
    def paused(self) -> bool:
        """A callback is always open for delivery."""
        return False

    def deliver(self, items: list[Any]) -> list[Exception | None]:
        """Call the callback once per qualification, in order; after one raises, the
        rest are :class:`NotAttempted` (they wait behind it)."""
        results: list[Exception | None] = []
        for qualification in items:
            if results and results[-1] is not None:
                results.append(NotAttempted("waiting behind an earlier failed row"))
                continue
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
    full and reports failures only to its own ``on_error``. Each message is size-checked
    before batching (one over 32 KB fails its row alone). A batch counts as delivered when
    Segment answers 2xx; a status is retried or final as :func:`status_class` says; a final
    answer to a batch of several rows is narrowed down by halves, so that only the rows it
    concerns fail. While ``Client(send=False)`` or the Segment client's own ``send`` is
    False, nothing is sent: rows stay pending.
    """

    def __init__(self, client: Any, *, send: bool = True) -> None:
        self.client = client
        self.send = send

    @property
    def paused(self) -> bool:
        """Whether sending is turned off (``Client(send=False)``, or the application's
        Segment client's ``send``)."""
        return not self.send or not getattr(self.client, "send", True)

    def deliver(self, items: list[Any]) -> list[Exception | None]:
        """Send each item's messages, in batches; one result per item. A message is a dict,
        or its JSON text already (:func:`pqlsdk.messages.event_message_text`); each is
        encoded once, and its text both sized and sent."""
        results: list[Exception | None] = [None] * len(items)
        batch: list[tuple[int, list[str], int]] = []  # (item, encoded messages, bytes)
        size = count = 0
        for index, messages in enumerate(items):
            if not messages:
                continue
            try:
                texts = [m if isinstance(m, str) else _encode(m) for m in messages]
            except (TypeError, ValueError) as exc:
                results[index] = Fatal(f"a message cannot be encoded as JSON: {exc}")
                continue
            sizes = [len(text) for text in texts]  # ASCII: characters are bytes
            if max(sizes) > SEGMENT_MESSAGE_BYTES:
                results[index] = Fatal(
                    f"a message of {max(sizes):,} bytes is over Segment's "
                    f"{SEGMENT_MESSAGE_BYTES:,}-byte limit for one message")
                continue
            row_size = sum(sizes)
            if batch and (size + row_size > SEGMENT_BATCH_BYTES
                          or count + len(texts) > SEGMENT_BATCH):
                self._send(batch, results)
                batch, size, count = [], 0, 0
            batch.append((index, texts, row_size))
            size += row_size
            count += len(texts)
        if batch:
            self._send(batch, results)
        return results

    def _send(self, batch: list[tuple[int, list[str], int]],
              results: list[Exception | None]) -> None:
        if any(r is not None and not isinstance(r, Fatal) for r in results):
            for index, _, _ in batch:  # an earlier batch failed for now: keep the order
                results[index] = NotAttempted("waiting behind an earlier failed batch")
            return
        error = self._post([text for _, texts, _ in batch for text in texts])
        if isinstance(error, Fatal) and len(batch) > 1:
            half = len(batch) // 2  # find the rows the refusal concerns; the others go out
            self._send(batch[:half], results)
            self._send(batch[half:], results)
            return
        for index, _, _ in batch:
            results[index] = error

    def _post(self, texts: list[str]) -> Exception | None:
        record = getattr(self.client, "record_batch", None)
        if record is not None:  # pqlsdk.testing.RecordingSegment: kept, not sent
            try:
                record([json.loads(text) for text in texts])
            except ValueError as exc:  # as Segment would answer 400: the split finds it
                return Fatal(f"a message is not valid JSON: {exc}")
            return None
        try:
            upload(self.client, texts)
        except segment_request.APIError as exc:
            verdict = status_class(exc.status)
            if verdict is StatusClass.DELIVERED:
                return None
            if verdict is StatusClass.FINAL:
                return Fatal(str(exc))
            response = getattr(exc, "response", None)
            header = response.headers.get("Retry-After") if response is not None else None
            return Retry(str(exc), retry_after(header))
        except Exception as exc:  # connection refused, timeout, TLS: all worth a retry
            return exc
        return None


def _encode(message: dict[str, Any]) -> str:
    """A message's JSON text, as Segment's client encodes it (datetimes as ISO 8601)."""
    return json.dumps(message, cls=segment_request.DatetimeSerializer)


def upload(client: Any, texts: list[str]) -> Any:
    """POST a batch of encoded messages to ``/v1/batch`` as
    ``segment.analytics.request.post`` does, with the Segment client's write key, host,
    gzip, timeout, proxies and OAuth, through that module's HTTP session; only the messages
    come encoded (each was encoded once, to be sized). Raises ``APIError`` as it does."""
    write_key = client.write_key
    body = (f'{{"batch": [{", ".join(texts)}], "sentAt": '
            f'{json.dumps(datetime.now(tz=timezone.utc).isoformat())}, '
            f'"writeKey": {json.dumps(write_key)}}}')
    url = segment_request.remove_trailing_slash(getattr(client, "host", None)
                                or "https://api.segment.io") + "/v1/batch"
    oauth_manager = getattr(client, "oauth_manager", None)
    token = oauth_manager.get_token() if oauth_manager else None
    headers = {"Content-Type": "application/json",
               "User-Agent": "analytics-python/" + segment_request.VERSION,
               "Authorization": f"Bearer {token}" if token else "Basic " + base64.b64encode(
                   f"{write_key}:".encode()).decode()}
    data: str | bytes = body
    if getattr(client, "gzip", False):
        headers["Content-Encoding"] = "gzip"
        data = gzip.compress(body.encode("utf-8"))
    options: dict[str, Any] = {"data": data, "headers": headers,
                               "timeout": getattr(client, "timeout", 15)}
    proxies = getattr(client, "proxies", None)
    if proxies:
        options["proxies"] = proxies
    res = segment_request._session.post(url, **options)
    if 200 <= res.status_code < 300:
        return res
    if 300 <= res.status_code < 400:
        raise segment_request.APIError(res.status_code, "redirect", res.reason, res)
    if oauth_manager and res.status_code in (400, 401, 403, 511):
        oauth_manager.clear_token()
    try:
        payload = res.json()
        raise segment_request.APIError(res.status_code, payload["code"], payload["message"], res)
    except (ValueError, KeyError, TypeError):
        raise segment_request.APIError(res.status_code, "unknown", res.text, res) from None


def reset_http_session() -> None:
    """Give this process its own pool of HTTP connections to Segment.

    ``segment.analytics.request.post`` sends through one module-level ``requests`` session;
    a child made by fork() inherits its open keep-alive sockets, and two processes talking
    over one socket garble each other's requests. The child gets a fresh session.
    """
    from requests import sessions

    if hasattr(segment_request, "_session"):
        segment_request._session = sessions.Session()
