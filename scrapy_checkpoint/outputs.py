"""Exactly-once outputs: item bytes reach the file together with their request's done record.

An exporter writes an item's bytes while the unit (request) that produced it is
"current"; :class:`DurableOutput` keeps them aside per unit and appends them to
the file only when the unit is done. Before each journal commit the file is
flushed and its length recorded in the group, so the committed length only
ever covers items of done units. On resume the file is cut back to that length;
the units whose items were cut are not done, so they run again and write them
once more.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from scrapy import Spider
from scrapy.extensions.feedexport import FeedExporter, FileFeedStorage

if TYPE_CHECKING:
    from .extension import CheckpointExtension

logger = logging.getLogger("scrapy_checkpoint")

#: Feed formats whose items are whole lines, so a cut at a committed length is clean.
LINE_FORMATS = frozenset({"jsonlines", "jsonl", "jl", "csv"})


class UnitRouter:
    """Which unit's output is being written right now (None: not a tracked unit)."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: int | None = None


class DurableOutput:
    """A file written per unit; see the module docstring.

    With ``header``, the first write of this run is a header line (CSV): it is
    written at once, outside any request, or dropped with ``drop_header`` when the
    file already has it.
    """

    def __init__(self, path: str, router: UnitRouter, *, length: int,
                 header: bool = False, drop_header: bool = False) -> None:
        self.path = path
        self._router = router
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._file.truncate(length)
        self._file.seek(0, os.SEEK_END)  # truncate() does not move the position tell() reports
        self._pending: dict[int, list[bytes]] = {}
        self._header = header
        self._drop_header = drop_header
        self._closed_length: int | None = None
        self.length = length

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._header:
            self._header = False
            if not self._drop_header:
                self._file.write(data)
            return len(data)
        unit = self._router.current
        if unit is None:
            self._file.write(data)
        else:
            self._pending.setdefault(unit, []).append(bytes(data))
        return len(data)

    def release(self, unit: int) -> None:
        """The unit is done: append its bytes (they reach the OS at the next commit)."""
        chunks = self._pending.pop(unit, None)
        if chunks and self._closed_length is None:
            self._file.write(b"".join(chunks))

    def committed_length(self) -> int:
        """Flush to the OS and return the file's length (called before each commit)."""
        if self._closed_length is not None:
            return self._closed_length
        self._file.flush()
        return self._file.tell()

    def fileno(self) -> int | None:
        """The descriptor to fsync with the journal (None once closed: close fsyncs)."""
        return None if self._closed_length is not None else self._file.fileno()

    # The file-object protocol the exporters use.
    def flush(self) -> None:
        if self._closed_length is None:
            self._file.flush()

    def close(self) -> None:
        if self._closed_length is None:
            self._closed_length = self.committed_length()
            os.fsync(self._file.fileno())
            self._file.close()
            dropped = sum(len(c) for c in self._pending.values())
            if dropped:
                logger.debug("%s: %d byte(s) of unfinished requests not written", self.path, dropped)
            self._pending.clear()

    @property
    def closed(self) -> bool:
        return self._closed_length is not None

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.committed_length()


def _extension(crawler: Any) -> CheckpointExtension | None:
    from .extension import CheckpointExtension

    return CheckpointExtension.of(crawler)


class CheckpointFeedStorage(FileFeedStorage):
    """Local feed storage that makes ``jsonlines`` and ``csv`` feeds exactly-once."""

    def __init__(self, uri: str, *, feed_options: dict[str, Any] | None = None,
                 crawler: Any = None) -> None:
        super().__init__(uri, feed_options=feed_options)
        self._feed_options = feed_options or {}
        self._format = self._feed_options.get("format")
        self._crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Any, uri: str, *,
                     feed_options: dict[str, Any] | None = None) -> CheckpointFeedStorage:
        return cls(uri, feed_options=feed_options, crawler=crawler)

    def open(self, spider: Spider) -> IO[bytes]:
        ext = _extension(self._crawler) if self._crawler is not None else None
        if ext is not None and not ext.active:
            # A skipped run, or a feed opened after the checkpoint closed (FEED_STORE_EMPTY):
            # never empty what earlier runs committed.
            self.write_mode = "ab"
        if ext is None or not ext.active:
            return super().open(spider)
        options = self._feed_options
        if (self._format not in LINE_FORMATS or options.get("batch_item_count")
                or options.get("postprocessing")):
            why = ("batches (FEED_EXPORT_BATCH_ITEM_COUNT)" if options.get("batch_item_count")
                   else "postprocessing" if options.get("postprocessing")
                   else f"format {self._format!r}")
            ext.warn_once(f"feed:{why}", f"Feed {self.path!r} uses {why}, which scrapy-checkpoint "
                          f"cannot make crash-safe: as in plain Scrapy, a crash can lose or "
                          f"repeat its items. Use an unbatched jsonlines or csv feed.")
            return super().open(spider)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        headers = options.get("item_export_kwargs", {}).get("include_headers_line", True)
        output = ext.open_output(self.path, overwrite=self.write_mode == "wb",
                                 has_header=self._format == "csv" and bool(headers))
        return cast("IO[bytes]", output)  # it implements the file methods exporters use


class CheckpointFeedExporter(FeedExporter):
    """Scrapy's FeedExporter, telling the outputs which request each item came from."""

    _checkpoint: CheckpointExtension | None = None

    def open_spider(self, spider: Spider) -> None:
        super().open_spider(spider)
        ext = self._checkpoint = _extension(self.crawler)
        if ext is None or not ext.active:
            return
        for slot in self.slots:
            if not isinstance(slot.storage, CheckpointFeedStorage):
                ext.warn_once(f"storage:{slot.uri}", f"Feed {slot.uri!r} is not a local file, so "
                              f"scrapy-checkpoint cannot make it crash-safe: as in plain Scrapy, "
                              f"a crash can lose or repeat its items.")

    def item_scraped(self, item: Any, spider: Spider, response: Any = None) -> None:
        ext = self._checkpoint
        if ext is None:  # looked up once: the extension exists before the first item
            ext = self._checkpoint = _extension(self.crawler)
        if ext is None or not ext.active:
            super().item_scraped(item, spider)
            return
        router = ext.router
        previous, router.current = router.current, ext.unit_of(response)
        try:
            super().item_scraped(item, spider)
        finally:
            router.current = previous
