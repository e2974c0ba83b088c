"""SQL written once for both engines: the SQLite dialect the store's statements are written
in, rewritten for PostgreSQL (psycopg's ``%s``/``%(name)s`` paramstyle and the few spellings
that differ). Each statement is rewritten once and cached.

    >>> to_postgres("SELECT * FROM users WHERE user_id = ?").sql
    'SELECT * FROM users WHERE user_id = %(p1)s'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple


class Statement(NamedTuple):
    """A statement rewritten for psycopg: ``sql`` takes a dict of arguments; ``positional``
    says the SQLite original took a sequence (bound as ``p1``, ``p2``, ...)."""

    sql: str
    positional: bool
    skip: bool  # a PRAGMA: nothing to run on PostgreSQL


_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _outside_quotes(sql: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """``(index, character, parenthesis depth after it)`` of each character of ``sql``
    from ``start`` that is outside a quoted string."""
    depth, quoted = 0, False
    for i in range(start, len(sql)):
        ch = sql[i]
        if ch == "'":
            quoted = not quoted
            continue
        if quoted:
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        yield i, ch, depth


def _matching(sql: str, start: int) -> int:
    """The index of the parenthesis closing the one at ``start``."""
    for i, ch, depth in _outside_quotes(sql, start):
        if ch == ")" and depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {sql!r}")


def _top_level_commas(text: str) -> int:
    return sum(1 for _, ch, depth in _outside_quotes(text) if ch == "," and depth == 0)


def _rewrite_calls(sql: str, name: str, rewrite: Callable[[str], str | None]) -> str:
    """Replace each call ``name(...)`` whose argument text ``rewrite`` maps to a string."""
    pattern = re.compile(rf"(?<![A-Za-z_0-9.]){name}\(", re.IGNORECASE)
    out, pos = [], 0
    while (found := pattern.search(sql, pos)) is not None:
        open_at = found.end() - 1
        close_at = _matching(sql, open_at)
        inner = _rewrite_calls(sql[open_at + 1:close_at], name, rewrite)
        replaced = rewrite(inner)
        out.append(sql[pos:found.start()])
        out.append(replaced if replaced is not None else f"{found.group(0)}{inner})")
        pos = close_at + 1
    out.append(sql[pos:])
    return "".join(out)


_FOLLOWS_SUBQUERY = {"WHERE", "ORDER", "GROUP", "LIMIT", "UNION", "HAVING"}


def _alias_subqueries(sql: str) -> str:
    """PostgreSQL (before 16) needs an alias on every subquery in FROM."""
    out, pos, n = [], 0, 0
    pattern = re.compile(r"\bFROM \(", re.IGNORECASE)
    while (found := pattern.search(sql, pos)) is not None:
        close_at = _matching(sql, found.end() - 1)
        inner = _alias_subqueries(sql[found.end():close_at])
        rest = sql[close_at + 1:].lstrip()
        word = _WORD.match(rest)
        needs = not rest or rest[0] in "),;" or (word is not None
                                                 and word.group(0).upper() in _FOLLOWS_SUBQUERY)
        n += 1
        out.append(sql[pos:found.end()] + inner + ")" + (f" AS _s{n}" if needs else ""))
        pos = close_at + 1
    out.append(sql[pos:])
    return "".join(out)


def _params(sql: str) -> tuple[str, bool]:
    """``?``/``?N`` to ``%(pN)s`` and ``:name`` to ``%(name)s`` (outside string literals);
    literal ``%`` doubled."""
    out: list[str] = []
    i, highest, quoted, positional = 0, 0, False, False
    while i < len(sql):
        ch = sql[i]
        if ch == "'":
            quoted = not quoted
            out.append(ch)
        elif quoted:
            out.append("%%" if ch == "%" else ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "?":
            positional = True
            digits = re.match(r"\d+", sql[i + 1:])
            if digits:
                number = int(digits.group(0))
                i += len(digits.group(0))
            else:
                number = highest + 1
            highest = max(highest, number)
            out.append(f"%(p{number})s")
        elif ch == ":" and i + 1 < len(sql) and sql[i + 1] != ":" and (
                i == 0 or sql[i - 1] != ":") and (name := _WORD.match(sql, i + 1)):
            out.append(f"%({name.group(0)})s")
            i += len(name.group(0))
        else:
            out.append(ch)
        i += 1
    return "".join(out), positional


_PREDICATE = re.compile(r"\s(=|<=|>=|<|>|!=|<>|AND|OR)\s", re.IGNORECASE)


def _sum(inner: str) -> str | None:
    """SQLite sums a comparison as 0/1; PostgreSQL has no sum(boolean)."""
    outside = re.sub(r"\([^()]*\)", "", inner)
    while outside != (flat := re.sub(r"\([^()]*\)", "", outside)):
        outside = flat
    if outside.lstrip().upper().startswith("CASE") or not _PREDICATE.search(outside):
        return None
    return f"sum(CASE WHEN {inner} THEN 1 ELSE 0 END)"


def _scalar(function: str) -> Callable[[str], str | None]:
    # SQLite's min(a, b) / max(a, b) of several arguments are least() / greatest()
    return lambda inner: f"{function}({inner})" if _top_level_commas(inner) else None


@functools.lru_cache(maxsize=4096)
def to_postgres(sql: str) -> Statement:
    """The PostgreSQL form of one statement of the store (see the module docstring)."""
    text = sql.strip()
    if text.upper().startswith("PRAGMA"):
        return Statement("", False, True)
    if re.match(r"INSERT OR IGNORE INTO", text, re.IGNORECASE):
        text = "INSERT INTO" + text[len("INSERT OR IGNORE INTO"):] + " ON CONFLICT DO NOTHING"
    text = re.sub(r"\bWHERE 1\b(?!\d)", "WHERE true", text)
    text = re.sub(r"\bgroup_concat\(", "string_agg(", text)
    text = re.sub(r"\bchar\((\d+)\)", r"chr(\1)", text)
    text = re.sub(r"\bCASE WHEN (\w+)\.shadow THEN", r"CASE WHEN \1.shadow <> 0 THEN", text)
    # the rules a subject met, as a JSON array (a shadow rule's as [name])
    text = text.replace("THEN json_array(rule) ELSE rule END",
                        "THEN json_build_array(rule) ELSE to_json(rule) END")
    text = _rewrite_calls(text, "json_group_array", lambda inner: f"json_agg({inner})::text")
    # a trait by any name (SQLite reads it with json_each)
    text = re.sub(r"\(SELECT value FROM json_each\((\w+)\) WHERE key = (:\w+)\)",
                  r"((\1)::jsonb -> \2)", text)
    text = re.sub(r"\browid\b", "seq", text)
    text = _rewrite_calls(text, "json_group_object",
                          lambda inner: f"json_object_agg({inner})::text")
    text = re.sub(r"(\w+\.\w+) IS (\w+\.\w+)", r"\1 IS NOT DISTINCT FROM \2", text)
    text = _rewrite_calls(text, "total", lambda inner: f"coalesce(sum({inner}), 0)")
    text = _rewrite_calls(text, "sum", _sum)
    text = _rewrite_calls(text, "min", _scalar("least"))
    text = _rewrite_calls(text, "max", _scalar("greatest"))
    # SQLite's LIMIT -1 is "no limit"; PostgreSQL's is LIMIT NULL
    text = re.sub(r"\bLIMIT (\?\d*|:\w+)", r"LIMIT nullif(\1, -1)", text)
    text = _alias_subqueries(text)
    text, positional = _params(text)
    return Statement(text, positional, False)


def bind(statement: Statement, args: Sequence[Any] | Mapping[str, Any] | None
         ) -> dict[str, Any]:
    """The arguments of one execution as psycopg takes them (booleans as 0/1, as SQLite
    stores them)."""
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return {k: int(v) if isinstance(v, bool) else v for k, v in args.items()}
    return {f"p{n}": int(v) if isinstance(v, bool) else v for n, v in enumerate(args, 1)}
