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
a time: memory is about ``chunk`` records while adding and ``runs x block`` while merging.
Input that never fills a chunk is sorted in memory and never touches the disk.
"""

from __future__ import annotations

import heapq
import pickle
import tempfile
from collections.abc import Iterator
from typing import IO, Any

#: Records per block written to (and read back from) a run's file.
BLOCK = 1_000


class _Run:
    """One sorted run on disk: blocks of records, each a pickled list."""

    def __init__(self, folder: str | None) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder, prefix="pqlsdk-run-")  # noqa: SIM115 - closed by SortedRuns.close
        self.last: Any = None
        self.count = 0

    def write(self, records: list[Any]) -> None:
        for start in range(0, len(records), BLOCK):
            pickle.dump(records[start:start + BLOCK], self.file, pickle.HIGHEST_PROTOCOL)
        self.last = records[-1]
        self.count += len(records)

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
    removes its temporary files (``folder``: where they go, default the system's)."""

    def __init__(self, chunk: int = 50_000, folder: str | None = None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 (got {chunk})")
        self.chunk, self.folder = chunk, folder
        self._pending: list[Any] = []
        self._runs: list[_Run] = []
        self.added = 0

    @property
    def runs(self) -> int:
        """How many sorted runs were written to disk so far (1 for input already in order,
        0 for input that fit in one chunk)."""
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

    def merged(self) -> Iterator[Any]:
        """Every record added, in ascending order."""
        if not self._runs:
            self._pending.sort()
            pending, self._pending = self._pending, []
            yield from pending
            return
        self._spill()
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
