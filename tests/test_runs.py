"""pqlsdk.runs: sorting more records than a chunk holds, through runs on disk."""

from __future__ import annotations

import os
import random

import pytest

from pqlsdk.runs import SortedRuns


def records(count, seed=5):
    rng = random.Random(seed)
    return [(rng.randrange(1_000), n, f"m{n}") for n in range(count)]


def test_shuffled_input_comes_back_in_order_through_several_runs(tmp_path):
    items = records(2_500)
    with SortedRuns(chunk=300, folder=str(tmp_path)) as runs:
        for item in items:
            runs.add(item)
        assert runs.runs == 8  # 2,500 / 300 chunks spilled, none in order with the last
        merged = list(runs.merged())
        assert runs.runs == 9  # the last partial chunk too
    assert merged == sorted(items)
    assert os.listdir(tmp_path) == []  # temporary files: unlinked from the start


def test_input_already_in_order_is_one_run_streamed_back(tmp_path):
    items = sorted(records(1_000))
    with SortedRuns(chunk=100, folder=str(tmp_path)) as runs:
        for item in items:
            runs.add(item)
        assert list(runs.merged()) == items
        assert runs.runs == 1


def test_input_that_fits_one_chunk_never_touches_the_disk():
    items = records(50)
    with SortedRuns(chunk=100) as runs:
        for item in reversed(items):
            runs.add(item)
        assert list(runs.merged()) == sorted(items)
        assert runs.runs == 0


def test_mostly_ordered_input_with_a_late_chunk_starts_a_second_run():
    items = [(n, n) for n in range(0, 400)] + [(n, n) for n in range(1000, 1200)] \
        + [(n, n) for n in range(500, 700)]
    with SortedRuns(chunk=200) as runs:
        for item in items:
            runs.add(item)
        assert list(runs.merged()) == sorted(items)
        assert runs.runs == 2  # 0-399 and 1000-1199 extend one run; 500-699 is late


def test_empty_input_and_a_bad_chunk():
    with SortedRuns() as runs:
        assert list(runs.merged()) == []
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        SortedRuns(chunk=0)
