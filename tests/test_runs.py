"""pqlsdk.runs: sorting more records than a chunk holds, through runs on disk."""

from __future__ import annotations

import heapq
import json
import os
import random

import pytest

import pqlsdk
import pqlsdk.importer
import pqlsdk.runs
from pqlsdk.runs import SortedRuns

from .history import RULES, apply_live, messages, outcome


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


def test_never_more_than_fanin_runs_merged_or_kept_whatever_the_input_size(tmp_path,
                                                                           monkeypatch):
    widths = []
    merge = heapq.merge

    def counted(*iterables, **kwargs):
        widths.append(len(iterables))
        return merge(*iterables, **kwargs)

    monkeypatch.setattr("pqlsdk.runs.heapq.merge", counted)
    items = records(5_000)
    most = 0
    with SortedRuns(chunk=10, folder=str(tmp_path), fanin=4) as runs:
        for item in items:  # 500 chunks, each starting a run of its own
            runs.add(item)
            most = max(most, runs.runs)
        merged = list(runs.merged())
        assert runs.runs <= 4
    assert merged == sorted(items)
    assert max(widths) == 4  # memory while merging: 4 blocks, however many chunks
    assert most <= 3 * 5  # at most fanin - 1 runs per level; 500 chunks make 5 levels (4^5)
    assert os.listdir(tmp_path) == []


def test_a_bad_fanin():
    with pytest.raises(ValueError, match="fanin must be at least 2"):
        SortedRuns(fanin=1)


def test_a_shuffled_import_through_merged_runs_equals_live(tmp_path, make_client,
                                                           monkeypatch):
    history = messages(1500, seed=7)
    live = pqlsdk.Client(str(tmp_path / "live.db"), rules=RULES)
    apply_live(live, history)
    expected = outcome(live)
    live.close()
    shuffled = history[:]
    random.Random(8).shuffle(shuffled)
    source = tmp_path / "history.jsonl"
    source.write_text("".join(json.dumps(message) + "\n" for message in shuffled))
    monkeypatch.setattr(pqlsdk.importer, "CHUNK", 40)  # 38 runs,
    monkeypatch.setattr(pqlsdk.runs, "FANIN", 3)  # merged 3 at a time, three levels deep
    client = make_client(RULES)
    result = pqlsdk.importer.import_jsonl(client, str(source))
    assert (result.applied, result.errors) == (1500, ())
    assert outcome(client) == expected
