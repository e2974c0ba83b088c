"""Privacy requests: erase a user so that no byte of it is left (``forget``), and give a
person their data (``export``).

    >>> forget(client.store, "ada")
    >>> export(client.store, "ada")["events"][0]["event"]
    'report_generated'
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .errors import UnknownSubject
from .identities import canonical
from .store import Store
from .timestamps import from_micros


def forget(store: Store, user_id: str) -> None:
    """Erase ``user_id`` in one transaction (see :meth:`pqlsdk.Client.forget`), then
    checkpoint the WAL and truncate it: with ``secure_delete`` on, the deleted rows are
    overwritten in the file, and the WAL's older copies of them are gone."""
    store.transact(lambda tx: tx.forget_user(user_id))
    store.checkpoint()


def forget_many(store: Store, user_ids: list[str], chunk: int = 200) -> None:
    """Erase each of ``user_ids`` as :func:`forget` does (``pqlsdk purge``): ``chunk`` users
    per transaction, then one checkpoint of the WAL."""
    for start in range(0, len(user_ids), chunk):
        store.transact(functools.partial(_forget_all, user_ids=user_ids[start:start + chunk]))
    store.checkpoint()


def _forget_all(tx: Any, user_ids: list[str]) -> None:
    for user_id in user_ids:
        tx.forget_user(user_id)


def _iso(value: int | None) -> str | None:
    return None if value is None else from_micros(value).isoformat()


def export(store: Store, user_id: str) -> dict[str, Any]:
    """Everything pqlsdk keeps about ``user_id``, JSON-ready: ``user_id``, ``account_id``,
    ``first_seen``, ``stage``, ``traits``, ``events`` (oldest first), ``pruned_events``
    (what retention folded: per event and kept properties, a count), ``stages`` (its
    history), ``qualifications`` (its own, and the account ones its events completed),
    ``staged`` (messages of an unfinished import), ``pending_deliveries``, and what issue
    20's lifecycle keeps: ``linked_ids`` (ids an ``alias`` or an identify's anonymous id
    linked to the user), ``trait_history``, ``contexts`` (the context and integrations its
    identify, group and alias calls carried; a track's are on its event) and
    ``handoffs`` (its qualifications' hand-offs to sales). An id linked to a user gives that
    user's data (as every read resolves it; ``user_id`` says whose). Raises
    :class:`~pqlsdk.UnknownSubject` for a user pqlsdk does not know."""
    with store.read() as tx:
        user_id = canonical(tx, user_id)
        # the user's rows are in its tenant (an account it left keeps a copy of the events
        # it recorded there: read the user's own, once)
        tenant = tx.enter("user", user_id)
        users = tx.rows("users", "tenant_key = ? AND user_id = ?", [tenant, user_id])
        staged = tx.rows("import_staging", "user_id = ?", [user_id], order_by="ts, line_no")
        if not users and not staged:
            raise UnknownSubject(f"no user {user_id!r} has been seen")
        events = [
            {"event": row["event"], "timestamp": _iso(row["ts"]),
             "properties": json.loads(row["properties"]), "account_id": row["account_id"],
             "message_id": row["message_id"], **_extras(row)}
            for row in tx.rows("events", "tenant_key = ? AND user_id = ?", [tenant, user_id],
                               order_by="ts, id")]
        linked = [{"id": row["tenant_key"], "linked_at": _iso(row["at"])}
                  for row in tx.rows("aliases", "user_id = ?", [user_id],
                                     order_by="at, tenant_key")]
        traits = [{"trait": row["trait"], "value": _json(row["value"]), "at": _iso(row["at"])}
                  for row in tx.rows("trait_changes", "tenant_key = ? AND subject_type = "
                                     "'user' AND subject_id = ?", [tenant, user_id],
                                     order_by="at, id")]
        contexts = [{"kind": row["kind"], "timestamp": _iso(row["at"]),
                     "account_id": row["account_id"], "message_id": row["message_id"],
                     **_extras(row)}
                    for row in tx.rows("call_contexts", "tenant_key = ? AND user_id = ?",
                                       [tenant, user_id], order_by="at, id")]
        handoffs = [{"qualification_id": row["qualification_id"], "rule": row["rule"],
                     "qualified_at": _iso(row["qualified_at"]),
                     "notified_at": _iso(row["notified_at"])}
                    for row in tx.rows("handoffs", "tenant_key = ? AND subject_type = 'user' "
                                       "AND subject_id = ?", [tenant, user_id],
                                       order_by="qualified_at, qualification_id")]
        stages = [
            {"from_stage": row["from_stage"], "to_stage": row["to_stage"],
             "at": _iso(row["at"]), "source": row["source"], "reason": row["reason"],
             "criteria": None if row.get("criteria") is None else json.loads(row["criteria"])}
            for row in tx.rows("stage_changes", "tenant_key = ? AND subject_type = 'user' "
                               "AND subject_id = ?", [tenant, user_id], order_by="at, id")]
        qualifications = [
            {"id": row["id"], "rule": row["rule"], "stage": row["stage"],
             "subject_type": row["subject_type"], "subject_id": row["subject_id"],
             "account_id": row["account_id"], "qualified_at": _iso(row["qualified_at"]),
             "evidence": json.loads(row["evidence"])}
            for row in tx.rows(
                "qualifications", "(subject_type = 'user' AND subject_id = ?) OR user_id = ?",
                [user_id, user_id], order_by="qualified_at, rowid")]
        deliveries = [
            {"destination": row["destination"], "kind": row["kind"],
             "status": row["status"], "payload": json.loads(row["payload"])}
            for row in tx.rows("outbox", "user_id = ?", [user_id], order_by="id")]
        pruned = [
            {"event": row["event"], "account_id": row["account_id"],
             "properties": json.loads(row["properties"]), "count": row["n"],
             "first": _iso(row["first_ts"]), "last": _iso(row["last_ts"])}
            for row in tx.rows("event_rollups", "tenant_key = ? AND user_id = ?",
                               [tenant, user_id], order_by="event, first_ts")]
    user = users[0] if users else None
    return {
        "user_id": user_id,
        "account_id": user["account_id"] if user else None,
        "first_seen": _iso(user["first_seen"]) if user else None,
        "stage": user["stage"] if user else None,
        "traits": json.loads(user["traits"]) if user else {},
        "events": events,
        "pruned_events": pruned,
        "stages": stages,
        "qualifications": qualifications,
        "staged": [{"kind": row["kind"], "timestamp": _iso(row["ts"]),
                    "event": row["event"], "data": json.loads(row["data"])}
                   for row in staged],
        "pending_deliveries": deliveries,
        "linked_ids": linked,
        "trait_history": traits,
        "contexts": contexts,
        "handoffs": handoffs,
    }


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _extras(row: dict[str, Any]) -> dict[str, Any]:
    """A call's ``context`` and ``integrations``, where it carried them."""
    return {key: json.loads(row[key]) for key in ("context", "integrations")
            if row.get(key) is not None}
