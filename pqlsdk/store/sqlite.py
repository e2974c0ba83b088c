"""The SQLite store: schema, migrations and every SQL statement pqlsdk runs (the
PostgreSQL store runs the same statements, rewritten by :mod:`pqlsdk.store.dialect`).

One connection per Client, guarded by a lock; WAL, ``synchronous=NORMAL`` and a busy
timeout; every write is one short ``BEGIN IMMEDIATE`` transaction (:meth:`Store.write`),
so many processes can share one file without "database is locked" from a deferred
read-then-write. Times are stored as integer microseconds since the Unix epoch (UTC).

    >>> store = Store("pql.db")
    >>> with store.write() as tx:
    ...     tx.insert_event(None, "u1", None, "signup", 1_700_000_000_000_000, "{}")
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import sqlite_utils

from .. import ids
from ..errors import SchemaTooNew, StoreBusy, StoreClosed, StoreCorrupt, StoreError
from ..filecheck import FileUsage, check_header, probe, require_sqlite, translate, usage
from ..stages import FIRST_STAGE, STAGES
from .base import (
    FunnelRows,
    OutboxKey,
    PropertyRow,
    PrunedEvent,
    RollupAdd,
    RollupKey,
    StageCounts,
    SubjectRow,
    UserRow,
)

T = TypeVar("T")
_TABLES = {"user": ("users", "user_id"), "account": ("accounts", "account_id")}
#: Larger than any timestamp: stands for "never" inside min().
_NEVER = 2**62
#: A trait name a JSON path spells as it is, in every SQLite version.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]+")
#: The page cache of the write connection during :meth:`Store.bulk`, in KiB: the most
#: memory SQLite holds for an import, whatever the file's size.
BULK_CACHE_KIB = 262_144


def _v1(db: sqlite_utils.Database) -> None:
    db.table("events").create(
        {
            "id": int,
            "message_id": str,
            "user_id": str,
            "account_id": str,
            "event": str,
            "ts": int,
            "properties": str,
        },
        pk="id",
        not_null={"user_id", "event", "ts", "properties"},
    )
    # Threshold checks walk (subject, event, ts) and stop at the bound (LIMIT).
    db.execute("CREATE INDEX events_user ON events(user_id, event, ts)")
    db.execute(
        "CREATE INDEX events_account ON events(account_id, event, ts) "
        "WHERE account_id IS NOT NULL"
    )
    db.execute(
        "CREATE UNIQUE INDEX events_message_id ON events(message_id) "
        "WHERE message_id IS NOT NULL"
    )
    db.table("users").create(
        {"user_id": str, "account_id": str, "traits": str, "first_seen": int},
        pk="user_id",
        not_null={"traits", "first_seen"},
    )
    db.table("accounts").create(
        {"account_id": str, "traits": str, "first_seen": int},
        pk="account_id",
        not_null={"traits", "first_seen"},
    )
    db.execute(
        """CREATE TABLE qualifications (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            stage TEXT NOT NULL,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            account_id TEXT,
            qualified_at INTEGER NOT NULL,
            evidence TEXT NOT NULL,
            UNIQUE (subject_type, subject_id, rule)
        )"""
    )
    db.execute("CREATE INDEX qualifications_time ON qualifications(qualified_at)")


def _v2(db: sqlite_utils.Database) -> None:
    """The durable outbox: one row per (message, destination), deleted once acknowledged."""
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            destination TEXT NOT NULL,
            kind TEXT NOT NULL,
            user_id TEXT,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            lease_until INTEGER,
            last_error TEXT,
            created_at INTEGER NOT NULL
        )"""
    )
    # No index: acknowledged rows are deleted, so a claim's scan in id order finds its rows
    # at the head of a short table, and every track() that writes a row saves a page write.


def _v3(db: sqlite_utils.Database) -> None:
    """The lifecycle: a stage per subject, its history, and rounds.

    A manual move to ``unqualified`` or ``disqualified`` starts a new round: qualifications
    are unique per (subject, rule, round), and a round's rules count only events from its
    start, so a rejected lead qualifies again on what it does afterwards.
    """
    for table in ("users", "accounts"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN stage TEXT NOT NULL DEFAULT 'lead'")
        db.execute(f"ALTER TABLE {table} ADD COLUMN round INTEGER NOT NULL DEFAULT 0")
        db.execute(f"ALTER TABLE {table} ADD COLUMN round_since INTEGER")
        # when the subject first entered each ordered stage: the funnel reads these
        for stage in STAGES:
            db.execute(f"ALTER TABLE {table} ADD COLUMN first_{stage} INTEGER")
    db.execute("ALTER TABLE qualifications RENAME TO qualifications_v2")
    db.execute(
        """CREATE TABLE qualifications (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            stage TEXT NOT NULL,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            account_id TEXT,
            qualified_at INTEGER NOT NULL,
            evidence TEXT NOT NULL,
            round INTEGER NOT NULL DEFAULT 0,
            UNIQUE (subject_type, subject_id, round, rule)
        )"""
    )
    db.execute("INSERT INTO qualifications SELECT *, 0 FROM qualifications_v2")
    db.execute("DROP TABLE qualifications_v2")
    db.execute("CREATE INDEX qualifications_time ON qualifications(qualified_at)")
    db.execute(
        """CREATE TABLE stage_changes (
            id INTEGER PRIMARY KEY,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            from_stage TEXT,
            to_stage TEXT NOT NULL,
            at INTEGER NOT NULL,
            source TEXT NOT NULL,
            reason TEXT
        )"""
    )
    db.execute("CREATE INDEX stage_changes_subject ON stage_changes(subject_type, subject_id, "
               "to_stage, at)")
    # what release 2 knew: every subject entered 'lead' when first seen, and its
    # qualifications moved it forward
    for subject_type, table, key in (("user", "users", "user_id"),
                                     ("account", "accounts", "account_id")):
        db.execute(
            f"INSERT INTO stage_changes (subject_type, subject_id, from_stage, to_stage, at, "
            f"source) SELECT '{subject_type}', {key}, NULL, 'lead', first_seen, 'first_seen' "
            f"FROM {table}"
        )
    rows = db.execute(
        "SELECT subject_type, subject_id, rule, stage, qualified_at FROM qualifications "
        "ORDER BY qualified_at, rowid"
    ).fetchall()
    current: dict[tuple[str, str], str] = {}
    for subject_type, subject_id, rule, stage, at in rows:
        before = current.get((subject_type, subject_id), FIRST_STAGE)
        if STAGES.index(stage) > STAGES.index(before):
            current[(subject_type, subject_id)] = stage
            db.execute(
                "INSERT INTO stage_changes (subject_type, subject_id, from_stage, to_stage, "
                "at, source) VALUES (?, ?, ?, ?, ?, ?)",
                (subject_type, subject_id, before, stage, at, f"rule:{rule}"),
            )
    for (subject_type, subject_id), stage in current.items():
        table, key = _TABLES[subject_type]
        db.execute(f"UPDATE {table} SET stage = ? WHERE {key} = ?", (stage, subject_id))
    for subject_type, (table, key) in _TABLES.items():
        for stage in STAGES:
            db.execute(
                f"UPDATE {table} SET first_{stage} = (SELECT min(at) FROM stage_changes "
                f"WHERE subject_type = '{subject_type}' AND subject_id = {table}.{key} "
                f"AND to_stage = '{stage}')"
            )


def _v4(db: sqlite_utils.Database) -> None:
    """Import: messages staged for replay in time order, and the ids of those replayed
    (tracks are known by their events' message ids)."""
    db.execute(
        "CREATE TABLE import_staging (message_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, "
        "line_no INTEGER NOT NULL, kind TEXT NOT NULL, user_id TEXT NOT NULL, "
        "account_id TEXT, event TEXT, data TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX import_staging_order ON import_staging(ts, line_no)")
    db.execute("CREATE TABLE import_done (message_id TEXT PRIMARY KEY) WITHOUT ROWID")


def _forgotten_message_ids(db: sqlite_utils.Database) -> None:
    """Forget means forgotten: a random key of this database, the keyed hashes of the
    message ids of forgotten users (so that no import brings them back, and no id is kept
    in the clear), and whose each remembered import id was (so forget can find them)."""
    db.execute("CREATE TABLE pqlsdk_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
    db.execute("INSERT INTO pqlsdk_meta (key, value) VALUES ('forget_key', randomblob(32))")
    db.execute("CREATE TABLE forgotten (hash BLOB PRIMARY KEY) WITHOUT ROWID")
    db.execute("ALTER TABLE import_done ADD COLUMN user_id TEXT")
    db.execute("CREATE INDEX import_done_user ON import_done(user_id) "
               "WHERE user_id IS NOT NULL")
    db.execute("CREATE INDEX import_staging_user ON import_staging(user_id)")


def _event_rollups(db: sqlite_utils.Database) -> None:
    """Retention: events older than it are folded into per-subject rollups (how many
    events of a name with the same kept properties, and their first and last time), so that
    counts, distinct values and sums without a window stay exact after a prune."""
    db.execute(
        "CREATE TABLE event_rollups (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, "
        "account_id TEXT, event TEXT NOT NULL, properties TEXT NOT NULL, "
        "n INTEGER NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX event_rollups_user ON event_rollups(user_id, event)")
    db.execute("CREATE INDEX event_rollups_account ON event_rollups(account_id, event) "
               "WHERE account_id IS NOT NULL")
def _shadow_and_rule_versions(db: sqlite_utils.Database) -> None:
    """Shadow rules and rule versions: each qualification records the fingerprint of the
    rule definition that fired it (``rule_version``; NULL for those recorded before) and
    whether it was a shadow rule's. A shadow qualification fires in its own space, so
    ``shadow`` joins the unique key: promoting the rule later qualifies the subject once
    more, live. (The unique key changes, so the table is rebuilt; a release that predates
    this one keeps writing to it: the new columns have defaults.)"""
    db.execute("ALTER TABLE qualifications RENAME TO qualifications_v4")
    db.execute(
        """CREATE TABLE qualifications (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            stage TEXT NOT NULL,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            account_id TEXT,
            qualified_at INTEGER NOT NULL,
            evidence TEXT NOT NULL,
            round INTEGER NOT NULL DEFAULT 0,
            rule_version TEXT,
            shadow INTEGER NOT NULL DEFAULT 0,
            UNIQUE (subject_type, subject_id, round, rule, shadow)
        )"""
    )
    db.execute("INSERT INTO qualifications (id, rule, stage, subject_type, subject_id, "
               "user_id, account_id, qualified_at, evidence, round) SELECT id, rule, stage, "
               "subject_type, subject_id, user_id, account_id, qualified_at, evidence, round "
               "FROM qualifications_v4")
    db.execute("DROP TABLE qualifications_v4")
    db.execute("CREATE INDEX qualifications_time ON qualifications(qualified_at)")


#: The shape of outbox payloads this release writes and reads (the ``format`` column).
#: Format 1: a qualification row holds ``{"qualification_id", "moved_to"}``; every other
#: row holds the list of Segment messages it sends.
PAYLOAD_FORMAT = 1
#: (issue 21) Format 2: a ``forward_events`` track row refers to its event row by the
#: event's message id, ``{"message_id"}`` (the event row keeps the ``messageId`` generated
#: for Segment when the call gave none); the row's user and the message id find the event
#: in the user's tenant at delivery, wherever the user moved since. Rows of format 1 still
#: deliver.
EVENT_REF_FORMAT = 2


def _outbox_claims_and_payload_format(db: sqlite_utils.Database) -> None:
    """Outbox rows get a claim token (a claimer settles only rows it still owns) and the
    format of their payload; rows written before payloads had a format are converted.

    Before the outbox named the qualification, a callback's row held the whole
    qualification (``{"id": ...}``) and Segment's row its messages (the "Lead Qualified"
    track, whose ``messageId`` is the qualification id, and perhaps the lifecycle identify).
    A row that is neither stays at format 0: delivery fails it alone, with its error.
    """
    db.execute("ALTER TABLE outbox ADD COLUMN claim TEXT")
    db.execute("ALTER TABLE outbox ADD COLUMN format INTEGER NOT NULL DEFAULT 0")
    rows = db.execute("SELECT id, kind, payload FROM outbox").fetchall()
    for row_id, kind, text in rows:
        converted = _convert_payload(kind, text)
        if converted is not None:
            db.execute("UPDATE outbox SET payload = ?, format = ? WHERE id = ?",
                       (converted, PAYLOAD_FORMAT, row_id))


def _convert_payload(kind: str, text: str) -> str | None:
    """A format-1 payload for an outbox row of an earlier release, or None if unreadable."""
    try:
        payload = json.loads(text)
    except (TypeError, ValueError):
        return None
    if kind != "qualification":
        ok = isinstance(payload, list) and all(isinstance(m, dict) for m in payload)
        return text if ok else None
    if isinstance(payload, dict) and isinstance(payload.get("qualification_id"), str):
        return json.dumps({"qualification_id": payload["qualification_id"],
                           "moved_to": payload.get("moved_to")})
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):  # a callback's
        return json.dumps({"qualification_id": payload["id"], "moved_to": None})
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):  # Segment's
        track, moved = payload[0], None
        for message in payload[1:]:
            if isinstance(message, dict) and message.get("type") == "identify":
                moved = (message.get("traits") or {}).get("lifecycle_stage")
        if isinstance(track.get("messageId"), str):
            return json.dumps({"qualification_id": track["messageId"], "moved_to": moved})
    return None


def _unambiguous_qualification_ids(db: sqlite_utils.Database) -> None:
    """Qualification ids from an unambiguous encoding (:mod:`pqlsdk.ids`): a stored
    qualification whose rule or subject holds ``\x1f`` takes its JSON-form id, so that its
    legacy id no longer blocks the different qualification it collided with. Every other id
    stays as it was; pending deliveries follow their qualification's new id."""
    rows = db.execute(
        "SELECT id, rule, subject_type, subject_id, round, shadow FROM qualifications "
        "WHERE instr(rule, char(31)) OR instr(subject_type, char(31)) "
        "OR instr(subject_id, char(31))"
    ).fetchall()
    for old, rule, subject_type, subject_id, round_, shadow in rows:
        new = ids.json_form_id(rule, subject_type, subject_id, round_, shadow=bool(shadow))
        db.execute("UPDATE qualifications SET id = ? WHERE id = ?", (new, old))
        db.execute("UPDATE outbox SET payload = replace(payload, ?1, ?2) "
                   "WHERE instr(payload, ?1)", (old, new))


#: The tenant key of the rows of a user: its account now, else the user itself (SQL on
#: ``user_directory``; ``{user}`` is the column or parameter holding the user id).
_USER_TENANT = ("coalesce((SELECT d.account_id FROM user_directory d "
                "WHERE d.tenant_key = {user}), {user})")
#: The tenant key of a subject's rows (qualifications, stage changes).
_SUBJECT_TENANT = ("CASE WHEN subject_type = 'account' THEN subject_id ELSE "
                   + _USER_TENANT.format(user="subject_id") + " END")


def canonical(subject_type: str, alias: str = "events") -> str:
    """For a read across tenants, the condition that keeps each event once per subject type:
    a user's events where the user is now (a user that changed accounts left the old one a
    copy of what it did there), an account's where the account is."""
    if subject_type == "account":
        return f"{alias}.tenant_key = {alias}.account_id"
    return f"{alias}.tenant_key = " + _USER_TENANT.format(user=f"{alias}.user_id")


#: Issue 19 (ready to shard): how migrations fill ``tenant_key`` in rows written before it.
TENANT_BACKFILL = {
    "users": "coalesce(account_id, user_id)",
    "accounts": "account_id",
    # an event recorded with an account is that account's (where its rules count it); one
    # recorded without, its user's
    "events": "coalesce(account_id, " + _USER_TENANT.format(user="user_id") + ")",
    "event_rollups": "coalesce(account_id, " + _USER_TENANT.format(user="user_id") + ")",
    "qualifications": _SUBJECT_TENANT,
    "stage_changes": _SUBJECT_TENANT,
    "outbox": "coalesce(" + _USER_TENANT.format(user="user_id") + ", '')",
    "import_staging": "coalesce(user_id, '')",
    "import_done": "coalesce(user_id, '')",
}
#: Before :data:`TENANT_BACKFILL`: a user now in another account than one it recorded
#: events with gets a copy of them in its tenant (what ``Transaction.move_user`` does).
TENANT_COPIES = [
    f"INSERT INTO {table} (tenant_key, {columns}) SELECT "
    + _USER_TENANT.format(user="user_id") + f", {columns} FROM {table} "
    "WHERE tenant_key IS NULL AND account_id IS NOT NULL AND account_id <> "
    + _USER_TENANT.format(user="user_id")
    for table, columns in (
        ("events", "message_id, user_id, account_id, event, ts, properties"),
        ("event_rollups", "user_id, account_id, event, properties, n, first_ts, last_ts"))
]
#: (index, SQL after ``ON``) of the tenant-led indexes both engines carry (issue 19).
TENANT_INDEXES = [
    ("events_user", "events(tenant_key, user_id, event, ts)"),
    ("events_account", "events(tenant_key, account_id, event, ts) WHERE account_id IS NOT NULL"),
    ("stage_changes_subject", "stage_changes(tenant_key, subject_type, subject_id, to_stage, at)"),
    ("event_rollups_user", "event_rollups(tenant_key, user_id, event)"),
    ("event_rollups_account",
     "event_rollups(tenant_key, account_id, event) WHERE account_id IS NOT NULL"),
    ("import_staging_user", "import_staging(tenant_key, user_id)"),
    ("import_done_user", "import_done(tenant_key, user_id) WHERE user_id IS NOT NULL"),
]


def fill_tenant_keys(conn: sqlite3.Connection) -> None:
    """Give rows written without a tenant key (by an earlier release, or by a bulk load of
    raw rows) the one pqlsdk would have written, and every user its directory row."""
    conn.execute("INSERT OR IGNORE INTO user_directory (tenant_key, account_id) "
                 "SELECT user_id, account_id FROM users")
    for sql in TENANT_COPIES:
        conn.execute(sql)
    for table, value in TENANT_BACKFILL.items():
        conn.execute(f"UPDATE {table} SET tenant_key = {value} WHERE tenant_key IS NULL")


def _tenant_keys(db: sqlite_utils.Database) -> None:
    """Issue 19, ready to shard: every table of a tenant's rows carries ``tenant_key`` (the
    account the user belongs to, else the user; an account's own rows, the account), and
    ``user_directory`` says which tenant each user is in now (its ``tenant_key`` is the user
    id: the one lookup a call makes before it knows its tenant). Indexes are led by the
    tenant key, and a message id is unique per tenant. (The rowid primary keys stay: SQLite
    needs them for its ids; a file is one shard. The statements are the same on both
    engines.)"""
    db.execute("CREATE TABLE user_directory (tenant_key TEXT PRIMARY KEY, account_id TEXT) "
               "WITHOUT ROWID")
    for table in TENANT_BACKFILL:
        db.execute(f"ALTER TABLE {table} ADD COLUMN tenant_key TEXT")
    db.execute("DROP INDEX events_message_id")  # unique per tenant from here (copies)
    fill_tenant_keys(db.conn)
    for name, on in TENANT_INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {name}")
        db.execute(f"CREATE INDEX {name} ON {on}")
    db.execute("CREATE UNIQUE INDEX events_message_id ON events(tenant_key, message_id) "
               "WHERE message_id IS NOT NULL")
    db.execute("CREATE INDEX users_account ON users(tenant_key, account_id) "
               "WHERE account_id IS NOT NULL")
def _import_checkpoints(db: sqlite_utils.Database) -> None:
    """(issue 21) An import resumes from a checkpoint per source file (the last message
    applied, in replay order) instead of a staging row per message. ``import_staging`` is
    no longer written (kept one release for files an older version left half-imported;
    ``import_done`` still remembers identify/group/stage message ids)."""
    db.execute(IMPORT_CHECKPOINTS)


#: The table behind :meth:`Transaction.import_checkpoint` (both engines).
IMPORT_CHECKPOINTS = (
    "CREATE TABLE import_checkpoints (source TEXT PRIMARY KEY, ts BIGINT NOT NULL, "
    "line_no BIGINT NOT NULL, applied BIGINT NOT NULL, updated_at BIGINT NOT NULL)")


def _trait_history(db: sqlite_utils.Database) -> None:
    """Issue 20: every change of a trait, with its moment (the value as JSON, NULL when it
    was removed); the traits already stored count as set when their subject was first
    seen. A rejected lead qualifies again only on something new since the
    rejection (a change of a trait the rule reads counts), and the funnel's ``by=`` groups
    by the value a trait had when the subject entered a stage."""
    db.execute(
        "CREATE TABLE trait_changes (id INTEGER PRIMARY KEY, tenant_key TEXT NOT NULL, "
        "subject_type TEXT NOT NULL, subject_id TEXT NOT NULL, trait TEXT NOT NULL, "
        "value TEXT, at INTEGER NOT NULL)")
    db.execute("CREATE INDEX trait_changes_subject ON trait_changes(tenant_key, "
               "subject_type, subject_id, trait, at)")
    # what was known before: each current trait, as of when the subject was first seen
    for subject_type, (table, key) in _TABLES.items():
        rows = db.execute(f"SELECT tenant_key, {key}, traits, first_seen FROM {table} "
                          "WHERE traits != '{}'").fetchall()
        db.conn.executemany(
            "INSERT INTO trait_changes (tenant_key, subject_type, subject_id, trait, value, "
            "at) VALUES (?, ?, ?, ?, ?, ?)",
            [(tenant, subject_type, subject_id, name, json.dumps(value, sort_keys=True), at)
             for tenant, subject_id, traits, at in rows
             for name, value in sorted(json.loads(traits or "{}").items())
             if value is not None])


def _qualification_firings(db: sqlite_utils.Database) -> None:
    """Issue 20: a rule may re-arm (``rearm``/``every``), and each firing is its own
    qualification, so ``firing`` joins the unique key. The table's UNIQUE constraint
    cannot be altered in place: ``round`` (one of its columns) is rebuilt by
    ``table.transform()``, which leaves that constraint out, and the key comes back as a
    unique index with ``firing``. A release that predates this one keeps writing (firing
    defaults to 0, its ``ON CONFLICT DO NOTHING`` meets the index)."""
    table = db.table("qualifications")
    order = [column.name for column in table.columns]
    table.add_column("firing", int, not_null_default=0)
    table.add_column("round_", int, not_null_default=0)
    db.execute("UPDATE qualifications SET round_ = round")
    table.transform(drop={"round"}, rename={"round_": "round"},
                    column_order=[*order, "firing"])
    db.execute("CREATE UNIQUE INDEX qualifications_once ON qualifications(tenant_key, "
               "subject_type, subject_id, round, rule, shadow, firing)")


#: A qualified lead stays open (waiting for sales) until its subject moves to one of these.
SETTLING_STAGES = ("sql", "opportunity", "customer", "unqualified", "disqualified")

#: The qualifications still waiting for sales, from what the store already holds (the
#: handoff migration's backfill, the same text on both engines).
HANDOFF_BACKFILL = (
    "INSERT INTO handoffs (tenant_key, qualification_id, subject_type, subject_id, rule, "
    "qualified_at) SELECT q.tenant_key, q.id, q.subject_type, q.subject_id, q.rule, "
    "q.qualified_at FROM qualifications q "
    "WHERE q.shadow = 0 AND NOT EXISTS (SELECT 1 FROM stage_changes sc WHERE "
    "sc.tenant_key = q.tenant_key AND "
    "sc.subject_type = q.subject_type AND sc.subject_id = q.subject_id AND sc.at >= "
    "q.qualified_at AND sc.to_stage IN ('sql', 'opportunity', 'customer', 'unqualified', "
    "'disqualified')) AND (EXISTS (SELECT 1 FROM users u WHERE q.subject_type = 'user' AND "
    "u.tenant_key = q.tenant_key AND "
    "u.user_id = q.subject_id AND u.stage IN ('subscriber', 'lead', 'mql', 'pql')) OR "
    "EXISTS (SELECT 1 FROM accounts a WHERE q.subject_type = 'account' AND a.account_id = "
    "q.subject_id AND a.stage IN ('subscriber', 'lead', 'mql', 'pql')))"
)


def _handoffs(db: sqlite_utils.Database) -> None:
    """Issue 20: the qualifications sales has not yet accepted (moved to ``sql`` or later)
    nor rejected, for ``overdue()`` and ``on_overdue``: a row per open live qualification,
    removed when its subject moves to a settling stage; ``notified_at`` once ``on_overdue``
    rows were written for it. Kept small (only open ones), read by ``qualified_at``."""
    db.execute("CREATE TABLE handoffs (tenant_key TEXT NOT NULL, qualification_id TEXT NOT "
               "NULL, subject_type TEXT NOT NULL, subject_id TEXT NOT NULL, rule TEXT NOT "
               "NULL, qualified_at INTEGER NOT NULL, notified_at INTEGER, "
               "PRIMARY KEY (tenant_key, qualification_id))")
    db.execute("CREATE INDEX handoffs_time ON handoffs(qualified_at)")
    db.execute("CREATE INDEX handoffs_subject ON handoffs(tenant_key, subject_type, "
               "subject_id)")
    db.execute(HANDOFF_BACKFILL)


def _stage_criteria(db: sqlite_utils.Database) -> None:
    """Issue 20: a stage change keeps sales' structured reasons beside the free text
    (``criteria``, a JSON object such as ``{"budget": false}``)."""
    db.execute("ALTER TABLE stage_changes ADD COLUMN criteria TEXT")


def _identities(db: sqlite_utils.Database) -> None:
    """Issue 20: identities. ``aliases`` maps an id that was linked to a user (Segment's
    ``alias``, or an anonymous id an ``identify`` linked) to that user; calls under it count
    for the user from then on. Events keep the call's Segment ``context`` and
    ``integrations`` as given (NULL when absent)."""
    db.execute("CREATE TABLE aliases (tenant_key TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
               "at INTEGER NOT NULL) WITHOUT ROWID")  # tenant_key: the linked id itself
    db.execute("CREATE INDEX aliases_user ON aliases(user_id)")
    db.execute("ALTER TABLE events ADD COLUMN context TEXT")
    db.execute("ALTER TABLE events ADD COLUMN integrations TEXT")


def _call_contexts(db: sqlite_utils.Database) -> None:
    """Issue 20b (after issue 20's; the lead renumbers): the Segment ``context`` and
    ``integrations`` of an ``identify``, ``group`` or ``alias`` call, kept as given (JSON
    texts) as events keep a track's; a row only for a call that carried either. Keyed by
    the user's tenant, like the user's events."""
    db.execute(
        "CREATE TABLE call_contexts (id INTEGER PRIMARY KEY, tenant_key TEXT NOT NULL, "
        "kind TEXT NOT NULL, user_id TEXT NOT NULL, account_id TEXT, message_id TEXT, "
        "at INTEGER NOT NULL, context TEXT, integrations TEXT)")
    db.execute("CREATE INDEX call_contexts_user ON call_contexts(tenant_key, user_id, at)")


def _call_ids_per_user(db: sqlite_utils.Database) -> None:
    """(issue 21) An identify/group/alias/stage message id is remembered per user (its
    ``tenant_key``, as on PostgreSQL): the key of ``import_done`` was the message id alone,
    so a second user's call reusing an id was dropped as a duplicate. The rows and the
    ``import_done_user`` index are kept; a release that predates this one keeps writing
    (its ``INSERT OR IGNORE`` names the three columns).

    Rebuilt by hand, SQLite's way (new table, copy, drop, rename), not by sqlite-utils'
    ``table.transform()``: the table is ``WITHOUT ROWID`` and ``transform()`` (4.2) always
    copies ``rowid``, which such a table does not have ("datatype mismatch")."""
    db.execute("CREATE TABLE import_done_new (tenant_key TEXT NOT NULL, message_id TEXT NOT "
               "NULL, user_id TEXT, PRIMARY KEY (tenant_key, message_id)) WITHOUT ROWID")
    db.execute("INSERT OR IGNORE INTO import_done_new (tenant_key, message_id, user_id) "
               "SELECT coalesce(tenant_key, " + TENANT_BACKFILL["import_done"] + "), "
               "message_id, user_id FROM import_done")
    db.execute("DROP TABLE import_done")
    db.execute("ALTER TABLE import_done_new RENAME TO import_done")
    db.execute("CREATE INDEX import_done_user ON import_done(tenant_key, user_id) "
               "WHERE user_id IS NOT NULL")


#: Forward migrations; the file's ``PRAGMA user_version`` is how many have been applied.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1, _v2, _v3, _v4, _forgotten_message_ids, _event_rollups, _shadow_and_rule_versions,
    _outbox_claims_and_payload_format, _unambiguous_qualification_ids,
    _tenant_keys,  # issue 19: the tenant key
    _trait_history,  # issue 20
    _qualification_firings,  # issue 20
    _handoffs,  # issue 20
    _stage_criteria,  # issue 20
    _identities,  # issue 20
    _call_contexts,  # issue 20b: context/integrations of identify, group, alias
    _import_checkpoints,  # issue 21: import checkpoints
    _call_ids_per_user,  # issue 21: import_done keyed by (tenant_key, message_id)
]


_MICROSECOND = timedelta(microseconds=1)


#: Connections inherited across fork(): kept alive so that they are never finalized.
_INHERITED: list[sqlite_utils.Database] = []


#: ``Client(synchronous=...)``: what a commit waits for (see the README's durability contract).
SYNCHRONOUS = ("normal", "full")


def connect(database: str | os.PathLike[str] | sqlite_utils.Database, busy_timeout: float,
            synchronous: str = "normal") -> sqlite_utils.Database:
    """Open ``database`` (a path, ``":memory:"`` or a ``sqlite_utils.Database``) for pqlsdk.

    For a ``sqlite_utils.Database`` on a file, pqlsdk opens its own connection to that file:
    the delivery thread needs one it may use, and the application's stays its own. An
    in-memory ``Database`` can only be shared, so its connection is used as it is.

    A file that is there must be a SQLite database and not be truncated
    (:func:`~pqlsdk.filecheck.check_header`, which reads the header through SQLite: a
    descriptor of our own, once closed, would drop this process's POSIX locks on the file).
    The connection has ``secure_delete`` on (a deleted row is overwritten, so ``forget()``
    leaves no byte of the user in the file) and
    ``cell_size_check`` on (SQLite checks each b-tree page it reads, so a damaged page is
    reported rather than miscounted).
    """
    require_sqlite()
    if isinstance(database, sqlite_utils.Database):
        files = [row[2] for row in database.conn.execute("PRAGMA database_list")
                 if row[1] == "main" and row[2]]
        if files:
            return connect(files[0], busy_timeout, synchronous)
        db = database
        db.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    else:
        conn = sqlite3.connect(
            os.fspath(database),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        if os.fspath(database) != ":memory:":
            check_header(conn, os.fspath(database))
        db = sqlite_utils.Database(conn, execute_plugins=False)
    try:
        db.conn.execute("SELECT power(2, 1)")
    except sqlite3.OperationalError:  # SQLite built without its math functions
        db.conn.create_function("power", 2, math.pow, deterministic=True)
    db.conn.execute("PRAGMA secure_delete = ON")
    db.conn.execute("PRAGMA cell_size_check = ON")
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] != "memory":
        db.conn.execute("PRAGMA journal_mode = WAL")
    db.conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return db


def migrate(db: sqlite_utils.Database) -> int:
    """Apply the migrations this file lacks, each in its own IMMEDIATE transaction.

    A file that is current is only read (no write lock is taken), so opening it never waits
    for another process's writes."""
    version = db.conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this pqlsdk "
            f"understands ({len(MIGRATIONS)}); upgrade pqlsdk to open it"
        )
    if version == len(MIGRATIONS):
        return version
    while True:
        with _immediate(db.conn):
            version = db.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"the database has schema version {version}, newer than this pqlsdk "
                    f"understands ({len(MIGRATIONS)}); upgrade pqlsdk to open it"
                )
            if version == len(MIGRATIONS):
                return version
            MIGRATIONS[version](db)
            db.conn.execute(f"PRAGMA user_version = {version + 1}")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Store:
    """pqlsdk's SQLite file. Use :meth:`write` for changes and :meth:`read` for queries."""

    #: Which engine this store runs on (``"sqlite"`` or ``"postgresql"``).
    engine = "sqlite"

    def __init__(
        self,
        database: str | os.PathLike[str] | sqlite_utils.Database = "pql.db",
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "normal",
    ) -> None:
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.closed = False
        #: Set once the file was found damaged: every later write raises it again.
        self.corrupt: StoreCorrupt | None = None
        #: The database file, or None for an in-memory database.
        self.path: str | None = None
        if not isinstance(database, sqlite_utils.Database) and database != ":memory:":
            self.path = os.path.abspath(os.fspath(database))
        try:
            self.db = connect(database, busy_timeout, synchronous)
            self.path = self._file()
            probe(self.db.conn)
            migrate(self.db)
        except sqlite3.Error as exc:
            if hasattr(self, "db"):
                self.db.conn.close()
            raise self.translate(exc) from exc
        self.lock = threading.RLock()
        self._held: tuple[Any, ...] = ()
        self._tx = Transaction(self.db.conn)
        self._write = _Write(self)
        self._open_reader()

    def _open_reader(self) -> None:
        """Reads get their own connection on a file (WAL lets them run beside a write, and
        a long report does not hold the write connection's lock); an in-memory database
        has only the one connection, shared under the same lock."""
        if self.path is None:
            self.read_db, self.read_lock = self.db, self.lock
        else:
            self.read_db = connect(self.path, self.busy_timeout, self.synchronous)
            self.read_db.conn.execute("PRAGMA query_only = 1")
            self.read_lock = threading.RLock()
        self._read_tx = Transaction(self.read_db.conn)

    def translate(self, exc: sqlite3.Error) -> StoreError:
        """The pqlsdk error for a ``sqlite3`` error on this file (the one place they are
        mapped; see :func:`pqlsdk.filecheck.translate`). A damaged file stops all writes."""
        error = translate(exc, self.path, self.busy_timeout)
        if isinstance(error, StoreCorrupt):
            self.corrupt = error
        return error

    def _file(self) -> str | None:
        rows = self.db.conn.execute("PRAGMA database_list").fetchall()
        return next((row[2] or None for row in rows if row[1] == "main"), None)

    def hold_for_fork(self) -> None:
        """Before fork(): wait until no thread of this process is inside a statement."""
        self._held = (self.lock, self.read_lock)
        for lock in self._held:
            lock.acquire()

    def release_after_fork(self) -> None:
        """After fork(), in the parent: let the threads go on."""
        for lock in reversed(getattr(self, "_held", ())):
            lock.release()
        self._held = ()

    def reopen_after_fork(self) -> None:
        """In a forked child: leave the parent's connection alone and open a new one.

        A SQLite connection must not cross fork(); closing the inherited one could disturb
        the parent's locks, so it is kept referenced and never used again. An in-memory
        database is the child's own copy and is kept.
        """
        self.lock = threading.RLock()
        self._held = ()
        if self.path is not None:  # known from before the fork: the old connection is not used
            _INHERITED.extend([self.db, self.read_db])
            self.db = connect(self.path, self.busy_timeout, self.synchronous)
        self._tx = Transaction(self.db.conn)
        self._write = _Write(self)
        self._open_reader()

    def write(self) -> _Write:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error::

            with store.write() as tx:
                tx.insert_event(...)
        """
        if self.closed:
            raise StoreClosed("this pqlsdk Client is closed; make a new one")
        if self.corrupt is not None:
            raise self.corrupt
        return self._write

    def transact(self, work: Callable[[Transaction], T]) -> T:
        """Run ``work(tx)`` in one write transaction and commit (on SQLite it never needs
        running again: ``BEGIN IMMEDIATE`` serializes every writer)."""
        with self.write() as tx:
            return work(tx)

    def wait_for_rows(self, timeout: float) -> bool:
        """PostgreSQL wakes an idle delivery worker on NOTIFY; a file has no such signal
        (the worker polls): always False, at once."""
        return False

    @contextmanager
    def read(self, timeout: float | None = None) -> Iterator[Transaction]:
        """Queries outside a write transaction, on the read connection: each sees the
        latest commit, and none waits for a write (another thread's or another process's).

        The read connection serves one thread at a time; ``timeout`` bounds the wait for it
        (a long report on another thread), raising :class:`~pqlsdk.StoreBusy` past it, so
        that ``flush(timeout=)`` and ``close(timeout=)`` keep their deadlines.
        """
        if self.closed:
            raise StoreClosed("this pqlsdk Client is closed; make a new one")
        if not self.read_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise StoreBusy(f"the read connection stayed in use by another thread (a long "
                            f"report) for more than {timeout:g} s", path=self.path)
        try:
            if self.closed:
                raise StoreClosed("this pqlsdk Client is closed; make a new one")
            self._read_tx.reset()
            try:
                yield self._read_tx
            except sqlite3.Error as exc:
                if not _store_error(exc):
                    raise
                raise self.translate(exc) from exc
        finally:
            if self.closed and self.read_db is not self.db:
                _close(self.read_db)  # close() did not wait for this thread: it closes
            self.read_lock.release()

    def checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it to zero bytes (after :meth:`forget
        <pqlsdk.Client.forget>`: older copies of erased rows live in the WAL until then).
        Raises :class:`~pqlsdk.StoreBusy` if a reader kept it from completing."""
        if self.path is None:
            return
        with self.lock:
            try:
                busy, _, _ = self.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise self.translate(exc) from exc
        if busy:
            raise StoreBusy("another connection kept the WAL from being checkpointed; erased "
                            "rows may remain in the -wal file until the next checkpoint: "
                            "retry when it has finished", path=self.path)

    def usage(self, now: int) -> FileUsage | None:
        """The file's size and growth as of ``now`` (µs), or None in memory."""
        if self.path is None:
            return None
        with self.read():
            return usage(self.read_db.conn, self.path, now)

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """For a long run of big transactions (an import): a 256 MiB page cache and a WAL
        checkpoint every 100,000 pages instead of 1,000; after it, the WAL is checkpointed
        and truncated and the previous settings come back. (Not for track(): there a larger
        cache measured slower.)"""
        conn = self.db.conn
        with self.lock:
            cache = conn.execute("PRAGMA cache_size").fetchone()[0]
            checkpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            conn.execute("PRAGMA wal_autocheckpoint = 100000")
        try:
            yield
        finally:
            with self.lock:
                if not self.closed:
                    conn.execute(f"PRAGMA cache_size = {int(cache)}")
                    conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint)}")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self, timeout: float | None = None) -> None:
        """Close the connections; later calls raise :class:`StoreClosed`.

        A connection in use by another thread (a delivery waiting for another process's
        write lock) is not waited for past ``timeout`` seconds: that thread closes it
        when it lets go.
        """
        self.closed = True
        for lock, db in ((self.read_lock, self.read_db), (self.lock, self.db)):
            if lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                try:
                    _close(db)
                finally:
                    lock.release()


def _close(db: sqlite_utils.Database) -> None:
    with suppress(sqlite3.ProgrammingError):  # closed already
        db.conn.close()


class _Write:
    """The context manager behind :meth:`Store.write` (a class: it is on every track's path)."""

    __slots__ = ("conn", "db", "lock", "store", "tx")

    def __init__(self, store: Store) -> None:
        self.conn, self.lock, self.tx, self.store = store.db.conn, store.lock, store._tx, store
        self.db = store.db

    def __enter__(self) -> Transaction:
        self.lock.acquire()
        try:
            if self.store.closed:  # closed while this thread waited for the lock
                _close(self.db)
                raise StoreClosed("this pqlsdk Client is closed; make a new one")
            self.conn.execute("BEGIN IMMEDIATE")
            self.tx.reset()
        except BaseException as exc:
            if self.store.closed:  # close() did not wait for this thread: it closes
                _close(self.db)
            self.lock.release()
            if _store_error(exc):
                raise self.store.translate(exc) from exc  # type: ignore[arg-type]
            raise
        return self.tx

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                try:
                    self.conn.execute("COMMIT")
                except BaseException as failed:
                    exc = failed
            # A failed COMMIT (disk full, I/O error) may have rolled back already: only roll
            # back what is still open, so the real error is the one raised.
            if exc is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            if self.store.closed:  # close() did not wait for this thread: it closes
                _close(self.db)
            self.lock.release()
        if exc is not None and _store_error(exc):
            raise self.store.translate(exc) from exc  # type: ignore[arg-type]
        if exc_type is None and exc is not None:
            raise exc


def _store_error(exc: BaseException) -> bool:
    """A ``sqlite3`` error about the file, or a constraint the call broke (not a
    programming error)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.ProgrammingError | sqlite3.InterfaceError)


def _row_dict(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}



def _subject_columns(alias: str, subject_type: str, key: str, tenant: str = ":tenant"
                     ) -> str:
    # rules met this round, as a JSON array: a shadow rule's as [name] (its own space)
    return (
        f"{alias}.traits, {alias}.stage, {alias}.round, {alias}.round_since, "
        f"(SELECT json_group_array(CASE WHEN q.shadow THEN json_array(rule) ELSE rule END) "
        f"FROM qualifications q WHERE q.tenant_key = {tenant} "
        f"AND q.subject_type = '{subject_type}' AND q.subject_id = {alias}.{key} "
        f"AND q.round = {alias}.round)"
    )


_USER_SNAPSHOT = (
    f"SELECT u.account_id, {_subject_columns('u', 'user', 'user_id')}, "
    f"{_subject_columns('a', 'account', 'account_id')} "
    "FROM users u LEFT JOIN accounts a ON a.tenant_key = :tenant "
    "AND a.account_id = u.account_id WHERE u.tenant_key = :tenant AND u.user_id = :id"
)


#: The start of a call on SQLite (:meth:`Transaction.lock_user`), one statement: the user's
#: id (the one an alias linked ``:given`` to, else ``:given``), its tenant (its account now,
#: else itself; a new user's: ``:account``, else itself), and what :data:`_USER_SNAPSHOT`
#: reads (the user's row found when ``u.user_id`` is set).
_LOCK_USER = (
    f"SELECT t.id, t.tenant, u.user_id IS NOT NULL, u.account_id, "
    f"{_subject_columns('u', 'user', 'user_id', 't.tenant')}, "
    f"{_subject_columns('a', 'account', 'account_id', 't.tenant')} "
    f"FROM (SELECT c.id, coalesce(d.account_id, d.tenant_key, :account, c.id) AS tenant "
    f"FROM (SELECT coalesce((SELECT user_id FROM aliases WHERE tenant_key = :given), "
    f":given) AS id) c "
    f"LEFT JOIN user_directory d ON d.tenant_key = c.id) t "
    f"LEFT JOIN users u ON u.tenant_key = t.tenant AND u.user_id = t.id "
    f"LEFT JOIN accounts a ON a.tenant_key = t.tenant AND a.account_id = u.account_id"
)


class _Snapshot(NamedTuple):
    """A user's snapshot read when its call began: good until the transaction writes."""

    user_id: str
    changes: int
    row: UserRow | None


_SUBJECT_SNAPSHOT = {
    kind: f"SELECT {_subject_columns('s', kind, key)} FROM {table} s "
          f"WHERE s.tenant_key = :tenant AND s.{key} = :id"
    for kind, (table, key) in _TABLES.items()
}
#: What moves with a user into another tenant (:meth:`Transaction.move_user`): its own
#: rows. The outbox rows already written stay where they are (a claim has their key).
_MOVES = [
    # the old account's rules keep counting what the user did in it (they count the events
    # recorded with the account): those stay, and the user takes a copy; the user's copy of
    # what it did in the new account (if it was there before) gives way to the originals.
    # Rows move by INSERT ... SELECT and DELETE, never by updating the tenant key (which a
    # sharded engine does not allow for its distribution column); an event whose message
    # id the new tenant already holds is stored there once, as track() would.
    "DELETE FROM events WHERE tenant_key = :old AND user_id = :user AND account_id = :new",
    "INSERT OR IGNORE INTO events (tenant_key, message_id, user_id, account_id, event, ts, "
    "properties, context, integrations) SELECT :new, message_id, user_id, account_id, "
    "event, ts, properties, context, integrations "
    "FROM events WHERE tenant_key = :old AND user_id = :user ORDER BY id",
    "DELETE FROM events WHERE tenant_key = :old AND user_id = :user "
    "AND (account_id IS NULL OR account_id <> :old)",
    "DELETE FROM event_rollups WHERE tenant_key = :old AND user_id = :user "
    "AND account_id = :new",
    "INSERT INTO event_rollups (tenant_key, user_id, account_id, event, properties, n, "
    "first_ts, last_ts) SELECT :new, user_id, account_id, event, properties, n, first_ts, "
    "last_ts FROM event_rollups WHERE tenant_key = :old AND user_id = :user ORDER BY id",
    "DELETE FROM event_rollups WHERE tenant_key = :old AND user_id = :user "
    "AND (account_id IS NULL OR account_id <> :old)",
    "INSERT INTO stage_changes (tenant_key, subject_type, subject_id, from_stage, to_stage, "
    "at, source, reason, criteria) SELECT :new, subject_type, subject_id, from_stage, "
    "to_stage, at, source, reason, criteria FROM stage_changes WHERE tenant_key = :old "
    "AND subject_type = 'user' AND subject_id = :user ORDER BY id",
    "DELETE FROM stage_changes WHERE tenant_key = :old AND subject_type = 'user' "
    "AND subject_id = :user",
]
#: Rows of a moving user read and written back (their keys are unique without the tenant
#: key on SQLite, so they leave the old tenant before they enter the new one).
#: What an alias moves from the previous id to the user: (table, the column naming the
#: user, order). Qualifications take the user's round.
_MERGED: list[tuple[str, str, str | None]] = [
    ("events", "user_id", "id"),
    ("event_rollups", "user_id", "id"),
    ("qualifications", "subject_id", "qualified_at, rowid"),
    ("stage_changes", "subject_id", "id"),
    ("trait_changes", "subject_id", "id"),
    ("handoffs", "subject_id", None),
    ("import_done", "user_id", None),
    ("import_staging", "user_id", None),
    ("call_contexts", "user_id", "id"),  # issue 20b
]
#: Tables whose rows get new ids when written back (their ids are only an order).
_RENUMBERED = ("events", "event_rollups", "stage_changes", "trait_changes", "call_contexts")

_MOVED_ROWS: list[tuple[str, str, str | None]] = [
    ("users", "tenant_key = ? AND user_id = ?", None),
    ("qualifications", "tenant_key = ? AND subject_type = 'user' AND subject_id = ?",
     "qualified_at, rowid"),
    # issue 20: the trait history and the hand-offs waiting for sales
    ("trait_changes", "tenant_key = ? AND subject_type = 'user' AND subject_id = ?", "id"),
    ("handoffs", "tenant_key = ? AND subject_type = 'user' AND subject_id = ?", None),
]


def user_row(row: tuple[Any, ...] | None) -> UserRow | None:
    """A :data:`_USER_SNAPSHOT` result row as a :class:`UserRow` (None: an unknown user)."""
    if row is None:
        return None
    return UserRow(row[0], SubjectRow(*row[1:6]),
                   None if row[0] is None else SubjectRow(*row[6:11]))


#: Store one event (the PostgreSQL store may send it as a plain INSERT: see its
#: ``PgTransaction``).
INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (tenant_key, message_id, user_id, account_id, event, ts, "
    "properties) VALUES (?, ?, ?, ?, ?, ?, ?)")
#: Record a qualification (without its ``ON CONFLICT DO NOTHING``).
INSERT_QUALIFICATION = (
    "INSERT INTO qualifications (tenant_key, id, rule, stage, subject_type, subject_id, "
    "user_id, account_id, qualified_at, evidence, round, rule_version, shadow, firing) "
    "VALUES (:tenant_key, :id, :rule, :stage, :subject_type, :subject_id, :user_id, "
    ":account_id, :qualified_at, :evidence, :round, :rule_version, :shadow, :firing)")

_INSERT_QUALIFICATION_ONCE = INSERT_QUALIFICATION + " ON CONFLICT DO NOTHING"


class Transaction:
    """The statements pqlsdk runs, on one connection; obtained from :meth:`Store.write`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._forget_key: bytes | None = None
        #: The tenant of this transaction's call (see :meth:`enter`), and whose it is.
        self.tenant: str | None = None
        self.tenant_user: str | None = None
        self._user_read: _Snapshot | None = None

    def reset(self) -> None:
        """A new transaction: no tenant yet."""
        self.tenant = self.tenant_user = None
        self._user_read = None

    # -- tenants --------------------------------------------------------------------------

    def tenant_of(self, user_id: str) -> str | None:
        """The tenant a known user's rows are in (its account, else itself); None for a user
        never seen. Routed by the user id (``user_directory``)."""
        row = self.conn.execute(
            "SELECT coalesce(account_id, tenant_key) FROM user_directory WHERE tenant_key = ?",
            (user_id,)).fetchone()
        return row[0] if row else None

    def enter(self, subject_type: str, subject_id: str) -> str:
        """Bind this transaction to the subject's tenant (an account's is itself; a user's,
        its account now, else itself) and return it: every later statement about the
        subject filters by it."""
        if subject_type == "account":
            self.tenant, self.tenant_user = subject_id, None
        else:
            self.tenant = self.tenant_of(subject_id) or subject_id
            self.tenant_user = subject_id
        return self.tenant

    def tenant_for(self, subject_type: str, subject_id: str) -> str:
        """The tenant key of a subject's rows: the one :meth:`enter` bound when it is that
        subject's, else looked up."""
        if subject_type == "account":
            return subject_id
        if subject_id == self.tenant_user and self.tenant is not None:
            return self.tenant
        return self.tenant_of(subject_id) or subject_id

    def forgotten_hash(self, message_id: str, user_id: str | None = None) -> bytes:
        """The keyed hash by which a forgotten message id is remembered (HMAC-SHA-256 with
        this database's random key, 16 bytes): the id itself is not kept. A forget writes it
        with the user (or an id linked to it) that the message named, so that another user's
        message reusing the id is not taken for the forgotten one's; without ``user_id``,
        the form releases before issue 21 wrote (the id alone), still read. (Neither id
        can hold a NUL: validation refuses it, so the two forms never meet.)"""
        if self._forget_key is None:
            self._forget_key = self.conn.execute(
                "SELECT value FROM pqlsdk_meta WHERE key = 'forget_key'").fetchone()[0]
        text = message_id if user_id is None else f"{user_id}\0{message_id}"
        return hmac.new(self._forget_key, text.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()[:16]

    # -- savepoints (shared commits: one per call of a batch) ------------------------------

    def savepoint(self) -> None:
        """Mark where the next call of a shared batch starts."""
        self.conn.execute("SAVEPOINT pqlsdk_call")

    def release_savepoint(self) -> None:
        """Keep what the call did since :meth:`savepoint`."""
        self.conn.execute("RELEASE SAVEPOINT pqlsdk_call")

    def rollback_to_savepoint(self) -> None:
        """Undo what the call did since :meth:`savepoint` (the others of the batch stay)."""
        self.conn.execute("ROLLBACK TO SAVEPOINT pqlsdk_call")
        self.conn.execute("RELEASE SAVEPOINT pqlsdk_call")

    # -- events, users, accounts ----------------------------------------------------------

    def lock_user(self, user_id: str, account_id: str | None) -> str:
        """The user a call on ``user_id`` counts for (the one an ``alias`` linked the id
        to, else itself), locked and bound as :meth:`lock_subjects` does; returns its id.
        On SQLite one statement answers the alias, the tenant and the user's snapshot (what
        :meth:`user_snapshot` returns next, while nothing is written)."""
        row = self.conn.execute(_LOCK_USER, {"given": user_id, "account": account_id}
                                ).fetchone()
        user_id, tenant, found = row[:3]
        self.tenant, self.tenant_user = tenant, user_id
        self._user_read = _Snapshot(user_id, self.conn.total_changes,
                                    user_row(row[3:]) if found else None)
        return str(user_id)

    def lock_subjects(self, user_id: str, account_id: str | None) -> None:
        """Serialize this call with every other on the same user and account, and bind it to
        the user's tenant (a new user's: ``account_id``, else itself). On SQLite the write
        transaction (``BEGIN IMMEDIATE``) already excludes every other writer."""
        self.tenant = self.tenant_of(user_id) or account_id or user_id
        self.tenant_user = user_id

    def bind(self, user_id: str, tenant: str) -> None:
        """Bind this transaction to a user whose tenant the caller knows and has locked
        already (a bulk segment's user: its account, else itself), as :meth:`lock_subjects`
        binds it after reading it: the statements about the user that follow need no
        lookup."""
        self.tenant, self.tenant_user = tenant, user_id

    def lock_subject(self, subject_type: str, subject_id: str) -> None:
        """Serialize on one user or account and bind its tenant (see :meth:`lock_subjects`)."""
        if subject_type == "user":
            self.lock_subjects(subject_id, None)
        else:
            self.enter("account", subject_id)

    def has_rollups(self) -> bool:
        """Whether retention pruned any event into a rollup (in any tenant)."""
        return self.conn.execute("SELECT 1 FROM event_rollups LIMIT 1").fetchone() is not None

    def rows(self, table: str, where: str, args: Sequence[Any], order_by: str | None = None
             ) -> list[dict[str, Any]]:
        """The rows of one of pqlsdk's tables matching ``where`` (SQL with ``?`` marks;
        ``table``, ``where`` and ``order_by`` come from pqlsdk's code, never from input)."""
        cursor = self.conn.execute(
            f"SELECT * FROM {table} WHERE {where}"
            + (f" ORDER BY {order_by}" if order_by else ""), list(args))
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def insert_event(
        self,
        message_id: str | None,
        user_id: str,
        account_id: str | None,
        event: str,
        ts: int,
        properties: str,
    ) -> bool:
        """Store one event; False when ``message_id`` was already stored (nothing changes)."""
        cursor = self.conn.execute(
            INSERT_EVENT,
            (self.tenant_for("user", user_id), message_id, user_id, account_id, event, ts,
             properties),
        )
        return cursor.rowcount == 1

    def insert_event_with(self, message_id: str | None, user_id: str, account_id: str | None,
                          event: str, ts: int, properties: str, context: str | None,
                          integrations: str | None) -> bool:
        """:meth:`insert_event` with the call's Segment ``context`` and ``integrations``
        (JSON texts, kept as given)."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO events (tenant_key, message_id, user_id, account_id, event, "
            "ts, properties, context, integrations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.tenant_for("user", user_id), message_id, user_id, account_id, event, ts,
             properties, context, integrations))
        return cursor.rowcount == 1

    def insert_call_context(self, kind: str, user_id: str, account_id: str | None,
                            message_id: str | None, at: int, context: str | None,
                            integrations: str | None) -> None:
        """Keep the Segment ``context`` and ``integrations`` (JSON texts, as given) of an
        identify/group/alias call of ``user_id`` (events keep a track's)."""
        self.conn.execute(
            "INSERT INTO call_contexts (tenant_key, kind, user_id, account_id, message_id, "
            "at, context, integrations) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.tenant_for("user", user_id), kind, user_id, account_id, message_id, at,
             context, integrations))

    def remember_call(self, message_id: str, user_id: str) -> bool:
        """Record the ``message_id`` of an identify/group/alias call (an imported stage
        line's too) under the user it names; False when it was recorded before (the call
        is a duplicate)."""
        return self.conn.execute(
            "INSERT OR IGNORE INTO import_done (tenant_key, message_id, user_id) "
            "VALUES (?2, ?1, ?2)", (message_id, user_id)).rowcount == 1

    # -- identities -----------------------------------------------------------------------

    def has_aliases(self) -> bool:
        """Whether any id was ever linked to a user (``alias``, or an identify naming an
        anonymous id)."""
        return self.conn.execute("SELECT 1 FROM aliases LIMIT 1").fetchone() is not None

    def alias_of(self, user_id: str) -> str | None:
        """The user an id was linked to (``alias``), or None."""
        row = self.conn.execute("SELECT user_id FROM aliases WHERE tenant_key = ?",
                                (user_id,)).fetchone()
        return row[0] if row else None

    def user_row(self, user_id: str) -> dict[str, Any] | None:
        """A user's row (traits, account, stage, round, first entries), or None."""
        cursor = self.conn.execute("SELECT * FROM users WHERE tenant_key = ? AND user_id = ?",
                                   (self.tenant_for("user", user_id), user_id))
        row = cursor.fetchone()
        return None if row is None else _row_dict(cursor, row)

    def rule_firsts(self, user_ids: tuple[str, str]) -> list[tuple[str, str, int, int]]:
        """``(user id, rule, shadow, first qualified_at)`` of both users' qualifications."""
        return [row for user_id in user_ids for row in self.conn.execute(
            "SELECT subject_id, rule, shadow, min(qualified_at) FROM qualifications WHERE "
            "tenant_key = ? AND subject_type = 'user' AND subject_id = ? "
            "GROUP BY subject_id, rule, shadow",
            (self.tenant_for("user", user_id), user_id)).fetchall()]

    def drop_qualifications(self, user_id: str, rule: str, shadow: int) -> None:
        """Remove a user's qualifications of one rule (an alias keeps the earlier one)."""
        args = (self.tenant_for("user", user_id), user_id, rule, shadow)
        self.conn.execute(
            "DELETE FROM handoffs WHERE tenant_key = ?1 AND qualification_id IN (SELECT id "
            "FROM qualifications WHERE tenant_key = ?1 AND subject_type = 'user' "
            "AND subject_id = ?2 AND rule = ?3 AND shadow = ?4)", args)
        self.conn.execute(
            "DELETE FROM qualifications WHERE tenant_key = ? AND subject_type = 'user' "
            "AND subject_id = ? AND rule = ? AND shadow = ?", args)

    def move_user_rows(self, previous: str, user_id: str, round_: int | None,
                       tenants: tuple[str, str]) -> None:
        """Everything recorded under user ``previous`` (in tenant ``tenants[0]``) now
        belongs to ``user_id`` (in ``tenants[1]``), its qualifications in ``round_``
        (None: each in its own), each the next firing of its rule there (none is dropped):
        events, rollups, qualifications, history, trait history, hand-offs and import
        bookkeeping are written to the user's tenant and removed from the old one (never an
        update of a tenant key), except that events and rollups recorded with the old
        tenant's account stay there too (rewritten to ``user_id``), as a group move keeps
        them; pending deliveries, account qualifications the previous id completed and the
        ids linked to it follow by user id (an alias is named cross-tenant work, as group
        and forget are)."""
        args = {"old": tenants[0], "new": tenants[1], "prev": previous, "user": user_id,
                "round": round_}
        self.hold_counted_rows(tenants[0], previous)
        for table, who, order in _MERGED:
            keyed_by_user = table in ("import_done", "import_staging")
            where = (f"tenant_key = ? AND {who} = ?"
                     + ("" if who == "user_id" else " AND subject_type = 'user'"))
            found = self.rows(table, where, [previous if keyed_by_user else tenants[0],
                                             previous], order)
            if not found:
                continue
            self.conn.execute(f"DELETE FROM {table} WHERE {where}",
                              (previous if keyed_by_user else tenants[0], previous))
            for row in found:  # read, removed, written back: no key is ever shared
                row["tenant_key"] = user_id if keyed_by_user else tenants[1]
                row[who] = user_id
                if table in _RENUMBERED:
                    row.pop("id", None)
                if table == "qualifications":
                    self._merge_qualification(row, round_)
                    continue
                if (table in ("events", "event_rollups") and tenants[0] != tenants[1]
                        and row["account_id"] == tenants[0]):
                    # as a group move does: what was recorded with the old account stays
                    # in its tenant (its rules count it) and the user takes a copy
                    self._insert_row(table, {**row, "tenant_key": tenants[0]})
                self._insert_row(table, row)
        for sql in (
            "UPDATE qualifications SET user_id = :user WHERE user_id = :prev",
            "UPDATE outbox SET user_id = :user WHERE user_id = :prev",
            "UPDATE aliases SET user_id = :user WHERE user_id = :prev",
        ):
            self.conn.execute(sql, args)

    def _insert_row(self, table: str, row: dict[str, Any]) -> None:
        # an event whose message id the tenant already holds is stored there once
        self.conn.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(row)}) VALUES "
                          f"({', '.join('?' * len(row))})", list(row.values()))

    def _merge_qualification(self, row: dict[str, Any], round_: int | None) -> None:
        """Write a merged qualification (its id kept: it was delivered) in ``round_`` (None:
        its own round) as the next firing of its rule there, so that no distinct firing of
        the previous id collides with another and is lost."""
        if round_ is not None:
            row["round"] = round_
        taken = self.conn.execute(
            "SELECT max(firing) FROM qualifications WHERE tenant_key = ? "
            "AND subject_type = 'user' AND subject_id = ? AND rule = ? AND shadow = ? "
            "AND round = ?", (row["tenant_key"], row["subject_id"], row["rule"],
                              row["shadow"], row["round"])).fetchone()[0]
        if taken is not None:
            row["firing"] = max(int(row.get("firing") or 0), taken + 1)
        self.conn.execute(f"INSERT INTO qualifications ({', '.join(row)}) VALUES "
                          f"({', '.join('?' * len(row))})", list(row.values()))

    def rename_user(self, previous: str, user_id: str) -> tuple[str, str]:
        """``user_id`` (never seen) takes the previous subject's place: a user row and a
        directory entry of its own, in the account the previous one was in (else its own
        tenant); the previous one's row goes. Returns ``(old tenant, new tenant)``."""
        old = self.tenant_for("user", previous)
        row = self.user_row(previous)
        assert row is not None
        new = row["account_id"] or user_id
        self.conn.execute("INSERT INTO user_directory (tenant_key, account_id) VALUES (?, ?)",
                          (user_id, row["account_id"]))
        row = {**row, "tenant_key": new, "user_id": user_id}
        self.conn.execute(f"INSERT INTO users ({', '.join(row)}) VALUES "
                          f"({', '.join('?' * len(row))})", list(row.values()))
        self._drop_user(previous, old)
        self.tenant, self.tenant_user = new, user_id
        return old, new

    def merge_user_row(self, previous: str, user_id: str, traits_json: str) -> tuple[str, str]:
        """Fold ``previous``'s row into ``user_id``'s: the merged traits, the earliest
        first-seen and first entry into each stage (the user keeps its account); then
        remove it. Returns ``(old tenant, new tenant)``."""
        old, new = self.tenant_for("user", previous), self.tenant_for("user", user_id)
        firsts = ", ".join(f"first_{stage} = CASE WHEN p.first_{stage} IS NULL THEN "
                           f"users.first_{stage} WHEN users.first_{stage} IS NULL THEN "
                           f"p.first_{stage} WHEN p.first_{stage} < users.first_{stage} THEN "
                           f"p.first_{stage} ELSE users.first_{stage} END"
                           for stage in STAGES)
        self.conn.execute(
            f"UPDATE users SET traits = :traits, first_seen = CASE WHEN "
            f"p.first_seen < users.first_seen THEN p.first_seen ELSE users.first_seen END, "
            f"{firsts} FROM (SELECT * FROM users WHERE tenant_key = :old AND user_id = :prev) "
            f"AS p WHERE users.tenant_key = :new AND users.user_id = :user",
            {"traits": traits_json, "old": old, "new": new, "prev": previous,
             "user": user_id})
        self._drop_user(previous, old)
        return old, new

    def _drop_user(self, user_id: str, tenant: str) -> None:
        self.conn.execute("DELETE FROM users WHERE tenant_key = ? AND user_id = ?",
                          (tenant, user_id))
        self.conn.execute("DELETE FROM user_directory WHERE tenant_key = ?", (user_id,))

    def add_alias(self, alias: str, user_id: str, at: int) -> None:
        """Link ``alias`` to ``user_id``."""
        self.conn.execute("INSERT INTO aliases (tenant_key, user_id, at) VALUES (?, ?, ?) "
                          "ON CONFLICT DO NOTHING", (alias, user_id, at))

    def user_snapshot(self, user_id: str) -> UserRow | None:
        """In one statement, what evaluating a user and its account needs: the user's
        account id, the user's row and its account's. ``None`` for an unknown user. Right
        after :meth:`lock_user` (nothing written since), the snapshot it read."""
        read, self._user_read = self._user_read, None
        if (read is not None and read.user_id == user_id
                and read.changes == self.conn.total_changes):
            return read.row
        return user_row(self.conn.execute(
            _USER_SNAPSHOT, {"tenant": self.tenant_for("user", user_id), "id": user_id}
        ).fetchone())

    def subject_snapshot(self, subject_type: str, subject_id: str) -> SubjectRow | None:
        """One user's or account's row, or ``None``."""
        row = self.conn.execute(
            _SUBJECT_SNAPSHOT[subject_type],
            {"tenant": self.tenant_for(subject_type, subject_id), "id": subject_id}).fetchone()
        return None if row is None else SubjectRow(*row)

    def add_user(self, user_id: str, account_id: str | None, ts: int) -> None:
        """Record a user seen for the first time: a ``lead`` from ``ts``, in the tenant of
        ``account_id`` (else its own), which this transaction is on from here."""
        tenant = self.tenant = account_id or user_id
        self.tenant_user = user_id
        self.conn.execute("INSERT INTO user_directory (tenant_key, account_id) VALUES (?, ?)",
                          (user_id, account_id))
        self.conn.execute(
            "INSERT INTO users (tenant_key, user_id, account_id, traits, first_seen, "
            "first_lead) VALUES (?, ?, ?, '{}', ?, ?4)",
            (tenant, user_id, account_id, ts),
        )
        self.add_stage_change("user", user_id, None, FIRST_STAGE, ts, "first_seen", None)

    def hold_counted_rows(self, tenant: str, user_id: str) -> None:
        """Before a user's events and rollups leave ``tenant`` (a move, a merge): make sure
        no pruner is folding some of them meanwhile, so the copy counts each event once (as
        an event or in a rollup). On SQLite a write transaction has the file to itself:
        nothing to do. PostgreSQL locks them (see ``PgTransaction``)."""

    def move_user(self, user_id: str, account_id: str) -> None:
        """Tie the user to ``account_id`` from now on: the one call that changes a user's
        tenant. The user's own rows (its row, events, pruned-event rollups, qualifications
        and stage history) move to the account's tenant in this transaction (the caller
        holds both accounts' row locks, see :meth:`lock_subjects`); from here on this
        transaction is on the new tenant."""
        old = self.tenant_for("user", user_id)
        # (a user id that is also the new account's id is in that tenant already: only its
        # row changes; no statement updates users.account_id, which the previous release's
        # trigger on PostgreSQL would take for a move of its own)
        moved = _MOVED_ROWS if old != account_id else _MOVED_ROWS[:1]
        if old != account_id:
            self.hold_counted_rows(old, user_id)
            for sql in _MOVES:
                self.conn.execute(sql, {"old": old, "new": account_id, "user": user_id})
        for table, where, order in moved:
            rows = self.rows(table, where, [old, user_id], order)
            self.conn.execute(f"DELETE FROM {table} WHERE {where}", (old, user_id))
            for row in rows:
                row["tenant_key"] = account_id
                if table == "users":
                    row["account_id"] = account_id
                names = ", ".join(row)
                self.conn.execute(f"INSERT INTO {table} ({names}) VALUES "
                                  f"({', '.join('?' * len(row))})", list(row.values()))
        self.conn.execute("UPDATE user_directory SET account_id = ? WHERE tenant_key = ?",
                          (account_id, user_id))
        self.tenant, self.tenant_user = account_id, user_id

    def add_account(self, account_id: str, ts: int) -> bool:
        """Record an account (a ``lead`` from ``ts``), unless it is known already; whether
        it was new."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO accounts (tenant_key, account_id, traits, first_seen, "
            "first_lead) VALUES (?1, ?1, '{}', ?2, ?2)",
            (account_id, ts),
        )
        if cursor.rowcount:
            self.add_stage_change("account", account_id, None, FIRST_STAGE, ts, "first_seen",
                                  None)
            return True
        return False

    # -- lifecycle ------------------------------------------------------------------------

    def add_stage_change(self, subject_type: str, subject_id: str, from_stage: str | None,
                         to_stage: str, at: int, source: str, reason: str | None,
                         criteria: str | None = None) -> None:
        """Append to the subject's history (:meth:`change_stage` also moves the subject);
        ``criteria``: sales' structured reasons as a JSON object, or None."""
        self.conn.execute(
            "INSERT INTO stage_changes (tenant_key, subject_type, subject_id, from_stage, "
            "to_stage, at, source, reason, criteria) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.tenant_for(subject_type, subject_id), subject_type, subject_id, from_stage,
             to_stage, at, source, reason, criteria),
        )

    def change_stage(self, subject_type: str, subject_id: str, from_stage: str,
                     to_stage: str, at: int, source: str, reason: str | None,
                     criteria: str | None = None) -> None:
        """Move a subject: its stage, its first entry into an ordered stage (what the funnel
        reads), a new round on a move to a side state, and its history row."""
        table, key = _TABLES[subject_type]
        if to_stage in STAGES:
            column = f"first_{to_stage}"
            sql = f"UPDATE {table} SET stage = :to, {column} = coalesce({column}, :at)"
        else:
            sql = f"UPDATE {table} SET stage = :to, round = round + 1, round_since = :at"
        tenant = self.tenant_for(subject_type, subject_id)
        self.conn.execute(f"{sql} WHERE tenant_key = :tenant AND {key} = :id",
                          {"to": to_stage, "at": at, "id": subject_id, "tenant": tenant})
        self.settle_handoffs(subject_type, subject_id, to_stage)
        self.add_stage_change(subject_type, subject_id, from_stage, to_stage, at, source,
                              reason, criteria)

    def settle_handoffs(self, subject_type: str, subject_id: str, stage: str) -> None:
        """Close the subject's open hand-offs when ``stage`` settles them (sales accepted or
        rejected its qualifications)."""
        if stage in SETTLING_STAGES:
            self.conn.execute("DELETE FROM handoffs WHERE tenant_key = ? AND subject_type = ? "
                              "AND subject_id = ?",
                              (self.tenant_for(subject_type, subject_id), subject_type,
                               subject_id))

    def history(self, subject_type: str, subject_id: str) -> list[dict[str, Any]]:
        """The subject's stage changes, oldest first."""
        cursor = self.conn.execute(
            "SELECT * FROM stage_changes WHERE tenant_key = ? AND subject_type = ? "
            "AND subject_id = ? ORDER BY at, id",
            (self.tenant_for(subject_type, subject_id), subject_type, subject_id),
        )
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def set_traits(self, subject_type: str, subject_id: str, traits_json: str) -> None:
        """Replace the stored traits (a JSON object) of an existing user or account."""
        table, key = _TABLES[subject_type]
        self.conn.execute(f"UPDATE {table} SET traits = ? WHERE tenant_key = ? AND {key} = ?",
                          (traits_json, self.tenant_for(subject_type, subject_id), subject_id))

    def record_traits(self, subject_type: str, subject_id: str,
                      changes: list[tuple[str, str | None]], at: int) -> None:
        """Keep each ``(trait, value JSON or None when removed)`` change in the subject's
        trait history, at ``at``."""
        tenant = self.tenant_for(subject_type, subject_id)
        self.conn.executemany(
            "INSERT INTO trait_changes (tenant_key, subject_type, subject_id, trait, value, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(tenant, subject_type, subject_id, name, value, at) for name, value in changes])

    def anything_new(self, subject_type: str, subject_id: str, events: Iterable[str],
                     traits: Iterable[str], since: int, until: int) -> bool:
        """Whether, in ``[since, until]``, the subject did one of ``events`` or had one of
        ``traits`` changed (what a rejected lead needs before it qualifies again)."""
        column = "user_id" if subject_type == "user" else "account_id"
        tenant = self.tenant_for(subject_type, subject_id)
        events, traits = sorted(events), sorted(traits)
        parts: list[str] = []
        args: list[Any] = []
        if events:
            marks = ",".join("?" * len(events))
            parts.append(f"EXISTS (SELECT 1 FROM events WHERE tenant_key = ? AND {column} = ? "
                         f"AND event IN ({marks}) AND ts >= ? AND ts <= ?)")
            parts.append(f"EXISTS (SELECT 1 FROM event_rollups WHERE tenant_key = ? AND "
                         f"{column} = ? AND event IN ({marks}) AND last_ts >= ? "
                         f"AND first_ts <= ?)")
            args += [tenant, subject_id, *events, since, until] * 2
        if traits:
            marks = ",".join("?" * len(traits))
            parts.append(f"EXISTS (SELECT 1 FROM trait_changes WHERE tenant_key = ? AND "
                         f"subject_type = ? AND subject_id = ? AND trait IN ({marks}) "
                         f"AND at >= ? AND at <= ?)")
            args += [tenant, subject_type, subject_id, *traits, since, until]
        if not parts:
            return False
        return self.conn.execute(f"SELECT 1 WHERE {' OR '.join(parts)}",
                                 args).fetchone() is not None

    def account_of(self, user_id: str) -> str | None:
        """The account the user belongs to now, if any."""
        row = self.conn.execute(
            "SELECT account_id FROM user_directory WHERE tenant_key = ?", (user_id,)
        ).fetchone()
        return row[0] if row else None

    def subjects(self) -> Iterator[tuple[str, str]]:
        """Every known ``(subject_type, subject_id)``: users, then accounts."""
        yield from self.conn.execute(
            "SELECT 'user', user_id FROM users UNION ALL SELECT 'account', account_id "
            "FROM accounts"
        ).fetchall()

    def latest_user(self, account_id: str, until: int) -> str | None:
        """The account's user with the latest event up to ``until`` (or any member)."""
        row = self.conn.execute(
            "SELECT user_id FROM events WHERE tenant_key = ?1 AND account_id = ?1 AND ts <= ?2 "
            "ORDER BY ts DESC LIMIT 1",
            (account_id, until),
        ).fetchone() or self.conn.execute(
            "SELECT user_id FROM users WHERE tenant_key = ?1 AND account_id = ?1 LIMIT 1",
            (account_id,)
        ).fetchone()
        return row[0] if row else None

    def forget_user(self, user_id: str) -> int:
        """Erase every row about a user (see ``Client.forget``), staged imports and import
        bookkeeping included, and remember the keyed hashes of its message ids so that no
        import brings them back; return how many message ids were remembered."""
        self.conn.execute("PRAGMA secure_delete = ON")  # whatever changed it since
        tenant = self.enter("user", user_id)
        # every tenant holding rows of the user: its own, and each account it was in (the
        # accounts it left keep a copy of its events there; see move_user)
        tenants = [tenant, *sorted({row[0] for row in self.conn.execute(
            "SELECT DISTINCT account_id FROM events WHERE tenant_key = ?1 AND user_id = ?2 "
            "AND account_id IS NOT NULL UNION SELECT DISTINCT account_id FROM event_rollups "
            "WHERE tenant_key = ?1 AND user_id = ?2 AND account_id IS NOT NULL",
            (tenant, user_id))} - {tenant})]
        args = {"user": user_id, "tenant": tenant}
        ids = [row[0] for row in self.conn.execute(
            "SELECT message_id FROM events WHERE tenant_key = :tenant AND user_id = :user "
            "AND message_id IS NOT NULL "
            "UNION SELECT message_id FROM import_staging WHERE tenant_key = :user "
            "AND user_id = :user "
            "UNION SELECT message_id FROM import_done WHERE tenant_key = :user "
            "AND user_id = :user", args)]
        # each id under the user and under every id linked to it (a message in a file
        # names the id it was sent with; the links are erased below)
        names = [user_id, *(row[0] for row in self.conn.execute(
            "SELECT tenant_key FROM aliases WHERE user_id = ?", (user_id,)))]
        self.conn.executemany("INSERT OR IGNORE INTO forgotten (hash) VALUES (?)",
                              [(self.forgotten_hash(m, name),) for m in ids for name in names])
        for sql in (
            "DELETE FROM import_staging WHERE tenant_key = :user AND user_id = :user",
            "DELETE FROM import_done WHERE tenant_key = :user AND user_id = :user",
            "DELETE FROM qualifications WHERE tenant_key = :tenant AND subject_type = 'user' "
            "AND subject_id = :user",
            "DELETE FROM stage_changes WHERE tenant_key = :tenant AND subject_type = 'user' "
            "AND subject_id = :user",
            "DELETE FROM trait_changes WHERE tenant_key = :tenant AND subject_type = 'user' "
            "AND subject_id = :user",
            "DELETE FROM handoffs WHERE tenant_key = :tenant AND subject_type = 'user' "
            "AND subject_id = :user",
            # the ids linked to the user (each its own key) and a link of the user's own id
            "DELETE FROM aliases WHERE user_id = :user OR tenant_key = :user",
            "DELETE FROM users WHERE tenant_key = :tenant AND user_id = :user",
            "DELETE FROM user_directory WHERE tenant_key = :user",
        ):
            self.conn.execute(sql, args)
        for where in [*tenants, user_id, ""]:  # outbox rows: where they were written
            for sql in (
                "DELETE FROM events WHERE tenant_key = :tenant AND user_id = :user",
                "DELETE FROM event_rollups WHERE tenant_key = :tenant AND user_id = :user",
                "DELETE FROM call_contexts WHERE tenant_key = :tenant AND user_id = :user",
                # an account's qualification the user completed keeps no trace of who
                "UPDATE qualifications SET user_id = '(forgotten)' WHERE tenant_key = :tenant "
                "AND user_id = :user",
                "DELETE FROM outbox WHERE tenant_key = :tenant AND user_id = :user",
            ):
                self.conn.execute(sql, {"user": user_id, "tenant": where})
        return len(ids)

    # -- qualifications -------------------------------------------------------------------

    def insert_qualification(self, row: dict[str, Any]) -> bool:
        """Record a qualification; False when the subject already had one for that rule."""
        cursor = self.conn.execute(
            _INSERT_QUALIFICATION_ONCE,
            {"firing": 0, **row,
             "tenant_key": self.tenant_for(row["subject_type"], row["subject_id"])},
        )
        return cursor.rowcount == 1

    def open_handoff(self, qualification_id: str, subject_type: str, subject_id: str,
                     rule: str, qualified_at: int) -> None:
        """A live qualification now waits for sales (see :meth:`overdue`)."""
        self.conn.execute(
            "INSERT INTO handoffs (tenant_key, qualification_id, subject_type, subject_id, "
            "rule, qualified_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (self.tenant_for(subject_type, subject_id), qualification_id, subject_type,
             subject_id, rule, qualified_at))

    def overdue(self, qualified_before: int, *, unnotified: bool = False,
                limit: int | None = None) -> list[tuple[Any, ...]]:
        """Open qualifications from before ``qualified_before``, oldest first:
        ``(qualification id, subject type, subject id, subject's stage, rule, qualified
        at, tenant key)`` (a read across tenants, as reports are); ``unnotified``: only
        those ``on_overdue`` was not told of yet. One indexed range scan, each subject's
        stage by its primary key."""
        return self.conn.execute(
            "SELECT h.qualification_id, h.subject_type, h.subject_id, "
            "coalesce(u.stage, a.stage, 'lead'), h.rule, h.qualified_at, h.tenant_key "
            "FROM handoffs h LEFT JOIN users u ON h.subject_type = 'user' "
            "AND u.tenant_key = h.tenant_key AND u.user_id = h.subject_id "
            "LEFT JOIN accounts a ON h.subject_type = 'account' "
            "AND a.tenant_key = h.tenant_key AND a.account_id = h.subject_id "
            "WHERE h.qualified_at <= ?"
            + (" AND h.notified_at IS NULL" if unnotified else "")
            + " ORDER BY h.qualified_at, h.qualification_id LIMIT ?",
            (qualified_before, -1 if limit is None else limit)).fetchall()

    def mark_notified(self, handoffs: list[tuple[str, str]], at: int) -> None:
        """``on_overdue`` rows were written for these open qualifications: ``(tenant key,
        qualification id)``."""
        self.conn.executemany("UPDATE handoffs SET notified_at = ? WHERE tenant_key = ? "
                              "AND qualification_id = ?",
                              [(at, tenant, qid) for tenant, qid in handoffs])

    def settlements(self, subject_type: str, since: int | None, until: int | None
                    ) -> list[tuple[str, int, str, int]]:
        """Each live qualification (qualified in ``[since, until]``) with each later move
        of its subject to a settling stage other than the rule's own: ``(qualification
        id, qualified at, to stage, at)``, in time order."""
        return self.conn.execute(
            "SELECT q.id, q.qualified_at, sc.to_stage, sc.at FROM qualifications q "
            "JOIN stage_changes sc ON sc.tenant_key = q.tenant_key "
            "AND sc.subject_type = q.subject_type "
            "AND sc.subject_id = q.subject_id AND sc.at >= q.qualified_at "
            "AND sc.source != 'rule:' || q.rule AND sc.to_stage IN ('sql', 'opportunity', "
            "'customer', 'unqualified', 'disqualified') "
            "WHERE q.shadow = 0 AND q.subject_type = ? AND q.qualified_at >= ? "
            "AND q.qualified_at <= ? ORDER BY q.id, sc.at, sc.id",
            (subject_type, -(2**62) if since is None else since,
             2**62 if until is None else until)).fetchall()

    def firings(self, subject_type: str, subject_id: str, round_: int
                ) -> dict[tuple[str, bool], tuple[int, int]]:
        """Per ``(rule, shadow)`` the subject met this round: ``(how many firings, when
        the last one was)``."""
        rows = self.conn.execute(
            "SELECT rule, shadow, count(*), max(qualified_at) FROM qualifications "
            "WHERE tenant_key = ? AND subject_type = ? AND subject_id = ? AND round = ? "
            "GROUP BY rule, shadow",
            (self.tenant_for(subject_type, subject_id), subject_type, subject_id,
             round_)).fetchall()
        return {(rule, bool(shadow)): (count, last) for rule, shadow, count, last in rows}

    def qualifications_by_id(self, ids: set[str]) -> list[dict[str, Any]]:
        """The stored qualifications with these ids (those still there)."""
        marks = ",".join("?" * len(ids))
        cursor = self.conn.execute(f"SELECT * FROM qualifications WHERE id IN ({marks})",
                                   list(ids))
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def qualifications(
        self,
        *,
        since: int | None = None,
        rule: str | None = None,
        subject: tuple[str, str] | None = None,
        shadow: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Stored qualifications in ``qualified_at`` order, optionally filtered (``shadow``:
        only shadow ones, only live ones, or both with None)."""
        sql = "SELECT * FROM qualifications WHERE 1"
        args: list[Any] = []
        if shadow is not None:
            sql += " AND shadow = ?"
            args.append(int(shadow))
        if since is not None:
            sql += " AND qualified_at >= ?"
            args.append(since)
        if rule is not None:
            sql += " AND rule = ?"
            args.append(rule)
        if subject is not None:
            sql += " AND tenant_key = ? AND subject_type = ? AND subject_id = ?"
            args.extend((self.tenant_for(*subject), *subject))
        cursor = self.conn.execute(sql + " ORDER BY qualified_at, rowid", args)
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    # -- outbox ---------------------------------------------------------------------------

    def enqueue(self, rows: list[tuple[str, str, str | None, str, int]], *,
                announce: bool = False, payload_format: int = PAYLOAD_FORMAT) -> None:
        """Add ``(destination, kind, user_id, payload JSON, now)`` rows, due at once, in
        the tenant of their user (the call's), their payloads of ``payload_format``.
        ``announce``: wake other processes' idle delivery workers after the commit (on
        PostgreSQL; a file has no such signal: its workers poll)."""
        self.conn.executemany(
            "INSERT INTO outbox (tenant_key, destination, kind, user_id, payload, "
            f"next_attempt_at, created_at, format) VALUES (?, ?, ?, ?, ?, ?6, ?6, "
            f"{int(payload_format)})",
            [(self.tenant_for("user", row[2]) if row[2] else "", *row) for row in rows],
        )

    def reads_event_refs(self) -> bool:
        """Whether every pqlsdk that can open this database reads outbox rows of
        :data:`EVENT_REF_FORMAT`: on a file, always (the release before them refuses a file
        of this schema version: see :func:`migrate`)."""
        return True

    def events_by_message(self, refs: list[tuple[str, str]]
                          ) -> dict[tuple[str, str], tuple[Any, ...]]:
        """``(user id, message id) -> (account_id, event, ts, properties)`` of the events
        still stored among ``refs`` (mirrored tracks' rows, at delivery), each read in its
        user's tenant now (where all of a user's events are, whatever accounts it moved
        between): one statement for the users' tenants and one per 100 refs, whatever the
        users, each ref found through the ``events_message_id`` index."""
        users = sorted({user_id for user_id, _ in refs})
        tenants: dict[str, str] = {}
        for start in range(0, len(users), 500):
            some = users[start:start + 500]
            tenants.update(self.conn.execute(
                f"SELECT tenant_key, coalesce(account_id, tenant_key) FROM user_directory "
                f"WHERE tenant_key IN ({','.join('?' * len(some))})", some).fetchall())
        found: dict[tuple[str, str], tuple[Any, ...]] = {}
        for start in range(0, len(refs), 100):
            part = refs[start:start + 100]
            terms = " OR ".join(["(tenant_key = ? AND message_id = ? AND user_id = ?)"]
                                * len(part))
            args = [value for user_id, message_id in part
                    for value in (tenants.get(user_id, user_id), message_id, user_id)]
            for row in self.conn.execute(
                    f"SELECT user_id, message_id, account_id, event, ts, properties "
                    f"FROM events WHERE {terms}", args):
                found[(row[0], row[1])] = tuple(row[2:])
        return found

    def claim(self, destination: str, now: int, lease_until: int, limit: int, token: str
              ) -> list[dict[str, Any]]:
        """Lease the oldest pending rows of ``destination`` under ``token``, in order,
        stopping before the first one that is not yet due or is leased by someone else (so
        delivery keeps its order). One ``UPDATE ... RETURNING``; rows come back by id."""
        cursor = self.conn.execute(
            "UPDATE outbox SET lease_until = :lease, attempts = attempts + 1, claim = :token "
            "WHERE id IN (SELECT id FROM (SELECT id, next_attempt_at, lease_until FROM outbox "
            "WHERE destination = :dest AND status = 'pending' ORDER BY id LIMIT :limit) "
            "WHERE id < (SELECT coalesce(min(id), :never) FROM (SELECT id, next_attempt_at, "
            "lease_until FROM outbox WHERE destination = :dest AND status = 'pending' "
            "ORDER BY id LIMIT :limit) WHERE next_attempt_at > :now OR lease_until > :now)) "
            "RETURNING *",
            {"lease": lease_until, "token": token, "dest": destination, "now": now,
             "never": _NEVER, "limit": limit},
        )
        rows = [_row_dict(cursor, row) for row in cursor.fetchall()]
        return sorted(rows, key=lambda row: row["id"])

    def renew(self, tokens: list[str], lease_until: int) -> None:
        """Extend the lease of rows still claimed under ``tokens`` (deliveries in flight)."""
        self.conn.executemany(
            "UPDATE outbox SET lease_until = ? WHERE claim = ? AND status = 'pending'",
            [(lease_until, token) for token in tokens])

    def acknowledge(self, keys: list[OutboxKey], token: str) -> int:
        """The destination took these rows: they are done (and removed), those still
        claimed under ``token``; return how many were. Each statement binds the row's
        tenant."""
        before = self.conn.total_changes
        self.conn.executemany(
            "DELETE FROM outbox WHERE tenant_key = ? AND id = ? AND claim = ?",
            [(key.tenant_key, key.id, token) for key in keys])
        return self.conn.total_changes - before

    def reschedule(self, keys: list[OutboxKey], token: str, next_attempt_at: int, error: str,
                   failed: bool) -> None:
        """A delivery failed: try again at ``next_attempt_at``, or keep the rows as failed
        (only rows still claimed under ``token``)."""
        self.conn.executemany(
            "UPDATE outbox SET lease_until = NULL, claim = NULL, next_attempt_at = ?, "
            "last_error = ?, status = ? WHERE tenant_key = ? AND id = ? AND claim = ?",
            [(next_attempt_at, error, "failed" if failed else "pending", key.tenant_key,
              key.id, token) for key in keys],
        )

    def release(self, keys: list[OutboxKey], token: str) -> None:
        """Give back claimed rows that were not attempted: due as before, the attempt
        uncounted (only rows still claimed under ``token``)."""
        self.conn.executemany(
            "UPDATE outbox SET lease_until = NULL, claim = NULL, attempts = attempts - 1 "
            "WHERE tenant_key = ? AND id = ? AND claim = ?",
            [(key.tenant_key, key.id, token) for key in keys])

    def outbox_rows(self, status: str | None = None, destinations: list[str] | None = None,
                    exclude: list[str] | None = None) -> list[dict[str, Any]]:
        """Rows still in the outbox (pending or failed), oldest first; optionally only
        those of ``destinations``, or only those of other destinations than ``exclude``."""
        sql, args = "SELECT * FROM outbox WHERE 1", []
        if status is not None:
            sql, args = sql + " AND status = ?", [status]
        if destinations is not None:
            sql += f" AND destination IN ({','.join('?' * len(destinations))})"
            args += destinations
        if exclude is not None:
            sql += f" AND destination NOT IN ({','.join('?' * len(exclude))})"
            args += exclude
        cursor = self.conn.execute(sql + " ORDER BY id", args)
        return [_row_dict(cursor, row) for row in cursor.fetchall()]

    def retry_failed(self, now: int) -> int:
        """Make every failed row pending again, due now, with a fresh count of attempts."""
        return self.conn.execute(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?, "
            "lease_until = NULL, claim = NULL WHERE status = 'failed'",
            (now,),
        ).rowcount

    def retarget(self, old: str, new: str, now: int) -> int:
        """Hand every row of destination ``old`` to ``new`` (failed ones become pending,
        due now); return how many."""
        return self.conn.execute(
            "UPDATE outbox SET destination = ?, status = 'pending', attempts = 0, "
            "next_attempt_at = min(next_attempt_at, ?), lease_until = NULL, claim = NULL "
            "WHERE destination = ?",
            (new, now, old),
        ).rowcount

    def due(self, destination: str, now: int) -> bool:
        """Whether ``destination`` has a pending row due now and not leased (a read)."""
        return self.conn.execute(
            "SELECT 1 FROM outbox WHERE destination = ? AND status = 'pending' "
            "AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?) LIMIT 1",
            (destination, now, now),
        ).fetchone() is not None

    def waiting(self, destinations: list[str], now: int) -> tuple[int, int, int | None, int]:
        """``(pending rows, of which due now, when the next one is due, failed rows)`` for
        ``destinations``."""
        if not destinations:
            return 0, 0, None, 0
        marks = ",".join("?" * len(destinations))
        pending = "status = 'pending'"
        row = self.conn.execute(
            f"SELECT coalesce(sum({pending}), 0), "
            f"coalesce(sum({pending} AND next_attempt_at <= ?), 0), "
            f"min(CASE WHEN {pending} THEN next_attempt_at END), "
            f"coalesce(sum(status = 'failed'), 0) "
            f"FROM outbox WHERE destination IN ({marks})",
            (now, *destinations),
        ).fetchone()
        return row[0], row[1], row[2], row[3]

    def outbox_health(self) -> list[tuple[Any, ...]]:
        """Per destination: ``(destination, pending rows, oldest pending created_at,
        failed rows, the latest error, when it was recorded)``. The latest error is that
        of the row whose retry was scheduled last. One pass over the outbox, which stays
        short (delivered rows are removed)."""
        return self.conn.execute(
            "SELECT destination, coalesce(sum(status = 'pending'), 0), "
            "min(CASE WHEN status = 'pending' THEN created_at END), "
            "coalesce(sum(status = 'failed'), 0), "
            "(SELECT o.last_error FROM outbox o WHERE o.destination = outbox.destination "
            " AND o.last_error IS NOT NULL ORDER BY o.next_attempt_at DESC LIMIT 1), "
            "max(CASE WHEN last_error IS NOT NULL THEN next_attempt_at END) "
            "FROM outbox GROUP BY destination ORDER BY destination"
        ).fetchall()

    def schema_version(self) -> int:
        """The database's schema version (``PRAGMA user_version``)."""
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def event_rows(self, subject_type: str, subject_id: str, event: str, until: int,
                   since: int | None, limit: int | None) -> Iterator[tuple[int, str]]:
        """``(ts, properties)`` of the subject's ``event`` events in ``[since, until]``, newest
        first, at most ``limit``."""
        column = "user_id" if subject_type == "user" else "account_id"
        tenant = self.tenant_for(subject_type, subject_id)
        sql = (f"SELECT ts, properties FROM events WHERE tenant_key = ? AND {column} = ? "
               f"AND event = ? AND ts <= ?")
        args: list[Any] = [tenant, subject_id, event, until]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        args.append(-1 if limit is None else limit)
        live = self.conn.execute(sql + " ORDER BY ts DESC LIMIT ?", args).fetchall()
        rolled, rolled_args = _rollups_where(tenant, column, subject_id, event, until, since)
        pruned = self.conn.execute(f"SELECT last_ts, properties, n {rolled} "
                                   "ORDER BY last_ts DESC", rolled_args).fetchall()
        if not pruned:
            return iter(live)
        # a pruned event stands at its rollup's last time (see README: retention)
        rows = itertools.chain(live, ((ts, text) for ts, text, n in pruned
                                      for _ in range(n)))
        return itertools.islice(rows, limit) if limit is not None else rows

    def tenant_event_rows(self, tenant: str, subject_type: str, subject_id: str, event: str,
                          until: int, since: int, limit: int) -> list[tuple[int, str]]:
        """:meth:`event_rows` in a tenant the caller knows, one statement, no rollups: for a
        bulk import's segment, which knows each subject's tenant and reads events this way
        only while the store holds no rollup (:meth:`has_rollups`)."""
        column = "user_id" if subject_type == "user" else "account_id"
        return self.conn.execute(
            f"SELECT ts, properties FROM events WHERE tenant_key = ? AND {column} = ? AND "
            f"event = ? AND ts <= ? AND ts >= ? ORDER BY ts DESC LIMIT ?",
            (tenant, subject_id, event, until, since, limit)).fetchall()

    def weighted_counts(self, subject_type: str, subject_id: str, until: int,
                        lines: list[tuple[str, int | None, int | None, int | None]]
                        ) -> list[float]:
        """For each ``(event, since, half_life, limit)``: how many of the subject's events of
        that name fall in ``[since, until]`` (the newest ``limit`` at most), each weighted
        ``0.5 ** (age / half_life)`` when a half-life is given. One statement for all."""
        column = "user_id" if subject_type == "user" else "account_id"
        tenant = self.tenant_for(subject_type, subject_id)
        parts, args = [], []
        for event, since, half_life, limit in lines:
            weight = "1" if half_life is None else "power(0.5, (? - ts) * 1.0 / ?)"
            inner = (f"SELECT ts FROM events WHERE tenant_key = ? AND {column} = ? "
                     f"AND event = ? AND ts <= ?")
            inner_args: list[Any] = [tenant, subject_id, event, until]
            if since is not None:
                inner += " AND ts >= ?"
                inner_args.append(since)
            rolled, rolled_args = _rollups_where(tenant, column, subject_id, event, until,
                                                 since)
            rolled_weight = ("n" if half_life is None
                             else "n * power(0.5, (? - last_ts) * 1.0 / ?)")
            parts.append(f"((SELECT total({weight}) FROM ({inner} ORDER BY ts DESC LIMIT ?)) "
                         f"+ (SELECT total({rolled_weight}) {rolled}))")
            args += ([] if half_life is None else [until, half_life]) + inner_args
            args.append(-1 if limit is None else limit)
            args += ([] if half_life is None else [until, half_life]) + rolled_args
        return list(self.conn.execute("SELECT " + ", ".join(parts), args).fetchone())

    # -- retention ------------------------------------------------------------------------

    def take_old_events(self, after_id: int, chunk: int, cutoff: int
                        ) -> tuple[int | None, list[PrunedEvent]]:
        """Remove the events older than ``cutoff`` among the next ``chunk`` by id after
        ``after_id``: ``(the last id scanned, or None at the end; the events this
        transaction removed)``. One ``DELETE ... RETURNING``: a pruner running beside this
        one (another process of the fleet) waits on these rows and then finds them gone, so
        each event is folded into the rollups by exactly one pruner. A sweep by id reads a
        bounded slice per call, with no index on time (which every track() would pay for).
        """
        last = self.conn.execute(
            "SELECT max(id) FROM (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)",
            (after_id, chunk)).fetchone()[0]
        if last is None:
            return None, []
        return last, [PrunedEvent(*row) for row in self.conn.execute(
            "DELETE FROM events WHERE id > ? AND id <= ? AND ts < ? RETURNING tenant_key, "
            "user_id, account_id, event, ts, properties", (after_id, last, cutoff))]

    def add_to_rollups(self, added: list[RollupAdd]) -> None:
        """Fold counted events into their rollups: the rollups of the users concerned are
        read once (400 users a statement), then each key's row grows in place (``n = n +
        ...``, so two pruners adding to one rollup both count) and a key without one gets
        a row (two pruners creating the same key at once leave it two rows, which every
        read adds up)."""
        users = sorted({(a.key.tenant_key, a.key.user_id) for a in added})
        rows: dict[RollupKey, int] = {}
        for start in range(0, len(users), 400):
            part = users[start:start + 400]
            pairs = ", ".join(["(?, ?)"] * len(part))
            for row in self.conn.execute(
                    f"WITH w(t, u) AS (VALUES {pairs}) SELECT r.id, r.tenant_key, r.user_id, "
                    f"r.account_id, r.event, r.properties FROM w JOIN event_rollups r ON "
                    f"r.tenant_key = w.t AND r.user_id = w.u",
                    [value for pair in part for value in pair]):
                rows.setdefault(RollupKey(*row[1:]), row[0])
        self.conn.executemany(
            "UPDATE event_rollups SET n = n + ?, first_ts = min(first_ts, ?), "
            "last_ts = max(last_ts, ?) WHERE tenant_key = ? AND id = ?",
            [(a.n, a.first_ts, a.last_ts, a.key.tenant_key, rows[a.key])
             for a in added if a.key in rows])
        self.conn.executemany(
            "INSERT INTO event_rollups (tenant_key, user_id, account_id, event, properties, "
            "n, first_ts, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*a.key, a.n, a.first_ts, a.last_ts) for a in added if a.key not in rows])

    # -- import ---------------------------------------------------------------------------

    def insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        """Store ``(tenant key, message id, user id, account id, event, ts, properties
        JSON)`` rows in one ``executemany`` (an import's batch; the ids were checked new: a
        duplicate raises)."""
        self.conn.executemany(INSERT_EVENT.replace("INSERT OR IGNORE", "INSERT", 1), rows)

    def forgotten(self, messages: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which ``(user id, message id)`` pairs were a user's since forgotten (kept as
        keyed hashes): an import brings none of them back. A message id a release before
        issue 21 forgot (hashed alone) counts for every user."""
        if not messages or not self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM forgotten)").fetchone()[0]:
            return set()
        hashes: dict[bytes, list[tuple[str, str]]] = {}
        for user_id, message_id in messages:
            for key in (self.forgotten_hash(message_id, user_id),
                        self.forgotten_hash(message_id)):
                hashes.setdefault(key, []).append((user_id, message_id))
        keys = list(hashes)
        found: set[tuple[str, str]] = set()
        for start in range(0, len(keys), 500):
            hashed = keys[start:start + 500]
            marks = ",".join("?" * len(hashed))
            for (h,) in self.conn.execute(
                    f"SELECT hash FROM forgotten WHERE hash IN ({marks})", hashed):
                found.update(hashes[bytes(h)])
        return found

    def stored_events(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which ``(tenant key, message id)`` pairs an event holds already: an imported
        track meets its id where its event goes (its user's tenant after the call's move),
        as a live call's insert does. 400 pairs a statement."""
        found: set[tuple[str, str]] = set()
        for start in range(0, len(keys), 400):
            part = keys[start:start + 400]
            pairs = ", ".join(["(?, ?)"] * len(part))
            found.update((t, m) for t, m in self.conn.execute(
                f"WITH w(t, m) AS (VALUES {pairs}) SELECT t, m FROM w WHERE EXISTS (SELECT 1 "
                f"FROM events e WHERE e.tenant_key = w.t AND e.message_id = w.m)",
                [value for pair in part for value in pair]))
        return found

    def import_checkpoint(self, source: str) -> tuple[int, int, int] | None:
        """``(ts, line number, messages applied)`` of the last message an import of
        ``source`` (a digest of the file) applied, in replay order, or None."""
        row = self.conn.execute("SELECT ts, line_no, applied FROM import_checkpoints "
                                "WHERE source = ?", (source,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def set_import_checkpoint(self, source: str, ts: int, line: int, applied: int,
                              now: int) -> None:
        """Record, in the batch's own transaction, how far an import of ``source`` got."""
        self.conn.execute(
            "INSERT INTO import_checkpoints (source, ts, line_no, applied, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET ts = excluded.ts, "
            "line_no = excluded.line_no, applied = excluded.applied, "
            "updated_at = excluded.updated_at", (source, ts, line, applied, now))

    # -- reports --------------------------------------------------------------------------

    def funnel_rows(self, subject_type: str, since: int | None, until: int | None,
                    by: str | None, *, to: str | None = None,
                    exclude_rejected: bool = False) -> FunnelRows:
        """For all subjects and per group, per ordered stage: :class:`StageCounts`, in one
        statement (medians included, computed in SQL: the interpreter is free for other
        threads meanwhile).

        A subject entered a stage at its first move into it (in ``[since, until]``), and
        moved on if it later entered any later stage; with ``to``, it reached ``to`` if at
        or after entering the stage it entered ``to`` or a stage after it (counted for the
        stages before ``to``). It reads each subject's first entry per stage (kept on its
        row by :meth:`change_stage`). With ``by``, a subject's entry into a stage counts in
        the group of the value the ``by`` trait had at that moment (its trait history;
        groups are JSON texts, None when the trait was not set). ``exclude_rejected``
        leaves out subjects now ``unqualified`` or ``disqualified``.
        """
        table, key = _TABLES[subject_type]
        count = len(STAGES)
        target = count if to is None else STAGES.index(to)
        firsts = ", ".join(
            f"first_{stage} AS s{k}" if until is None
            else f"CASE WHEN first_{stage} <= :until THEN first_{stage} END AS s{k}"
            for k, stage in enumerate(STAGES))
        where = (" WHERE stage NOT IN ('unqualified', 'disqualified')"
                 if exclude_rejected else "")

        def first_at_or_after(k: int, stages: range) -> str:
            later = ", ".join(f"coalesce(CASE WHEN s{j} >= s{k} THEN s{j} END, {_NEVER})"
                              for j in stages)
            if len(stages) == 1:
                return f"nullif({later}, {_NEVER})"
            return f"nullif(min({later}), {_NEVER})"

        extra = []
        for k in range(count):
            extra.append(f"{first_at_or_after(k, range(k + 1, count))} AS n{k}"
                         if k < count - 1 else f"CAST(NULL AS BIGINT) AS n{k}")
            extra.append(f"{first_at_or_after(k, range(max(target, k + 1), count))} AS r{k}"
                         if to is not None and k < target else f"CAST(NULL AS BIGINT) AS r{k}")
        entered = "s{k} IS NOT NULL" + ("" if since is None else " AND s{k} >= :since")
        if by is None:
            group = "NULL"
        else:  # the value the trait had when the subject entered the stage
            group = ("(SELECT tc.value FROM trait_changes tc WHERE tc.tenant_key = q.tkey "
                     "AND tc.subject_type = :kind "
                     "AND tc.subject_id = q.sid AND tc.trait = :by AND tc.at <= q.s{k} "
                     "ORDER BY tc.at DESC, tc.id DESC LIMIT 1)")
        long = " UNION ALL ".join(
            f"SELECT {group.format(k=k)} AS grp, {k} AS k, s{k} AS s, n{k} AS n, r{k} AS r "
            f"FROM q WHERE {entered.format(k=k)}" for k in range(count))
        rows = self.conn.execute(
            f"WITH p AS (SELECT tenant_key AS tkey, {key} AS sid, {firsts} "
            f"FROM {table}{where}), "
            f"q AS MATERIALIZED (SELECT p.*, {', '.join(extra)} FROM p), "
            f"l AS MATERIALIZED ({long}), "
            "w AS (SELECT grp, k, n - s AS d, "
            "row_number() OVER (PARTITION BY grp, k ORDER BY n - s) AS rn, "
            "count(*) OVER (PARTITION BY grp, k) AS c, "
            "row_number() OVER (PARTITION BY k ORDER BY n - s) AS arn, "
            "count(*) OVER (PARTITION BY k) AS ac FROM l WHERE n IS NOT NULL), "
            "m AS (SELECT grp, k, avg(d) AS median FROM w "
            "WHERE rn IN ((c + 1) / 2, (c + 2) / 2) GROUP BY grp, k), "
            "a AS (SELECT k, avg(d) AS median FROM w "
            "WHERE arn IN ((ac + 1) / 2, (ac + 2) / 2) GROUP BY k) "
            "SELECT l.grp, l.k, count(*), count(l.n), count(l.r), "
            "(SELECT m.median FROM m WHERE m.grp IS l.grp AND m.k = l.k), "
            "(SELECT a.median FROM a WHERE a.k = l.k) FROM l GROUP BY l.grp, l.k",
            {"until": until, "since": since, "by": by, "kind": subject_type}).fetchall()
        empty = StageCounts(0, 0, None, 0)
        grouped: dict[Any, list[StageCounts]] = {}
        overall = [empty] * count
        for grp, k, entered_n, moved, reached, median, all_median in rows:
            grouped.setdefault(grp, [empty] * count)[k] = StageCounts(
                entered_n, moved, None if median is None else float(median), reached)
            before = overall[k]
            overall[k] = StageCounts(before.entered + entered_n, before.moved_on + moved,
                                     None if all_median is None else float(all_median),
                                     before.reached + reached)
        return FunnelRows(overall, list(grouped.items()))

    def rule_outcomes(self, since: int | None) -> list[tuple[Any, ...]]:
        """Each qualification (since ``since``) with every later move of its subject to sql,
        opportunity, customer, unqualified or disqualified that the rule itself did not
        cause: ``(rule, subject_type, subject_id, to_stage, reason, shadow, rule_version,
        qualified_at, qualification id, criteria JSON)``."""
        return self.conn.execute(
            "SELECT q.rule, q.subject_type, q.subject_id, sc.to_stage, sc.reason, q.shadow, "
            "q.rule_version, q.qualified_at, q.id, sc.criteria "
            "FROM qualifications q LEFT JOIN stage_changes sc "
            "ON sc.subject_type = q.subject_type AND sc.subject_id = q.subject_id "
            "AND sc.at >= q.qualified_at AND sc.source != 'rule:' || q.rule "
            "AND sc.to_stage IN ('sql', 'opportunity', 'customer', 'unqualified', "
            "'disqualified') "
            "WHERE q.qualified_at >= ? ORDER BY q.rule",
            (since if since is not None else -(2**62),),
        ).fetchall()

    def users_in_stage_since(self, stage: str, entered_before: int) -> list[str]:
        """Users now at ``stage`` whose last move into it was at or before
        ``entered_before`` (what ``purge`` removes)."""
        return [row[0] for row in self.conn.execute(
            "SELECT u.user_id FROM users u WHERE u.stage = ? AND (SELECT max(sc.at) FROM "
            "stage_changes sc WHERE sc.tenant_key = u.tenant_key AND sc.subject_type = 'user' "
            "AND sc.subject_id = u.user_id AND sc.to_stage = ?) <= ? ORDER BY u.user_id",
            (stage, stage, entered_before))]

    def all_subjects(self, subject_type: str) -> list[str]:
        """Every user (or account) id."""
        table, key = _TABLES[subject_type]
        return [row[0] for row in self.conn.execute(f"SELECT {key} FROM {table}")]

    # -- backtests (read only) ------------------------------------------------------------

    def replay_subjects(self, subject_type: str, since: int | None, until: int) -> list[str]:
        """Every user (or account) with an event in ``[since, until]`` (one index probe
        each, in the subject's own tenant: it holds a copy of all the subject's events)."""
        table, key = _TABLES[subject_type]
        column = "user_id" if subject_type == "user" else "account_id"
        return [row[0] for row in self.conn.execute(
            f"SELECT s.{key} FROM {table} s WHERE EXISTS (SELECT 1 FROM events e "
            f"WHERE e.tenant_key = s.tenant_key AND e.{column} = s.{key} "
            f"AND e.ts <= :until AND e.ts >= :since)",
            {"since": -(2**62) if since is None else since, "until": until})]

    def replay_events(self, subject_type: str, events: list[str] | None,
                      with_properties: list[str], until: int
                      ) -> Iterator[tuple[str, str, int, str | None]]:
        """``(subject id, event, ts, properties or None)`` of the named events (None: all)
        up to ``until``, in ``(subject, ts, id)`` order (the order replay = live needs); the
        properties only of the events in ``with_properties``. Streams."""
        column = "user_id" if subject_type == "user" else "account_id"
        props = ",".join("?" * len(with_properties))
        text = f"CASE WHEN event IN ({props}) THEN properties END" if props else "NULL"
        where = "" if events is None else f"event IN ({','.join('?' * len(events))}) AND "
        cursor = self.conn.execute(
            f"SELECT {column}, event, ts, {text} FROM events WHERE {where}"
            f"ts <= ? AND {column} IS NOT NULL AND {canonical(subject_type)} "
            f"ORDER BY {column}, ts, id",
            (*with_properties, *(events or ()), until))
        while rows := cursor.fetchmany(10_000):
            yield from rows

    def property_firsts(self, subject_type: str, until: int
                        ) -> Iterator[tuple[str, str, Any, str, int]]:
        """``(event, property, value, subject id, first ts)``: when each subject first did
        each event with each text or whole-number top-level property value (up to
        ``until``), aggregated in SQL. Streams."""
        column = "user_id" if subject_type == "user" else "account_id"
        cursor = self.conn.execute(
            f"SELECT e.event, j.key, j.atom, e.{column}, min(e.ts) FROM events e, "
            f"json_each(e.properties) j WHERE e.ts <= ? AND e.{column} IS NOT NULL "
            f"AND {canonical(subject_type, 'e')} "
            f"AND j.type IN ('text', 'integer') AND e.properties != '{{}}' "
            f"GROUP BY e.event, j.key, j.atom, e.{column}", (until,))
        while rows := cursor.fetchmany(10_000):
            yield from rows

    def first_reached(self, subject_type: str, stages: list[str], until: int
                      ) -> dict[str, int]:
        """When each subject first entered any of ``stages`` (up to ``until``)."""
        marks = ",".join("?" * len(stages))
        return dict(self.conn.execute(
            f"SELECT subject_id, min(at) FROM stage_changes WHERE subject_type = ? "
            f"AND to_stage IN ({marks}) AND at <= ? GROUP BY subject_id",
            (subject_type, *stages, until)).fetchall())

    def first_event(self, subject_type: str, event: str, until: int) -> dict[str, int]:
        """When each subject first did ``event`` (up to ``until``)."""
        column = "user_id" if subject_type == "user" else "account_id"
        return dict(self.conn.execute(
            f"SELECT {column}, min(ts) FROM events WHERE event = ? AND ts <= ? "
            f"AND {column} IS NOT NULL AND {canonical(subject_type)} GROUP BY {column}",
            (event, until)).fetchall())

    def first_seen_times(self, subject_type: str) -> dict[str, int]:
        """When each user (or account) was first seen, by id."""
        table, key = _TABLES[subject_type]
        return dict(self.conn.execute(f"SELECT {key}, first_seen FROM {table}").fetchall())

    def all_traits(self, subject_type: str) -> dict[str, str]:
        """Every user's (or account's) traits JSON, by id."""
        table, key = _TABLES[subject_type]
        return dict(self.conn.execute(f"SELECT {key}, traits FROM {table}").fetchall())

    # -- measuring ------------------------------------------------------------------------

    def count_events(self, subject_type: str, subject_id: str, event: str, until: int,
                     since: int | None, limit: int | None) -> int:
        """How many of the subject's ``event`` events fall in ``[since, until]``, its
        rollups' included (the live events counted up to ``limit``)."""
        tenant = self.tenant_for(subject_type, subject_id)
        limit = -1 if limit is None else limit
        if since is None:
            args: tuple[Any, ...] = (tenant, subject_id, event, until, limit,
                                     tenant, subject_id, event, until)
        else:
            args = (tenant, subject_id, event, until, since, limit,
                    tenant, subject_id, event, until, since)
        return int(self.conn.execute(_COUNT_EVENTS[subject_type, since is not None], args
                                     ).fetchone()[0])

    def event_properties(self, subject_type: str, subject_id: str, event: str, until: int,
                         since: int | None) -> Iterator[PropertyRow]:
        """The properties of the subject's ``event`` events in ``[since, until]``: each
        event's, then each rollup's (with how many events it holds)."""
        tenant = self.tenant_for(subject_type, subject_id)
        args: tuple[Any, ...] = ((tenant, subject_id, event, until) if since is None
                                 else (tenant, subject_id, event, until, since))
        events, rollups = _EVENT_PROPERTIES[subject_type, since is not None]
        for (text,) in self.conn.execute(events, args):
            yield PropertyRow(text, 1)
        for text, n in self.conn.execute(rollups, args):
            yield PropertyRow(text, n)


def _count_events_sql(column: str, since: bool) -> str:
    """The statement of :meth:`Transaction.count_events` (built once per shape)."""
    sql, _ = _events_where("", column, "", "", 0, 0 if since else None)
    rolled, _ = _rollups_where("", column, "", "", 0, 0 if since else None)
    return (f"SELECT (SELECT count(*) FROM (SELECT 1 {sql} LIMIT ?)) + "
            f"(SELECT coalesce(sum(n), 0) {rolled})")


def _event_properties_sql(column: str, since: bool) -> tuple[str, str]:
    """The two statements of :meth:`Transaction.event_properties` (built once per shape)."""
    sql, _ = _events_where("", column, "", "", 0, 0 if since else None)
    rolled, _ = _rollups_where("", column, "", "", 0, 0 if since else None)
    return f"SELECT properties {sql}", f"SELECT properties, n {rolled}"


def _events_where(tenant: str, column: str, subject_id: str, event: str, until: int,
                  since: int | None) -> tuple[str, list[Any]]:
    """``FROM ... WHERE ...`` of a subject's ``event`` events in ``[since, until]`` (in its
    tenant), and its arguments."""
    sql = f"FROM events WHERE tenant_key = ? AND {column} = ? AND event = ? AND ts <= ?"
    args: list[Any] = [tenant, subject_id, event, until]
    if since is not None:
        sql += " AND ts >= ?"
        args.append(since)
    return sql, args


def _rollups_where(tenant: str, column: str, subject_id: str, event: str, until: int,
                   since: int | None) -> tuple[str, list[Any]]:
    """``FROM ... WHERE ...`` of a subject's rollups of ``event`` that reach into
    ``[since, until]`` (a rollup straddling ``since`` counts whole), and its arguments."""
    sql = (f"FROM event_rollups WHERE tenant_key = ? AND {column} = ? AND event = ? "
           f"AND first_ts <= ?")
    args: list[Any] = [tenant, subject_id, event, until]
    if since is not None:
        sql += " AND last_ts >= ?"
        args.append(since)
    return sql, args


#: :meth:`Transaction.count_events`'s statement by (subject type, whether ``since`` is set).
_COUNT_EVENTS = {(subject_type, since): _count_events_sql(column, since)
                 for subject_type, column in (("user", "user_id"), ("account", "account_id"))
                 for since in (False, True)}

#: :meth:`Transaction.event_properties`'s two statements, by the same key.
_EVENT_PROPERTIES = {(subject_type, since): _event_properties_sql(column, since)
                     for subject_type, column in (("user", "user_id"),
                                                  ("account", "account_id"))
                     for since in (False, True)}
