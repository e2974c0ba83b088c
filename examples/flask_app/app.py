"""Flask under gunicorn with ``--preload``: the Client is made once, in the master, before
the fork; each worker gets its own connection and delivery thread (pqlsdk reopens both in
the child, like PostHog's client).

    PQL_DB=pql.db gunicorn --preload -w 2 --chdir examples/flask_app app:app

Environment: as examples/fastapi_app/app.py (PQL_DB, PQL_RULES, SEGMENT_WRITE_KEY,
SEGMENT_HOST, PQL_CALLBACK_LOG).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from segment.analytics import Client as SegmentClient

import pqlsdk

RULES = os.environ.get("PQL_RULES", str(Path(__file__).parent.parent / "recipe_rules.toml"))


def notify_sales(q: pqlsdk.Qualification) -> None:
    """Delivered once per qualification, from whichever worker recorded it."""
    log = os.environ.get("PQL_CALLBACK_LOG")
    if log:
        with open(log, "a") as out:
            out.write(f"{q.id} {q.subject_type} {q.subject_id} {q.rule} {os.getpid()}\n")


_key = os.environ.get("SEGMENT_WRITE_KEY")
# made at import: with --preload, in the master before the fork
pql = pqlsdk.Client(
    os.environ.get("PQL_DB", "pql.db"), RULES, on_qualified=notify_sales,
    segment=SegmentClient(write_key=_key, host=os.environ.get("SEGMENT_HOST"),
                          sync_mode=True) if _key else None)

app = Flask(__name__)


@app.post("/track")
def track() -> Any:
    body = request.get_json()
    found = pql.track(body["user_id"], body["event"], body.get("properties"),
                      account_id=body.get("account_id"))
    return jsonify(qualified=[q.rule for q in found], pid=os.getpid())


@app.get("/health")
def health() -> Any:
    return jsonify(pql.health().to_dict())


@app.get("/ping")
def ping() -> Any:
    return jsonify(pong="ok", pid=os.getpid())
