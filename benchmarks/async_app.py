"""The FastAPI recipe plus one route for comparison only: the same track() called from
``async def`` with the blocking Client (what the issue measured at 1.5 s stalls)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "fastapi_app"))

from app import Track, app


@app.post("/track-blocking")
async def track_blocking(body: Track) -> dict[str, list[str]]:
    """Anti-pattern: a blocking SQLite write on the event loop."""
    found = app.state.pql.client.track(body.user_id, body.event, body.properties)
    return {"qualified": [q.rule for q in found]}
