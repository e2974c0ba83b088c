"""Sort more records than fit in memory: sorted runs spilled to temporary files, then merged.

    with SortedRuns(chunk=50_000) as runs:
        for record in records:          # any order
            runs.add(record)
        for record in runs.merged():    # ascending order, bounded memory
            ...

Records are tuples compared as tuples (the importer's start with ``(timestamp, line
number)``, which is unique, so no two records ever compare equal on their keys). Up to
``chunk`` records are held in memory; a full chunk is sorted and written to a temporary file
as one run. A chunk that starts at or after the end of the run before it extends that run
instead of starting a new one, so input that is already in order (as Segment's archives
mostly are) is one run that :meth:`SortedRuns.merged` streams straight back, with no merge
heap at all. Otherwise the runs are merged with :func:`heapq.merge`, reading each a block at
a time. Never more than ``fanin`` runs are merged at once: when the last ``fanin`` runs on
disk are of one level (written from chunks, or each merged from ``fanin`` runs of the level
below) they are merged into one run of the next level, and :meth:`SortedRuns.merged` merges
the last ``fanin`` runs until no more than ``fanin`` are left. So memory is about ``chunk``
records while adding and at most ``fanin x BLOCK`` while merging, whatever the input's size
(a record is rewritten once per level: log base ``fanin`` of the chunks). Input that never
fills a chunk is sorted in memory and never touches the disk.
"""

from __future__ import annotations

import heapq
import itertools
import pickle
import tempfile
from collections.abc import Iterator
from typing import IO, Any

#: Records per block written to (and read back from) a run's file.
BLOCK = 1_000
#: Most runs merged at once (each holds a block in memory while merging).
FANIN = 64


class _Run:
    """One sorted run on disk: blocks of records, each a pickled list; ``level`` 0 for a
    run written from chunks, one more than its sources' for a run merged from others."""

    def __init__(self, folder: str | None, level: int = 0) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder, prefix="pqlsdk-run-")  # noqa: SIM115 - closed by SortedRuns.close
        self.level = level
        self.last: Any = None
        self.count = 0

    def write(self, records: list[Any]) -> None:
        for start in range(0, len(records), BLOCK):
            pickle.dump(records[start:start + BLOCK], self.file, pickle.HIGHEST_PROTOCOL)
        self.last = records[-1]
        self.count += len(records)

    def write_merged(self, sources: list[_Run]) -> None:
        """Write the merge of ``sources`` (each read a block at a time), a block at a time."""
        merged = heapq.merge(*(source.read() for source in sources))
        while block := list(itertools.islice(merged, BLOCK)):
            self.write(block)

    def read(self) -> Iterator[Any]:
        self.file.flush()
        self.file.seek(0)
        load = pickle.load
        while True:
            try:
                block = load(self.file)
            except EOFError:
                return
            yield from block


class SortedRuns:
    """Collect records in any order (:meth:`add`), then read them back in ascending order
    (:meth:`merged`), holding about ``chunk`` records in memory; a context manager that
    removes its temporary files (``folder``: where they go, default the system's;
    ``fanin``: the most runs merged at once, default :data:`FANIN`)."""

    def __init__(self, chunk: int = 50_000, folder: str | None = None,
                 fanin: int | None = None) -> None:
        fanin = FANIN if fanin is None else fanin
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 (got {chunk})")
        if fanin < 2:
            raise ValueError(f"fanin must be at least 2 (got {fanin})")
        self.chunk, self.folder, self.fanin = chunk, folder, fanin
        self._pending: list[Any] = []
        self._runs: list[_Run] = []
        self.added = 0

    @property
    def runs(self) -> int:
        """How many sorted runs are on disk (1 for input already in order, 0 for input that
        fit in one chunk; runs merged into one count as one)."""
        return len(self._runs)

    def add(self, record: Any) -> None:
        """Take one record; a full chunk is sorted and spilled."""
        self._pending.append(record)
        self.added += 1
        if len(self._pending) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        pending = self._pending
        if not pending:
            return
        pending.sort()
        last = self._runs[-1] if self._runs else None
        if last is None or pending[0] < last.last:
            last = _Run(self.folder)
            self._runs.append(last)
        last.write(pending)
        self._pending = []
        while len(self._runs) >= self.fanin and len(
                {run.level for run in self._runs[-self.fanin:]}) == 1:
            self._merge_last()

    def _merge_last(self) -> None:
        """Replace the last ``fanin`` runs with one run merged from them, a level above."""
        sources = self._runs[-self.fanin:]
        merged = _Run(self.folder, max(run.level for run in sources) + 1)
        merged.write_merged(sources)
        for source in sources:
            source.file.close()
        del self._runs[-self.fanin:]
        self._runs.append(merged)

    def merged(self) -> Iterator[Any]:
        """Every record added, in ascending order."""
        if not self._runs:
            self._pending.sort()
            pending, self._pending = self._pending, []
            yield from pending
            return
        self._spill()
        while len(self._runs) > self.fanin:
            self._merge_last()
        if len(self._runs) == 1:
            yield from self._runs[0].read()
            return
        yield from heapq.merge(*(run.read() for run in self._runs))

    def close(self) -> None:
        """Remove the temporary files."""
        for run in self._runs:
            run.file.close()
        self._runs.clear()
        self._pending = []

    def __enter__(self) -> SortedRuns:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
