"""Batch feeds (``%(batch_id)d`` in the URI, ``FEED_EXPORT_BATCH_ITEM_COUNT``) made exactly-once.

Plain Scrapy starts a new file after every N exported items and numbers the files
from 1 on every run, so a second run of a stage overwrites (``-O``) or appends to
the first run's files. Here the batches are cut when items are *committed*: each
file holds N committed items, the next file starts with the next one, and the
journal keeps each file's feed, batch id and item count. A resumed run continues
the first file that is not full (the last batch of the run before, or one cut back
after a kill) and numbers on from there, so the files after any number of
interruptions are the files of an uninterrupted run: the same names, N items in
each but the last, every item once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..journal.groups import DOC_BATCH, DOC_FEED, DOC_ITEMS
from .outputs import Framing, HeldRecords

if TYPE_CHECKING:
    from .outputs import DurableOutput, OutputSet


class BatchedOutput(HeldRecords):
    """The file an exporter of a batch feed writes to; see the module docstring.

    ``feed`` is the feed's URI template, ``size`` the items per file, ``path_of(batch_id)``
    the file of a batch this stage has not written yet. ``overwrite`` (``-O``) empties a
    file the first time the stage writes it; ``header``: the exporter's first write is a
    CSV header, written at the top of every file; ``framing``: the document's framing.
    """

    def __init__(self, outputs: OutputSet, *, feed: str, size: int,
                 path_of: Callable[[int], str], overwrite: bool, header: bool,
                 framing: Framing) -> None:
        super().__init__(outputs.router, header=header, framing=framing, hold_all=True)
        self._outputs = outputs
        self.feed = feed
        self.size = size
        self._path_of = path_of
        self._overwrite = overwrite
        self._file_framing = framing
        self._current: DurableOutput | None = None
        self.batch_id = self._resume_point()

    def _resume_point(self) -> int:
        """The first batch of this feed that is not full (or the one after the last)."""
        files = self._outputs.batch_files(self.feed)
        for batch_id in sorted(files):
            entry = files[batch_id][1]
            if entry[2].get(DOC_ITEMS, 0) < self.size:
                return batch_id
        return max(files, default=0) + 1

    def _set_header(self, header: bytes) -> None:
        self._file_framing = Framing(opening=header)

    def _open(self) -> DurableOutput:
        recorded = self._outputs.batch_files(self.feed).get(self.batch_id)
        path = recorded[0] if recorded is not None else self._path_of(self.batch_id)
        self._current = self._outputs.open_batch_file(
            path, overwrite=self._overwrite, framing=self._file_framing,
            extra={DOC_FEED: self.feed, DOC_BATCH: self.batch_id})
        return self._current

    def _append(self, records: list[bytearray]) -> None:
        for record in records:
            current = self._current or self._open()
            current.append([record])
            if current.items >= self.size:  # full: closed now, as Scrapy closes a batch
                current.close_document()
                current.close()
                self._current = None
                self.batch_id += 1

    @property
    def path(self) -> str | None:
        """The file being written (None between two batches)."""
        return self._current.path if self._current is not None else None

    def flush(self) -> None:
        """Hand what was written to the OS."""
        if self._current is not None:
            self._current.flush()

    def close(self) -> None:
        """Close the batch being written (see :meth:`DurableOutput.close`)."""
        if not self._finished:
            self._finished = True
            self._drop_held(self.feed)
            if self._current is not None:
                self._current.close()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._finished
