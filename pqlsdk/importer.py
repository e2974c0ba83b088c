"""Load history: Segment-spec messages from JSONL, replayed in time order (replay = live).

    result = import_jsonl(client, "export.jsonl")

1. **Sort.** Every line is parsed and validated as it streams in and added to sorted runs
   (:class:`pqlsdk.runs.SortedRuns`): bounded chunks sorted in memory, spilled to
   temporary files, merged with ``heapq.merge``. A file already in time order (as Segment's
   archives mostly are) is one run, streamed straight back.
2. **Replay.** Messages come back in ``(timestamp, line)`` order and are applied a batch
   per transaction: the batch's new events in one ``executemany``, then only the rules
   each event can change, for its user and account, in time order
   (:func:`pqlsdk.bulk.apply_tracks`); identify, group and stage messages through the same
   code as the live calls. The qualifications, their ``qualified_at`` and the stages equal
   those of a live run of the same messages in time order.
3. **Resume.** Each batch's transaction also records a checkpoint for the file (a digest
   of its lines): the last message applied. Killed at any point, a re-run reads the file
   again and skips what the checkpoint covers; re-importing a file adds nothing. Whatever
   file it comes from, a message is a duplicate exactly when its live call would be: a
   track whose message id the tenant its event goes to holds already (stored live or
   imported), an identify/group/alias/stage whose message id was recorded under the user
   it names. The two kinds do not share ids: a track may reuse an identify's.

The input is read as bytes, plain or gzipped (known by its magic bytes, as Segment's
archives are), and decoded line by line. A bad line stops nothing that was good, whatever it
holds (bytes that are not UTF-8, a lone surrogate, a 5,000-digit number, JSON nested 5,000
deep, a timestamp past the calendar's edge): it is reported with its line number and reason
(``strict=True`` stops at the first one instead). A batch that fails to stage or replay is
split in halves (a half of at most 64 messages, a message per transaction) until the
message that fails it is alone, so only the bad message is left out, reported with its
line number and reason, also when the database refuses it
(:class:`~pqlsdk.StoreRejected`, a constraint it breaks); only a store that cannot go on
(unreachable, full, damaged, busy past its timeout) stops the import. A missing or
unreadable file is refused by :func:`open_source` before any database is made.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple, TypeGuard

import attrs

from . import bulk, calls, validation
from .calls import Call
from .client import Client
from .engine import Outcome
from .errors import PqlError, StoreError, StoreRejected, ValidationError
from .limits import MAX_ID_LENGTH
from .outbox import wall_micros
from .runs import SortedRuns
from .store import Transaction
from .timestamps import coerce, from_micros, to_micros, utc_micros

#: Messages per transaction.
BATCH = 20_000
#: A failing batch of at most this many messages is applied a message per transaction:
#: halving it further re-applies its good messages once per level, which costs ~10x the
#: batch when bad lines are dense (every 10th of 4,096 lines bad: 46,700 applications).
ALONE = 64
#: Messages sorted in memory before a run is spilled to a temporary file.
CHUNK = 100_000
KINDS = ("track", "identify", "group", "page", "screen", "alias")


@attrs.frozen
class ImportResult:
    """What an import did: lines read, messages applied, duplicates skipped, other message
    types skipped, and each bad line of this run as ``(line number, reason)``.

    ``duplicates`` is every good line this run neither applied nor reported: a message
    whose live call would be a duplicate (see the module), a message of a forgotten user,
    and every line an earlier run of the same file already went past (its checkpoint):
    those it applied, and also those the database refused then (``StoreRejected``, reported
    by that run, not again). When an interrupted earlier run left a checkpoint, the lines
    it had not reached are applied now: they count in ``applied`` and ``resumed``."""

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
    return _parsed_message(line, message)


def _parsed_message(line: str, message: Any) -> tuple[str, int, Call] | str:
    """:func:`parse_message` of the line's parsed JSON."""
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


class Message(NamedTuple):
    """One good line, validated, as the import sorts and replays it: ``(ts, line)`` first,
    so messages sort in replay order (the line number breaks ties: no two are equal)."""

    ts: int
    line: int
    message_id: str
    kind: str
    user_id: str
    account_id: str | None
    event: str | None
    data: str

    def call(self) -> Call:
        """The validated call again (identify, group, alias, stage; a track when it is not
        applied in bulk)."""
        traits = json.loads(self.data) if self.kind != "track" else {}
        if self.kind == "identify":  # the event column holds the anonymous id it links
            return Call(self.kind, self.user_id, from_micros(self.ts), self.account_id, "",
                        traits, self.data, anonymous_id=self.event)
        return Call(self.kind, self.user_id, from_micros(self.ts), self.account_id,
                    self.event or "", traits, self.data,
                    self.message_id if self.kind == "track" else None)

    def track(self) -> bulk.Track:
        """A track message as :func:`pqlsdk.bulk.apply_tracks` takes it."""
        return bulk.Track(self.message_id, self.ts, self.user_id, self.account_id,
                          self.event or "", self.data)


def _plain_id(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is an id :func:`pqlsdk.validation.identifier` takes as it is (its
    fast case: ASCII, so no lone surrogate either)."""
    return (type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isascii()
            and "\x00" not in value and not value.isspace())


def _common_track(number: int, message: dict[str, Any]) -> Message | None:
    """The common line, a track whose ``userId``, ``event``, ``messageId`` (and
    ``context.groupId``, if any) are plain ids and whose ``timestamp`` is a non-empty
    string, without the call built in between; None for any other line (the full path
    takes it). Its ids being valid, what can still be wrong is checked by the full path's
    own functions in its order (the timestamp, then the properties), so a bad line gets
    the same reason. A timestamp in the shape Segment writes is read without a datetime
    (:func:`pqlsdk.timestamps.utc_micros`)."""
    if message.get("type") != "track":
        return None
    user_id, event, message_id = (message.get("userId"), message.get("event"),
                                  message.get("messageId"))
    stamp = message.get("timestamp")
    if type(stamp) is not str or not stamp:
        return None
    # _plain_id of the three, inlined (the hot loop): str, 1..MAX_ID_LENGTH, ASCII, no NUL
    if not (type(user_id) is str and type(event) is str and type(message_id) is str
            and 0 < len(user_id) <= MAX_ID_LENGTH and 0 < len(event) <= MAX_ID_LENGTH
            and 0 < len(message_id) <= MAX_ID_LENGTH
            and (user_id + event + message_id).isascii()
            and "\x00" not in user_id and "\x00" not in event and "\x00" not in message_id
            and not user_id.isspace() and not event.isspace()
            and not message_id.isspace()):
        return None
    context = message.get("context")
    account_id = context.get("groupId") if type(context) is dict else None
    if account_id is not None and not _plain_id(account_id):
        return None
    ts = utc_micros(stamp)
    if ts is None:
        ts = to_micros(coerce(stamp, "timestamp"))
    data = validation.json_object("properties", message.get("properties"), parsed=True)
    return Message(ts, number, message_id, "track", user_id, account_id, event, data)


def _message(number: int, raw: bytes | str) -> Message | str:
    """The message of one line, or the other message type to skip; raises whatever makes
    the line bad."""
    line = _decode(raw)
    try:
        message = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if type(message) is dict:
        common = _common_track(number, message)
        if common is not None:
            return common
    parsed = _parsed_message(line, message)
    if isinstance(parsed, str):
        return parsed
    message_id, ts, call = parsed
    data = call.data_json if call.kind == "track" else json.dumps(call.data)
    # an identify's event column holds the anonymous id it links (an alias's, the previous id)
    event = call.anonymous_id if call.kind == "identify" else call.event
    _text_check(message_id, call.user_id, call.account_id, event, data)
    return Message(ts, number, message_id, call.kind, call.user_id, call.account_id,
                   event or None, data)


class _Import:
    """One run of an import: read and sort every good line, then replay in batches."""

    def __init__(self, client: Client, strict: bool, deliver: bool) -> None:
        self.client, self.store, self.strict, self.deliver = client, client.store, strict, deliver
        self.engine = client.engine
        self.errors: list[tuple[int, str]] = []
        self.applied = self.qualified = self.failed = 0

    def bad(self, number: int, reason: str) -> None:
        """Report a bad line (or stop, when strict)."""
        if self.strict:
            raise ImportStopped(f"line {number}: {reason}")
        self.errors.append((number, reason))

    def run(self, source: Source,
            progress: Callable[[Iterable[Any], int], Iterable[Any]] | None) -> ImportResult:
        """Sort, replay, and say what happened."""
        read = valid = 0
        skipped: dict[str, int] = {}
        digest = hashlib.blake2b(digest_size=16)
        with SortedRuns(CHUNK) as runs:
            for number, raw in source.lines():
                read += 1
                digest.update(raw if isinstance(raw, bytes)
                              else raw.encode("utf-8", "surrogatepass"))
                try:
                    message = _message(number, raw)
                except Exception as exc:  # a bad line, whatever it holds: reported, not fatal
                    self.bad(number, describe(exc))
                    continue
                if isinstance(message, str):
                    skipped[message] = skipped.get(message, 0) + 1
                    continue
                valid += 1
                runs.add(message)
            if source.broken is not None:
                self.bad(*source.broken)
            key = digest.hexdigest()
            with self.store.read() as tx:
                checkpoint = tx.import_checkpoint(key)
            skip = (checkpoint[0], checkpoint[1]) if checkpoint else None
            self.applied = checkpoint[2] if checkpoint else 0
            first = self.applied
            messages = runs.merged()
            batches = range(0, valid, BATCH)
            for _ in progress(batches, valid) if progress else batches:
                batch = list(itertools.islice(messages, BATCH))
                if skip is not None:
                    batch = [m for m in batch if (m.ts, m.line) > skip]
                if batch:
                    self.replay(key, batch)
        applied = self.applied - first
        return ImportResult(read, applied, valid - applied - self.failed, skipped,
                            tuple(self.errors), self.qualified,
                            applied if checkpoint else 0)

    def replay(self, key: str, batch: list[Message]) -> None:
        """Apply a batch in one transaction. If a message makes it fail, apply each half the
        same way, in order, so that only the failing messages are left out, each reported
        with its reason (a few transactions per bad message, not one per message); a failing
        batch of at most :data:`ALONE` messages is applied a message per transaction. A store
        that cannot go on (unreachable, full, damaged, busy past its timeout) stops the
        import (the applied batches are kept); a call the database refuses
        (:class:`~pqlsdk.StoreRejected`) is its line's failure."""
        try:
            done, found, queued = self.store.transact(lambda tx: self.apply(tx, key, batch))
        except StoreRejected as exc:
            failure: Exception = exc
        except StoreError:
            raise  # the store's problem, not a line's: stop
        except Exception as exc:  # whatever one message raised: isolate it
            failure = exc
        else:
            self.applied += done
            self.qualified += found
            if queued:
                self.client.deliver_pending()
            return
        if len(batch) == 1:
            self.bad(batch[0].line, describe(failure))
            self.failed += 1
            return
        if len(batch) <= ALONE:
            for message in batch:
                self.replay(key, [message])
            return
        middle = len(batch) // 2
        self.replay(key, batch[:middle])
        self.replay(key, batch[middle:])

    def apply(self, tx: Transaction, key: str, batch: list[Message]) -> tuple[int, int, bool]:
        """Apply messages in replay order inside ``tx``, each deduplicated as its live call
        is, at its turn: a track by its message id where its event goes (see
        :meth:`pqlsdk.engine.Engine.replay_tracks`), an identify/group/alias/stage by its
        message id under the user it names (``remember_call``, as the live call does first);
        a forgotten user's message is skipped. The tracks go in bulk, each other message
        through the same path as the live call; then move the checkpoint past the last.
        Returns ``(applied, qualifications, outbox rows written)``."""
        gone = tx.forgotten(list({(m.user_id, m.message_id) for m in batch}))
        outcome = Outcome()
        duplicates = 0
        tracks: list[bulk.Track] = []
        whole = not (self.deliver and self.client.forward_events)  # a mirror row per call
        fresh = [m for m in batch if (m.user_id, m.message_id) not in gone]
        for message in fresh:
            if message.kind == "track" and whole:
                tracks.append(message.track())
                continue
            if tracks:
                outcome = outcome.merge(self.engine.replay_tracks(tx, tracks,
                                                                  deliver=self.deliver))
                tracks = []
            if message.kind != "track" and not tx.remember_call(message.message_id,
                                                                 message.user_id or ""):
                duplicates += 1  # this call's message id was recorded before
                continue
            one = self.engine.replay(tx, message.call(), deliver=self.deliver)
            if not one.applied:
                duplicates += 1  # a track whose message id was stored already where it goes
            outcome = outcome.merge(one)
        if tracks:
            outcome = outcome.merge(self.engine.replay_tracks(tx, tracks, deliver=self.deliver))
        applied = len(fresh) - duplicates - outcome.duplicates
        last = batch[-1]
        tx.set_import_checkpoint(key, last.ts, last.line, self.applied + applied,
                                 wall_micros())
        return applied, len(outcome.qualifications), outcome.queued
