"""Fixtures of the fuzz suite: one harness (a real SQLite file) per test module and entry
point, and the campaign's count of examples."""

from __future__ import annotations

import pytest

from .harness import EXAMPLES, Harness


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory):
    made: dict[str, Harness] = {}

    def get(name: str) -> Harness:
        if name not in made:
            made[name] = Harness(str(tmp_path_factory.mktemp("fuzz")), name)
        return made[name]

    yield get
    for harness in made.values():
        harness.close()


def pytest_terminal_summary(terminalreporter):
    if EXAMPLES:
        total = sum(EXAMPLES.values())
        terminalreporter.write_line(
            f"fuzz: {total} examples: " + ", ".join(f"{k} {v}" for k, v in sorted(
                EXAMPLES.items())))
