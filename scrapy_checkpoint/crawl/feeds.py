"""Scrapy's feed exports made exactly-once: a FeedStorage and a FeedExporter subclass.

:class:`CheckpointFeedStorage` gives local ``jsonlines`` and ``csv`` feeds a
:class:`~.outputs.DurableOutput` instead of a plain file;
:class:`CheckpointFeedExporter` tells those outputs which request each item
came from. Other feeds work as in plain Scrapy, with a warning that a crash can
lose or repeat their items.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any, cast

from scrapy import Spider
from scrapy.extensions.feedexport import FeedExporter, FileFeedStorage

from ..errors import CheckpointError
from .extension import CheckpointExtension

#: Feed formats whose items are whole lines, so a cut at a committed length is clean.
LINE_FORMATS = frozenset({"jsonlines", "jsonl", "jl", "csv"})


def _extension(crawler: Any) -> CheckpointExtension | None:
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
        """Scrapy's factory for feed storages: the storage of ``uri`` for ``crawler``."""
        return cls(uri, feed_options=feed_options, crawler=crawler)

    def open(self, spider: Spider) -> IO[bytes]:
        """The file the exporter writes: a durable output for an unbatched jsonlines or csv
        feed while the stage is worked on, else Scrapy's own file (append-only when the stage is
        not worked on, so committed items are never emptied)."""
        ext = _extension(self._crawler) if self._crawler is not None else None
        if ext is not None and ext.skipping_completed:
            # A completed stage run again crawls nothing: the file is not even opened
            # (no truncation, no header, no empty JSON array appended).
            return io.BytesIO()
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
        """Open the feeds (none when the stage is completed and this run crawls nothing);
        warn once for each feed that cannot be made crash-safe."""
        ext = self._checkpoint = _extension(self.crawler)
        if ext is not None and ext.skipping_completed:
            return  # no slot: no feed file is touched
        super().open_spider(spider)
        if ext is None or not ext.active:
            return
        for slot in self.slots:
            if not isinstance(slot.storage, CheckpointFeedStorage):
                ext.warn_once(f"storage:{slot.uri}", f"Feed {slot.uri!r} is not a local file, so "
                              f"scrapy-checkpoint cannot make it crash-safe: as in plain Scrapy, "
                              f"a crash can lose or repeat its items.")

    def item_scraped(self, item: Any, spider: Spider, response: Any = None) -> None:
        """Export ``item`` with its request's unit current, so its bytes wait for the unit."""
        ext = self._checkpoint
        if ext is None:  # looked up once: the extension exists before the first item
            ext = self._checkpoint = _extension(self.crawler)
        if ext is None or not ext.active:
            super().item_scraped(item, spider)
            return
        outputs, frontier = ext.outputs, ext.frontier
        assert outputs is not None
        assert frontier is not None
        router = outputs.router
        previous, router.current = router.current, frontier.unit_of(response)
        try:
            super().item_scraped(item, spider)
        except CheckpointError as exc:  # a feed's start could not be journaled (full disk)
            ext.stop(exc)
        finally:
            router.current = previous
