"""Load history: Segment-spec messages from JSONL, replayed in time order (replay = live).

    result = import_jsonl(client, "export.jsonl")

1. **Stage.** Every line is parsed and validated as it streams in (bounded memory) and
   staged into an ``import_staging`` table of the same SQLite file, keyed by its
   ``messageId`` (or, without one, a hash of the line), in batched transactions.
2. **Replay.** Staged messages (validated, stored as columns) are applied in
   ``(timestamp, line)`` order, many per transaction, through the same code as
   ``track``/``identify``/``group``, so the qualifications, their ``qualified_at`` and the
   stages equal those of a live run of the same messages in time order. Each batch
   removes its staged rows and records their ids in ``import_done`` in the same
   transaction: killed at any point, a re-run resumes where it stopped, and re-importing a
   file adds nothing.

A bad line stops nothing that was good: it is reported with its line number and reason
(``strict=True`` stops at the first one instead).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import attrs

from . import validation
from .client import Call, Client
from .errors import PqlError, ValidationError
from .timestamps import coerce, from_micros, to_micros

#: Messages per transaction, staging and replay alike.
BATCH = 2_000
KINDS = ("track", "identify", "group")


@attrs.frozen
class ImportResult:
    """What an import did: lines read, messages applied, duplicates skipped (already
    imported, or the same messageId twice), other message types skipped, and each bad line
    as ``(line number, reason)``."""

    read: int
    applied: int
    duplicates: int
    skipped: dict[str, int]
    errors: tuple[tuple[int, str], ...]
    qualifications: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**attrs.asdict(self), "errors": [list(e) for e in self.errors]}


class ImportStopped(PqlError):
    """``strict=True`` met a bad line."""


def parse_message(line: str, client: Client) -> tuple[str, int, Call] | str:
    """``(message id, timestamp, validated call)``, or the other message type to skip, for
    one JSONL line; raises :class:`ValidationError` saying what is wrong with it."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError):  # a number of too many digits, deep nesting
        raise ValidationError("not valid JSON for pqlsdk (a number too large or nesting "
                              "too deep)") from None
    if not isinstance(message, dict):
        raise ValidationError("a message must be a JSON object")
    kind = message.get("type")
    if kind not in KINDS:
        if not isinstance(kind, str) or not kind:
            raise ValidationError("type is missing; expected track, identify or group")
        return kind
    user_id = message.get("userId") or message.get("anonymousId")
    if user_id is None:
        raise ValidationError("userId or anonymousId is required")
    stamp = message.get("timestamp") or message.get("originalTimestamp") or message.get(
        "receivedAt")
    if stamp is None:
        raise ValidationError("timestamp is required to replay in time order")
    at = coerce(stamp, "timestamp")
    context = message.get("context")
    if not isinstance(context, dict):
        context = {}
    if kind == "track":
        call = client.prepare_track(user_id, message.get("event"), message.get("properties"),
                                    account_id=context.get("groupId"), timestamp=at,
                                    message_id=message.get("messageId"))
    elif kind == "identify":
        call = client.prepare_identify(user_id, message.get("traits"), timestamp=at,
                                       account_id=context.get("groupId"))
    else:
        if message.get("groupId") is None:
            raise ValidationError("groupId is required for a group message")
        call = client.prepare_group(user_id, message.get("groupId"), message.get("traits"),
                                    timestamp=at)
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id:
        message_id = validation.identifier("messageId", message_id)
    else:
        text = line.strip().encode("utf-8", "surrogatepass")
        message_id = "line:" + hashlib.sha1(text).hexdigest()
        if kind == "track":
            call = call._replace(message_id=message_id)
    return message_id, to_micros(at), call


def _lines(source: str | IO[str]) -> Iterator[tuple[int, str]]:
    if source == "-":
        handle: IO[str] = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    elif isinstance(source, str):
        handle = open(source, encoding="utf-8")  # noqa: SIM115 - closed below
    else:
        handle = source
    try:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line
    finally:
        if isinstance(source, str) and source != "-":
            handle.close()


def import_jsonl(
    client: Client,
    source: str | IO[str],
    *,
    strict: bool = False,
    deliver: bool = False,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> ImportResult:
    """Import Segment-spec JSONL (a path, ``"-"`` for stdin, or an open text file).

    ``deliver=False`` (the default) records qualifications without writing outbox rows for
    them: a backfill does not call the application's callbacks nor Segment.
    ``progress(batches, total)`` may wrap the replay loop (the CLI passes a progress bar).
    """
    with client.store.bulk():
        return _import(client, source, strict, deliver, progress)


def _import(client: Client, source: str | IO[str], strict: bool, deliver: bool,
            progress: Callable[[Iterable[Any], int], Iterable[Any]] | None) -> ImportResult:
    read = 0
    errors: list[tuple[int, str]] = []
    skipped: dict[str, int] = {}
    store = client.store
    pending: list[tuple[Any, ...]] = []
    staged = valid = 0
    for number, line in _lines(source):
        read += 1
        try:
            parsed = parse_message(line, client)
        except ValidationError as exc:
            if strict:
                raise ImportStopped(f"line {number}: {exc}") from None
            errors.append((number, str(exc)))
            continue
        if isinstance(parsed, str):
            skipped[parsed] = skipped.get(parsed, 0) + 1
            continue
        valid += 1
        message_id, ts, call = parsed
        pending.append((message_id, ts, number, call.kind, call.user_id, call.account_id,
                        call.event or None, call.data_json if call.kind == "track"
                        else json.dumps(call.data)))
        if len(pending) >= BATCH:
            staged += _stage(store, pending)
    if pending:
        staged += _stage(store, pending)
    applied, qualified = _replay(client, deliver, progress)
    return ImportResult(read, applied, valid - staged, skipped, tuple(errors), qualified)


def _stage(store: Any, pending: list[tuple[Any, ...]]) -> int:
    with store.write() as tx:
        added = tx.stage_messages(pending)
    pending.clear()
    return added


def _replay(client: Client, deliver: bool,
            progress: Callable[[Iterable[Any], int], Iterable[Any]] | None) -> tuple[int, int]:
    store = client.store
    with store.read() as tx:
        total = tx.staged_count()
    batches = range(0, total, BATCH)
    applied = qualified = 0
    for _ in progress(batches, total) if progress else batches:
        queued = False
        with store.write() as tx:
            rows = tx.staged_batch(BATCH)
            for message_id, ts, kind, user_id, account_id, event, data in rows:
                traits = json.loads(data) if kind != "track" else {}
                call = Call(kind, user_id, from_micros(ts), account_id, event or "", traits,
                            data, message_id if kind == "track" else None)
                created, wrote = client.apply(tx, call, deliver=deliver)
                queued |= wrote
                qualified += len(created)
            tx.finish_staged([row[0] for row in rows],
                             [row[0] for row in rows if row[2] != "track"])
        applied += len(rows)
        if queued:
            client.deliver_pending()
    return applied, qualified
