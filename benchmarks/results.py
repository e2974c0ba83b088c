"""A benchmark run's table as JSON, and the ratio changes between two runs.

    python benchmarks/run.py                          # writes benchmarks/results/<stamp>.json
    python benchmarks/run.py --compare OLD.json       # and prints each row's ratio change
    python benchmarks/run.py --compare OLD.json --new NEW.json   # two files, no run

Each row keeps its figure as printed and, where the figure holds one, its ratio to the
baseline measured in the same run (``1.23x``, ``= 0.52x the baseline rate``, ``= 0.25``).
Only ratios are compared: absolute times differ from machine to machine and minute to
minute. Rows are matched by engine, section and label, whatever numbers the label holds (a
parenthesis with a number in it, such as a setup time or a goal, is left out).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

#: Where ``run.py`` writes a run's table unless told otherwise (ignored by git).
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FORMAT = 1

_EQUALS_X = re.compile(r"=\s*(\d[\d,]*\.?\d*)x")
_FIRST_X = re.compile(r"(?<![\w.])(\d[\d,]*\.?\d*)x\b")
_EQUALS = re.compile(r"=\s*(\d[\d,]*\.\d+)(?!\s*[a-zA-Z/%])")
_PARENS = re.compile(r"\s*\([^()]*\d[^()]*\)")
_DIGITS = re.compile(r"\d[\d,.]*")


class Row(NamedTuple):
    """One line of the table. ``better`` says which way a ratio should move ("lower" for a
    cost against a baseline, "higher" for a rate against one; None: no verdict)."""

    section: str
    what: str
    figure: str
    engine: str = "sqlite"
    better: str | None = None

    @property
    def ratio(self) -> float | None:
        """The figure's ratio to its baseline, or None for a row without one."""
        return ratio(self.figure)

    @property
    def key(self) -> tuple[str, str, str]:
        """What matches this row with the same row of another run."""
        return self.engine, self.section, _DIGITS.sub("#", _PARENS.sub("", self.what)).strip()


def ratio(figure: str) -> float | None:
    """The ratio a figure states: ``... = 0.52x ...`` first, else the first ``1.23x``,
    else a bare ``= 0.25``; None when it states none (an absolute baseline)."""
    for pattern in (_EQUALS_X, _FIRST_X, _EQUALS):
        found = pattern.search(figure)
        if found:
            return float(found.group(1).replace(",", ""))
    return None


def guess_better(section: str, what: str, figure: str) -> str | None:
    """Which way a row's ratio should move, from how its figure reads: the way its goal
    points (``goal >= 1.5x``: higher; ``goal <= 1.3x``: lower), else a rate against a
    baseline rate ("baseline rate", "x one", "vs ...") wants to be higher; a plain cost
    ("1.23x") lower."""
    text = f"{what} {figure}".lower()
    goal = re.search(r"(?:goal|stretch) ([<>])=", text)  # a stated goal says which way
    if goal:
        return "higher" if goal.group(1) == ">" else "lower"
    if "baseline rate" in text or "x one" in text or "rows/s vs" in text:
        return "higher"
    if "the time" in text or re.fullmatch(r"\s*\d[\d.,]*x.*", figure):
        return "lower"
    return None


def rows_of(section: str, measured: Iterable[tuple[Any, ...]], engine: str) -> list[Row]:
    """A benchmark's ``(what, figure)`` rows (or :class:`Row` objects) as rows of a
    section."""
    out = []
    for item in measured:
        if isinstance(item, Row):
            out.append(item)
            continue
        what, figure = item[0], item[1]
        out.append(Row(section, what, figure, engine, guess_better(section, what, figure)))
    return out


def save(path: str, rows: list[Row], quick: bool, machine: str, seconds: float) -> None:
    """Write a run's table to ``path`` (its folder made if missing)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    document = {
        "format": FORMAT, "quick": quick, "machine": machine, "seconds": round(seconds, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [{**row._asdict(), "ratio": row.ratio} for row in rows],
    }
    with open(path, "w") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")


def load(path: str) -> tuple[dict[str, Any], list[Row]]:
    """A saved run: its header and its rows."""
    with open(path) as handle:
        document = json.load(handle)
    rows = [Row(r["section"], r["what"], r["figure"], r.get("engine", "sqlite"),
                r.get("better")) for r in document["rows"]]
    return {k: v for k, v in document.items() if k != "rows"}, rows


def default_path(quick: bool) -> str:
    """``benchmarks/results/YYYYmmdd-HHMMSS[-quick].json``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return os.path.join(RESULTS, f"{stamp}{'-quick' if quick else ''}.json")


def _keyed(rows: list[Row]) -> dict[tuple[str, str, str, int], Row]:
    seen: dict[tuple[str, str, str], int] = {}
    keyed = {}
    for row in rows:
        n = seen[row.key] = seen.get(row.key, 0) + 1
        keyed[(*row.key, n)] = row
    return keyed


def compare(old: list[Row], new: list[Row]) -> list[str]:
    """One line per row of either run: the old and the new ratio and the change, with
    "worse"/"better" where the row says which way is good."""
    before, after = _keyed(old), _keyed(new)
    keys = list(after) + [k for k in before if k not in after]
    labels = {key: f"{key[1]}: {(after.get(key) or before[key]).what}" for key in keys}
    width = max((len(label) for label in labels.values()), default=0) + 2
    lines = [f"{'engine':<11}{'row':<{width}}{'old':>9}{'new':>9}  change"]
    for key in keys:
        was, now = before.get(key), after.get(key)
        engine, label = key[0], labels[key]
        a = was.ratio if was else None
        b = now.ratio if now else None
        if was is None or now is None:
            note = "only in the new run" if was is None else "only in the old run"
            text = f"{'':>9}{'':>9}  {note}"
        elif a is None or b is None:
            text = f"{'':>9}{'':>9}  (no ratio: {now.figure})"
        else:
            change = (b - a) / a * 100 if a else 0.0
            verdict = ""
            better = now.better or was.better
            if better and abs(change) >= 5:
                improved = (b < a) if better == "lower" else (b > a)
                verdict = "  better" if improved else "  WORSE"
            text = f"{a:>9.2f}{b:>9.2f}  {change:+.0f}%{verdict}"
        lines.append(f"{engine:<11}{label:<{width}}{text}")
    return lines
