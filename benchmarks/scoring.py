"""Does scoring slow track()? The same rules with and without a scoring model, in one run.

    python benchmarks/scoring.py [--quick]

Three rows, each a ratio to ``track()`` with the three typical rules and no scoring:
scoring configured (nothing reads it on the hot path), and a score-threshold MQL rule
(the score is computed whenever that rule is checked, until the subject qualifies).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pqlsdk

from track import NOW, RULES, cli, per_call, populate

SCORING = {
    "half_life": "30d",
    "behavior": [
        {"event": "report_generated", "points": 2, "max": 40},
        {"event": "export", "points": 5, "within": "30d"},
    ],
    "fit": [{"trait": "plan", "in": ["trial"], "points": 10},
            {"trait": "email", "ends_with": "@gmail.com", "points": -10}],
}
SCORE_RULE = {"name": "score_mql", "stage": "mql", "all": [{"score": "total", "gte": 1000}]}


def measure(quick: bool, rounds: int = 11, calls: int = 300) -> list[tuple[str, str]]:
    """The figures, as ``(what, figure)`` rows."""
    events = 20_000 if quick else 200_000
    folder = tempfile.mkdtemp(prefix="pqlsdk-bench-")
    configs = {
        "plain": RULES,
        "scoring": {**RULES, "scoring": SCORING},
        "score_rule": {"rules": [*RULES["rules"], SCORE_RULE], "scoring": SCORING},
    }
    clients, users = {}, []
    for name, rules in configs.items():
        path = os.path.join(folder, f"{name}.db")
        users = populate(path, events, 0)
        clients[name] = pqlsdk.Client(path, rules=rules)
    rng = random.Random(5)

    def caller(client):
        return lambda: client.track(rng.choice(users), "report_generated", timestamp=NOW)

    ratios: dict[str, list[float]] = {"scoring": [], "score_rule": []}
    for _ in range(rounds):
        plain = per_call(caller(clients["plain"]), calls)
        for name in ratios:
            ratios[name].append(per_call(caller(clients[name]), calls))
        plain = (plain + per_call(caller(clients["plain"]), calls)) / 2
        for name in ratios:
            ratios[name][-1] /= plain
    for client in clients.values():
        client.close()
    return [
        ("track(), scoring configured, same rules, vs no scoring",
         f"{statistics.median(ratios['scoring']):.2f}x"),
        ("track(), plus a score-threshold MQL rule, vs no scoring",
         f"{statistics.median(ratios['score_rule']):.2f}x"),
    ]


if __name__ == "__main__":
    cli(measure, __doc__, rounds=11)
