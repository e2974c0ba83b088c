"""The documented limits on what pqlsdk accepts, and the check of text against them.

One place for every limit (the README's "Limits" lists them), shared by the validation of
calls (:mod:`pqlsdk.validation`) and of rules (:mod:`pqlsdk.rules`, :mod:`pqlsdk.scoring`):

- ids and names: 1 to :data:`MAX_ID_LENGTH` characters; free text up to
  :data:`MAX_TEXT_LENGTH`; all of them valid Unicode (no lone surrogate: UTF-8 and SQLite
  cannot hold one) without NUL (U+0000, SPEC §13);
- ``properties``/``traits``: :data:`MAX_JSON_BYTES` as JSON, :data:`MAX_JSON_DEPTH` levels;
- rule bounds, points and caps: finite, at most :data:`MAX_BOUND`;
- durations (``within``, ``half_life``): at most :data:`MAX_DURATION`;
- nesting of rule conditions: :data:`MAX_RULE_DEPTH`;
- timestamps: :data:`pqlsdk.timestamps.MIN_TIME` to :data:`pqlsdk.timestamps.MAX_TIME`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

#: Longest id or name (user, account, event, message id, rule, trait, property), in
#: characters (code points).
MAX_ID_LENGTH = 1024
#: Longest free text (a stage change's ``reason``, a rule's ``description``), in characters.
MAX_TEXT_LENGTH = 4096
#: Largest ``properties`` or ``traits`` of one call, as JSON with non-ASCII escaped (as
#: Segment measures its 32 KB per message), in bytes.
MAX_JSON_BYTES = 32 * 1024
#: Deepest nesting of ``properties`` or ``traits`` (the dict itself is level 1).
MAX_JSON_DEPTH = 32
#: Largest rule bound (``at_least``, ``at_most``), scoring ``points`` and ``max``: 2**53, the
#: largest whole number a float holds exactly, so a count compares exactly in Python and in
#: SQLite, and sums of points cannot overflow.
MAX_BOUND = 2**53
#: Longest duration (``within``, ``half_life``): 100 years of days.
MAX_DURATION = timedelta(days=36_500)
#: Deepest nesting of ``all``/``any``/``not`` in one rule (the rule's own group is level 1).
MAX_RULE_DEPTH = 32


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message: shortened, and safe for any value (a huge
    integer or a deeply nested dict has no ``repr``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, dict | list | tuple | set) and len(value) > 20:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        text = repr(value)
    except Exception:  # a huge int inside, deep nesting, a broken __repr__
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_problem(value: str, max_length: int) -> str | None:
    """What is wrong with ``value`` as pqlsdk text (too long, NUL, a lone surrogate), said
    as the end of a sentence, or None."""
    if len(value) > max_length:
        return f"must be at most {max_length} characters (got {len(value)})"
    if "\x00" in value:
        return f"must not contain NUL (U+0000) (got {shown(value)})"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"must be valid Unicode, without lone surrogates (got "
                    f"{value[exc.start]!r} at position {exc.start} of {shown(value)})")
    return None
