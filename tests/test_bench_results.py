"""benchmarks/results.py: a run's table as JSON and the ratio changes between two runs."""

from __future__ import annotations

import importlib.util
import json
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results.py")
_spec = importlib.util.spec_from_file_location("bench_results", _PATH)
assert _spec is not None and _spec.loader is not None
results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results)


def test_ratio_is_read_from_each_figure_shape():
    assert results.ratio("1.23x") == 1.23
    assert results.ratio("2.01x (1.40x light)") == 2.01
    assert results.ratio("14,000 msg/s = 0.17x the baseline rate") == 0.17
    assert results.ratio("900/s vs 1,800/s = 2.00x the time") == 2.0
    assert results.ratio("41,000/s vs 160,000/s = 0.26") == 0.26
    assert results.ratio("53,101 rows/s") is None
    assert results.ratio("12.5 us/call") is None


def test_saved_run_round_trips_and_compare_names_the_worse_row(tmp_path):
    old = results.rows_of("track()", [
        ("bare sqlite3 INSERT (baseline; setup 12s)", "20.0 us/call"),
        ("track(), light user, three rules", "1.30x"),
        ("track(), an event no rule reads", "1.10x"),
    ], "sqlite") + results.rows_of("import", [
        ("import of 1,000 events (5 qualifications)", "900 msg/s = 0.40x the baseline rate"),
    ], "sqlite")
    path = tmp_path / "old.json"
    results.save(str(path), old, quick=True, machine="test", seconds=1.0)
    assert json.loads(path.read_text())["rows"][1]["ratio"] == 1.3
    header, loaded = results.load(str(path))
    assert header["quick"] is True and loaded == old

    new = results.rows_of("track()", [
        ("bare sqlite3 INSERT (baseline; setup 40s)", "22.0 us/call"),  # setup differs
        ("track(), light user, three rules", "1.56x"),
        ("track(), an event no rule reads", "1.12x"),
    ], "sqlite") + results.rows_of("import", [
        ("import of 1,000 events (5 qualifications)", "2,000 msg/s = 0.60x the baseline rate"),
    ], "postgresql")
    lines = results.compare(loaded, new)
    light = next(line for line in lines if "light user" in line)
    assert "1.30" in light and "1.56" in light and "+20%" in light and "WORSE" in light
    floor = next(line for line in lines if "no rule reads" in line)
    assert "+2%" in floor and "WORSE" not in floor and "better" not in floor  # under 5%
    baseline = next(line for line in lines if "bare sqlite3" in line)
    assert "no ratio" in baseline  # matched despite the setup time in parentheses
    assert any("only in the new run" in line and line.startswith("postgresql")
               for line in lines)
    assert any("only in the old run" in line and line.startswith("sqlite") and "import" in line
               for line in lines)


def test_a_rate_that_drops_is_worse():
    old = results.rows_of("import", [("import", "1 msg/s = 0.50x the baseline rate")], "sqlite")
    new = results.rows_of("import", [("import", "1 msg/s = 0.40x the baseline rate")], "sqlite")
    line = results.compare(old, new)[1]
    assert "-20%" in line and "WORSE" in line


def test_a_row_with_a_goal_is_judged_the_way_its_goal_points():
    faster = results.Row("threads", "8 threads: events/s, shared vs one (goal >= 1.5x)",
                         "1.40x (range 1.19-2.36 over 3 rounds)", "postgresql",
                         results.guess_better("threads", "8 threads (goal >= 1.5x)", "1.40x"))
    slower = faster._replace(figure="0.96x (range 0.85-1.22 over 3 rounds)")
    assert faster.better == "higher"
    assert results.guess_better("track()", "light user (goal <= 1.3x)", "4.56x") == "lower"
    assert "WORSE" in results.compare([faster], [slower])[1]
    assert "better" in results.compare([slower], [faster])[1]
