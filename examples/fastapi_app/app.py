"""FastAPI under uvicorn with pqlsdk.AsyncClient: track() never stalls the event loop.

    PQL_DB=pql.db uvicorn app:app --app-dir examples/fastapi_app

Environment: PQL_DB (the SQLite file), PQL_RULES (default: examples/recipe_rules.toml),
SEGMENT_WRITE_KEY and SEGMENT_HOST (forward to Segment when set), PQL_CALLBACK_LOG (a file
the callback appends each qualification to), PQL_SLOW_CALLBACK (seconds the callback
awaits first: a slow CRM), PQL_CALLBACK_GATE (for tests: a path; the callback of a user
named ``gated-*`` waits until ``PATH.USER`` exists).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from segment.analytics import Client as SegmentClient

import pqlsdk

RULES = os.environ.get("PQL_RULES", str(Path(__file__).parent.parent / "recipe_rules.toml"))


async def notify_sales(q: pqlsdk.Qualification) -> None:
    """An ``async def`` callback: runs on this app's event loop."""
    await asyncio.sleep(float(os.environ.get("PQL_SLOW_CALLBACK", "0")))
    gate = os.environ.get("PQL_CALLBACK_GATE")  # tests: hold this user's callback open
    if gate and q.subject_id.startswith("gated-"):
        Path(f"{gate}.{q.subject_id}.started").touch()
        for _ in range(6000):  # at most a minute
            if os.path.exists(f"{gate}.{q.subject_id}"):
                break
            await asyncio.sleep(0.01)
    log = os.environ.get("PQL_CALLBACK_LOG")
    if log:
        with open(log, "a") as out:
            out.write(f"{q.id} {q.subject_type} {q.subject_id} {q.rule}\n")


@asynccontextmanager
async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
    key = os.environ.get("SEGMENT_WRITE_KEY")
    segment = (SegmentClient(write_key=key, host=os.environ.get("SEGMENT_HOST"),
                             sync_mode=True) if key else None)
    app.state.pql = pqlsdk.AsyncClient(os.environ.get("PQL_DB", "pql.db"), RULES,
                                       on_qualified=notify_sales, segment=segment)
    yield
    await app.state.pql.close(timeout=5)


app = FastAPI(lifespan=lifespan)


class Track(BaseModel):
    user_id: str
    event: str
    properties: dict[str, Any] | None = None
    account_id: str | None = None


@app.post("/track")
async def track(body: Track) -> dict[str, Any]:
    """The two lines that matter: ``await`` the AsyncClient."""
    found = await app.state.pql.track(body.user_id, body.event, body.properties,
                                      account_id=body.account_id)
    return {"qualified": [q.rule for q in found]}


@app.get("/status/{user_id}")
async def status(user_id: str) -> dict[str, Any]:
    found = await app.state.pql.status(user_id)
    return {"stage": found.stage, "rules": [q.rule for q in found.qualifications]}


@app.get("/health")
async def health() -> dict[str, Any]:
    return (await app.state.pql.health()).to_dict()


@app.get("/ping")
async def ping() -> dict[str, str]:
    """A trivial endpoint: its latency shows whether anything blocks the loop."""
    return {"pong": "ok"}
