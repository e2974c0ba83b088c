"""The text of an explanation: a :class:`~pqlsdk.models.Status` as lines for people
(:meth:`pqlsdk.Client.explain`)."""

from __future__ import annotations

from .models import Status


def explain_lines(status: Status) -> list[str]:
    """The lines of :meth:`pqlsdk.Client.explain` for one subject: its stage, each
    qualification with its evidence, and progress on each rule not met yet."""
    lines = [f"{status.subject_type} {status.subject_id}: stage {status.stage}"]
    for qualification in status.qualifications:
        when = qualification.qualified_at.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"  ✓ {qualification.rule}: qualified {when} → {qualification.stage}")
        lines += qualification.evidence.lines("      ")
    for name, progress in status.progress.items():
        lines.append(f"  ✗ {name}: not yet")
        lines += progress.lines("      ")
    if len(lines) == 1:
        lines.append("  (no rules for this subject)")
    return lines

