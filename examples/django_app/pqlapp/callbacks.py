"""Callbacks named in ``settings.PQLSDK["ON_QUALIFIED"]``."""

from __future__ import annotations

import os

import pqlsdk


def notify_sales(q: pqlsdk.Qualification) -> None:
    """Append the qualification to ``PQL_CALLBACK_LOG`` (a CRM call in a real app)."""
    log = os.environ.get("PQL_CALLBACK_LOG")
    if log:
        with open(log, "a") as out:
            out.write(f"{q.id} {q.subject_type} {q.subject_id} {q.rule} {os.getpid()}\n")
