"""The lead lifecycle's stages and their order."""

from __future__ import annotations

#: Ordered stages: an automatic move only ever goes to a later one.
STAGES: tuple[str, ...] = ("subscriber", "lead", "mql", "pql", "sql", "opportunity", "customer")

#: Side states a person sets: ``unqualified`` may qualify again, ``disqualified`` never does.
SIDE_STATES: tuple[str, ...] = ("unqualified", "disqualified")

#: The stage of a subject pqlsdk has just met.
FIRST_STAGE = "lead"


def rank(stage: str) -> int:
    """Position of an ordered stage, ``-1`` for a side state.

    >>> rank("mql") < rank("pql")
    True
    """
    return STAGES.index(stage) if stage in STAGES else -1
