"""Load history: Segment-spec messages from JSONL, replayed in time order (replay = live).

    result = import_jsonl(client, "export.jsonl")

1. **Stage.** Every line is parsed and validated as it streams in (bounded memory) and
   staged into an ``import_staging`` table of the same SQLite file, keyed by its
   ``messageId`` (or, without one, a hash of the line), in batched transactions.
2. **Replay.** Staged messages (validated, stored as columns) are applied in ``(timestamp,
   line)`` order, many per transaction, each through :meth:`pqlsdk.engine.Engine.replay`
   (the same path as a live ``track``/``identify``/``group`` or ``set_stage``), so the
   qualifications, their ``qualified_at`` and the stages equal those of a live run of the
   same messages in time order. Each batch removes its staged rows and records their ids in
   ``import_done`` in the same transaction: killed at any point, a re-run resumes where it
   stopped, and re-importing a file adds nothing.

The input is read as bytes, plain or gzipped (known by its magic bytes, as Segment's
archives are), and decoded line by line. A bad line stops nothing that was good, whatever it
holds (bytes that are not UTF-8, a lone surrogate, a 5,000-digit number, JSON nested 5,000
deep, a timestamp past the calendar's edge): it is reported with its line number and reason
(``strict=True`` stops at the first one instead). A batch that fails to stage or replay is
retried one message at a time, so only the bad message is left out. A missing or
unreadable file is refused by :func:`open_source` before any database is made.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import attrs

from . import calls, validation
from .calls import Call
from .client import Client
from .errors import PqlError, StoreError, ValidationError
from .store import Transaction
from .timestamps import coerce, from_micros, to_micros

#: Messages per transaction, staging and replay alike.
BATCH = 2_000
KINDS = ("track", "identify", "group", "page", "screen", "alias")


@attrs.frozen
class ImportResult:
    """What an import did: lines read, messages applied, duplicates skipped (already
    imported, or the same messageId twice), other message types skipped, and each bad line
    as ``(line number, reason)``. A line an interrupted earlier run had staged but not
    applied is applied now: it counts in ``applied`` and ``resumed``, never in
    ``duplicates``."""

    read: int
    applied: int
    duplicates: int
    skipped: dict[str, int]
    errors: tuple[tuple[int, str], ...]
    qualifications: int
    resumed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**attrs.asdict(self), "errors": [list(e) for e in self.errors]}


class ImportStopped(PqlError):
    """``strict=True`` met a bad line."""


class SourceError(ValidationError):
    """The file to import is missing, unreadable, or not what its name says (a ``.gz``
    that is not gzip)."""


_GZIP_MAGIC = b"\x1f\x8b"


class Source:
    """JSON lines to import, opened: plain or gzipped bytes (or an open text file), read
    line by line. Made by :func:`open_source`; a context manager that closes what it
    opened."""

    def __init__(self, name: str, handle: Any, owned: bool) -> None:
        self.name, self.handle, self.owned = name, handle, owned
        #: ``(line number, reason)`` when the stream itself broke (a damaged gzip).
        self.broken: tuple[int, str] | None = None

    def lines(self) -> Iterator[tuple[int, bytes | str]]:
        """``(line number, raw line)`` of every non-blank line; a damaged or truncated gzip
        stream ends the lines and is recorded in :attr:`broken`."""
        number = 0
        iterator: Iterator[bytes | str] = iter(self.handle)
        while True:
            try:
                line = next(iterator)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as exc:
                self.broken = (number + 1, f"the gzip stream is damaged or truncated here "
                                           f"({exc}); the lines before it were read")
                return
            number += 1
            if line.strip():
                yield number, line

    def close(self) -> None:
        """Close the file if this Source opened it."""
        if self.owned:
            self.handle.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_source(source: str | os.PathLike[str] | IO[bytes] | IO[str] | Source) -> Source:
    """Open what to import: a path (plain or gzipped JSON lines), ``"-"`` for stdin, or an
    open binary or text file. Raises :class:`SourceError` for a file that is missing or
    cannot be read, before anything else happens.

    >>> with open_source("export.jsonl.gz") as source:
    ...     import_jsonl(client, source)
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, io.TextIOBase) and not hasattr(source, "buffer"):
        return Source(str(getattr(source, "name", "<text>")), source, owned=False)  # StringIO
    owned = False
    if source == "-":
        raw: Any = sys.stdin.buffer
        name = "<stdin>"
    elif isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        try:
            raw = open(name, "rb")  # noqa: SIM115 - the Source closes it
        except FileNotFoundError:
            raise SourceError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{name}: is a directory, not a JSON lines file") from None
        except OSError as exc:
            raise SourceError(f"{name}: cannot be read ({exc.strerror})") from None
        owned = True
    else:
        raw = getattr(source, "buffer", source)  # a text file: read its bytes
        name = getattr(source, "name", "<file>")
    buffered = raw if hasattr(raw, "peek") else io.BufferedReader(raw)
    try:
        head = buffered.peek(2)[:2]
    except OSError as exc:
        if owned:
            raw.close()
        raise SourceError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if head == _GZIP_MAGIC:
        return Source(name, gzip.GzipFile(fileobj=buffered, mode="rb"), owned=True)
    if name.endswith(".gz") and head:
        if owned:
            raw.close()
        raise SourceError(f"{name}: named .gz but not gzip (its first bytes are not gzip's)")
    return Source(name, buffered, owned=owned)


def describe(exc: BaseException) -> str:
    """Why a line is bad, for ``line N: reason``, whatever was raised parsing it."""
    if isinstance(exc, PqlError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return (f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1}); "
                f"a line must be UTF-8 JSON")
    if isinstance(exc, UnicodeEncodeError):
        return (f"holds a lone surrogate ({exc.object[exc.start]!a}), which is not text; "
                f"ids, names and values must be valid Unicode")
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "a number too long to read (more than 4,300 digits)"
    if isinstance(exc, OverflowError):
        return f"a value out of range ({exc}), e.g. a timestamp past year 1 or 9999 in UTC"
    return f"cannot be read ({type(exc).__name__}: {exc})"


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def _text_check(*values: str | None) -> None:
    """Raise UnicodeEncodeError for a value SQLite could not store (a lone surrogate)."""
    for value in values:
        if value is not None:
            value.encode("utf-8")


def parse_message(line: str) -> tuple[str, int, Call] | str:
    """``(message id, timestamp, validated call)``, or the other message type to skip, for
    one JSONL line; raises :class:`ValidationError` saying what is wrong with it."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(message, dict):
        raise ValidationError("a message must be a JSON object")
    kind = message.get("type")
    if kind == "stage":
        return _stage_change(line, message)
    if kind not in KINDS:
        if not isinstance(kind, str) or not kind:
            raise ValidationError("type is missing; expected track, identify, group, page, "
                                  "screen, alias or stage")
        return kind
    user_id = message.get("userId") or message.get("anonymousId")
    if user_id is None:
        raise ValidationError("userId or anonymousId is required")
    anonymous_id = message.get("anonymousId") if message.get("userId") else None
    stamp = message.get("timestamp") or message.get("originalTimestamp") or message.get(
        "receivedAt")
    if stamp is None:
        raise ValidationError("timestamp is required to replay in time order")
    at = coerce(stamp, "timestamp")
    context = message.get("context")
    if not isinstance(context, dict):
        context = {}
    if kind == "track":
        call = calls.prepare_track(user_id, message.get("event"), message.get("properties"),
                                   account_id=context.get("groupId"), timestamp=at,
                                   message_id=message.get("messageId"))
    elif kind in ("page", "screen"):  # recorded as the event "page" / "screen"
        call = calls.prepare_page(kind, user_id, message.get("name"),
                                  message.get("properties"),
                                  category=message.get("category"),
                                  account_id=context.get("groupId"), timestamp=at,
                                  message_id=message.get("messageId"))
    elif kind == "alias":
        if message.get("previousId") is None or message.get("userId") is None:
            raise ValidationError("an alias message needs previousId and userId")
        call = calls.prepare_alias(message.get("previousId"), message.get("userId"),
                                   timestamp=at)
    elif kind == "identify":  # naming both ids links the anonymous one to the user
        call = calls.prepare_identify(user_id, message.get("traits"), timestamp=at,
                                      account_id=context.get("groupId"),
                                      anonymous_id=anonymous_id)
    else:
        if message.get("groupId") is None:
            raise ValidationError("groupId is required for a group message")
        call = calls.prepare_group(user_id, message.get("groupId"), message.get("traits"),
                                   timestamp=at)
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id:
        message_id = validation.identifier("messageId", message_id)
    else:
        text = line.strip().encode("utf-8", "surrogatepass")
        message_id = "line:" + hashlib.sha1(text).hexdigest()
        if call.kind == "track":
            call = call._replace(message_id=message_id)
    return message_id, to_micros(at), call


def _stage_change(line: str, message: dict[str, Any]) -> tuple[str, int, Call]:
    """A CRM's stage change: ``{"type": "stage", "userId" | "groupId": ..., "stage": ...,
    "timestamp": ..., "reason": ..., "criteria": {...}, "messageId": ...}``."""
    user_id, group_id = message.get("userId"), message.get("groupId")
    if (user_id is None) == (group_id is None):
        raise ValidationError("a stage message needs exactly one of userId or groupId")
    if message.get("timestamp") is None:
        raise ValidationError("timestamp is required to replay in time order")
    call = calls.prepare_stage(user_id, group_id, message.get("stage"),
                               message.get("reason"), timestamp=message.get("timestamp"),
                               criteria=message.get("criteria"))
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id:
        message_id = validation.identifier("messageId", message_id)
    else:
        text = line.strip().encode("utf-8", "surrogatepass")
        message_id = "line:" + hashlib.sha1(text).hexdigest()
    return message_id, to_micros(call.at), call


def import_jsonl(
    client: Client,
    source: str | os.PathLike[str] | IO[bytes] | IO[str] | Source,
    *,
    strict: bool = False,
    deliver: bool = False,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> ImportResult:
    """Import Segment-spec JSONL, plain or gzipped (a path, ``"-"`` for stdin, an open file
or a :class:`Source`).

    ``deliver=False`` (the default) records qualifications without writing outbox rows for
    them: a backfill does not call the application's callbacks nor Segment.
    ``progress(batches, total)`` may wrap the replay loop (the CLI passes a progress bar).
    """
    with open_source(source) as opened, client.store.bulk():
        return _Import(client, strict, deliver).run(opened, progress)


def _staged_row(number: int, raw: bytes | str) -> tuple[Any, ...] | str:
    """The staging row of one line, or the other message type to skip; raises whatever
    makes the line bad."""
    parsed = parse_message(_decode(raw))
    if isinstance(parsed, str):
        return parsed
    message_id, ts, call = parsed
    data = call.data_json if call.kind == "track" else json.dumps(call.data)
    # an identify's event column holds the anonymous id it links (an alias's, the previous id)
    event = call.anonymous_id if call.kind == "identify" else call.event
    _text_check(message_id, call.user_id, call.account_id, event, data)
    return (message_id, ts, number, call.kind, call.user_id, call.account_id,
            event or None, data)


def _stage_rows(tx: Transaction, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
    """Stage ``rows``: ``(how many an interrupted run had staged already, how many are
    new)``."""
    return tx.already_staged([row[0] for row in rows]), tx.stage_messages(rows)


def _unstage_one(tx: Transaction, row: tuple[Any, ...]) -> None:
    tx.finish_staged([(row[0], row[3])], [])


class _Import:
    """One run of an import: stage every good line, then replay what is staged."""

    def __init__(self, client: Client, strict: bool, deliver: bool) -> None:
        self.client, self.store, self.strict, self.deliver = client, client.store, strict, deliver
        self.engine = client.engine
        self.errors: list[tuple[int, str]] = []

    def bad(self, number: int, reason: str) -> None:
        """Report a bad line (or stop, when strict)."""
        if self.strict:
            raise ImportStopped(f"line {number}: {reason}")
        self.errors.append((number, reason))

    def run(self, source: Source,
            progress: Callable[[Iterable[Any], int], Iterable[Any]] | None) -> ImportResult:
        """Stage, replay, and say what happened."""
        read = staged = valid = 0
        self.resumed = 0
        skipped: dict[str, int] = {}
        pending: list[tuple[Any, ...]] = []
        for number, raw in source.lines():
            read += 1
            try:
                row = _staged_row(number, raw)
            except Exception as exc:  # a bad line, whatever it holds: reported, not fatal
                self.bad(number, describe(exc))
                continue
            if isinstance(row, str):
                skipped[row] = skipped.get(row, 0) + 1
                continue
            valid += 1
            pending.append(row)
            if len(pending) >= BATCH:
                staged += self.stage(pending)
        if pending:
            staged += self.stage(pending)
        if source.broken is not None:
            self.bad(*source.broken)
        applied, qualified = self.replay(progress)
        return ImportResult(read, applied, valid - staged - self.resumed, skipped,
                            tuple(self.errors), qualified, self.resumed)

    def stage(self, pending: list[tuple[Any, ...]]) -> int:
        """Stage a batch in one transaction; if a row makes it fail, stage the rows one by
        one so that only that row is left out (and reported)."""
        try:
            resumed, added = self.store.transact(functools.partial(_stage_rows, rows=pending))
            # staged by an interrupted run, not applied yet: applied now, not duplicates
            self.resumed += resumed
        except StoreError:
            raise  # the file's problem, not a line's: stop (staged batches are kept)
        except Exception:
            added = 0
            for row in pending:
                try:
                    resumed, one = self.store.transact(
                        functools.partial(_stage_rows, rows=[row]))
                    self.resumed += resumed
                    added += one
                except StoreError:
                    raise
                except Exception as exc:
                    self.bad(row[2], describe(exc))
        pending.clear()
        return added

    def replay(self, progress: Callable[[Iterable[Any], int], Iterable[Any]] | None
               ) -> tuple[int, int]:
        """Apply staged messages in time order, a batch per transaction."""
        with self.store.read() as tx:
            total = tx.staged_count()
        batches = range(0, total, BATCH)
        applied = qualified = 0
        for _ in progress(batches, total) if progress else batches:
            try:
                done, found, queued = self.apply(None)
            except StoreError:
                raise
            except Exception:  # one message cannot be applied: the others still are
                with self.store.read() as tx:
                    rows = tx.staged_batch(BATCH)
                done = found = 0
                queued = False
                for row in rows:
                    try:
                        one, more, wrote = self.apply([row])
                    except StoreError:
                        raise
                    except Exception as exc:
                        self.bad(row[7], describe(exc))
                        self.store.transact(functools.partial(_unstage_one, row=row))
                        continue
                    done, found, queued = done + one, found + more, queued or wrote
            applied += done
            qualified += found
            if queued:
                self.client.deliver_pending()
        return applied, qualified

    def apply(self, rows: list[tuple[Any, ...]] | None) -> tuple[int, int, bool]:
        """Apply staged rows (None: the next batch) in one transaction: ``(applied,
        qualifications, queued)``."""

        def apply(tx: Transaction) -> tuple[int, int, bool]:  # may run again: see transact
            batch = tx.staged_batch(BATCH) if rows is None else rows
            queued = False
            qualified = 0
            for message_id, ts, kind, user_id, account_id, event, data, _ in batch:
                traits = json.loads(data) if kind != "track" else {}
                if kind == "identify":  # the event column holds the anonymous id it links
                    call = Call(kind, user_id, from_micros(ts), account_id, "", traits, data,
                                anonymous_id=event)
                else:
                    call = Call(kind, user_id, from_micros(ts), account_id, event or "",
                                traits, data, message_id if kind == "track" else None)
                outcome = self.engine.replay(tx, call, deliver=self.deliver)
                queued |= outcome.queued
                qualified += len(outcome.qualifications)
            tx.finish_staged([(row[0], row[3]) for row in batch],
                             [(row[0], row[3]) for row in batch if row[2] != "track"])
            return len(batch), qualified, queued

        return self.store.transact(apply)
