"""Scrapy's feed exports made exactly-once: a FeedStorage and a FeedExporter subclass.

:class:`CheckpointFeedStorage` gives local feeds of every format Scrapy ships
(json, jsonlines, csv, xml, marshal, pickle) a durable output instead of a plain
file: a :class:`~.outputs.DurableOutput`, or for a batch feed a
:class:`~.batches.BatchedOutput`. :class:`CheckpointFeedExporter` tells those
outputs which request each item came from, and cuts batches itself when items are
committed. Other feeds (remote storages, postprocessing, exporters of other
packages) work as in plain Scrapy, with a warning that a crash can lose or repeat
their items.
"""

from __future__ import annotations

import csv
import io
import os
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from itemadapter import ItemAdapter
from scrapy import Spider
from scrapy.exporters import (
    BaseItemExporter,
    CsvItemExporter,
    JsonItemExporter,
    JsonLinesItemExporter,
    MarshalItemExporter,
    PickleItemExporter,
    XmlItemExporter,
)
from scrapy.extensions.feedexport import FeedExporter, FileFeedStorage, apply_uri_params
from scrapy.utils.misc import build_from_crawler, load_object
from w3lib.url import file_uri_to_path

from ..errors import CheckpointError, CheckpointWriteError
from .batches import BatchedOutput
from .engine_hooks import START_ITEM
from .extension import CheckpointExtension
from .outputs import LINES, Framing

#: The exporters Scrapy ships for files (and their subclasses): their framing is probed.
SHIPPED_EXPORTERS = (JsonItemExporter, JsonLinesItemExporter, CsvItemExporter, XmlItemExporter,
                     MarshalItemExporter, PickleItemExporter)

_PROBE_ITEM = {"scrapy_checkpoint_probe": "1"}


def _extension(crawler: Any) -> CheckpointExtension | None:
    return CheckpointExtension.of(crawler)


def exporter_class(crawler: Any, feed_format: str) -> type[BaseItemExporter] | None:
    """The exporter class Scrapy uses for ``feed_format`` (None: unknown)."""
    path = crawler.settings.getwithbase("FEED_EXPORTERS").get(feed_format)
    return load_object(path) if path else None


def probe_framing(crawler: Any, cls: type[BaseItemExporter],
                  options: dict[str, Any]) -> Framing:
    """The framing of ``cls`` with the feed's ``options``, read from an exporter of the same
    class writing two items to memory: what it writes before the first item, between the
    two, and after the last."""
    buf = io.BytesIO()
    exporter = build_from_crawler(cls, crawler, buf, fields_to_export=options.get("fields"),
                                  encoding=options.get("encoding"), indent=options.get("indent"),
                                  **options.get("item_export_kwargs", {}))
    exporter.start_exporting()
    opening = buf.getvalue()
    exporter.export_item(dict(_PROBE_ITEM))
    first = buf.getvalue()[len(opening):]
    mark = len(buf.getvalue())
    exporter.export_item(dict(_PROBE_ITEM))
    second = buf.getvalue()[mark:]
    mark = len(buf.getvalue())
    exporter.finish_exporting()
    closing = buf.getvalue()[mark:]
    separator = second[:-len(first)] if first and second.endswith(first) else b""
    return Framing(opening, separator, closing)


def csv_header_fields(line: bytes, options: dict[str, Any]) -> list[str]:
    """The field names in a CSV feed's header ``line``, read with the feed's encoding and
    csv options."""
    kwargs = {k: v for k, v in options.get("item_export_kwargs", {}).items()
              if k not in ("include_headers_line", "join_multivalued", "errors",
                           "fields_to_export", "export_empty_fields", "encoding", "indent",
                           "dont_fail")}
    text = line.decode(options.get("encoding") or "utf-8")
    return next(csv.reader([text.rstrip("\r\n")], **kwargs), [])


class CheckpointFeedStorage(FileFeedStorage):
    """Local feed storage that makes the feeds of every format Scrapy ships exactly-once."""

    def __init__(self, uri: str, *, feed_options: dict[str, Any] | None = None,
                 crawler: Any = None) -> None:
        super().__init__(uri, feed_options=feed_options)
        self._feed_options = feed_options or {}
        self._format = self._feed_options.get("format")
        self._crawler = crawler
        #: Set by the exporter for a batch feed it batches: (URI template, size, path_of).
        self.batches: tuple[str, int, Any] | None = None
        #: The CSV columns fixed by the header earlier runs wrote (None: not fixed here).
        self.fixed_fields: list[str] | None = None
        #: Set when the file could not be opened: the crawl stopped, saying so; the feed is not
        #: opened again at close (``FEED_STORE_EMPTY``), which would fail the same way.
        self.unwritable = False
        self._framing = LINES

    @classmethod
    def from_crawler(cls, crawler: Any, uri: str, *,
                     feed_options: dict[str, Any] | None = None) -> CheckpointFeedStorage:
        """Scrapy's factory for feed storages: the storage of ``uri`` for ``crawler``."""
        return cls(uri, feed_options=feed_options, crawler=crawler)

    def not_durable(self, ext: CheckpointExtension) -> str | None:
        """Why this feed cannot be made exactly-once (None: it can)."""
        options = self._feed_options
        if options.get("postprocessing"):
            return "postprocessing"
        cls = exporter_class(self._crawler, self._format or "")
        if cls is None or not issubclass(cls, SHIPPED_EXPORTERS):
            return f"format {self._format!r} (an exporter scrapy-checkpoint does not know)"
        if ext.worker is not None and (options.get("batch_item_count")
                                       or issubclass(cls, (JsonItemExporter, XmlItemExporter))):
            return "a shared stage with a batch or document feed"
        if not issubclass(cls, CsvItemExporter):  # a CSV's header is read from its first write
            try:
                self._framing = probe_framing(self._crawler, cls, options)
            except Exception as exc:  # a subclass that cannot write to memory
                return f"an exporter that failed to write a test item to memory ({exc!r})"
        return None

    def open(self, spider: Spider) -> IO[bytes]:
        """The file the exporter writes: a durable output while the stage is worked on, else
        Scrapy's own file (append-only when the stage is not worked on, so committed items
        are never emptied; nothing at all for a file the stage wrote)."""
        ext = _extension(self._crawler) if self._crawler is not None else None
        if self.unwritable:
            return io.BytesIO()
        if ext is not None and ext.skipping_completed:
            # A completed stage run again crawls nothing: the file is not even opened
            # (no truncation, no header, no empty JSON array appended).
            return io.BytesIO()
        if ext is not None and not ext.active:
            # A feed opened after the checkpoint closed (FEED_STORE_EMPTY): never empty what
            # earlier runs committed, never add a second document to a file of the stage.
            if ext.outputs is not None and ext.outputs.wrote(self.path):
                return io.BytesIO()
            self.write_mode = "ab"
        if ext is None or not ext.active:
            return super().open(spider)
        why = self.not_durable(ext)
        if why is not None:
            if ext.outputs is not None:
                ext.outputs.unsafe[self.path] = why
            ext.warn_once(f"feed:{why}", f"Feed {self.path!r} uses {why}, which scrapy-checkpoint "
                          f"cannot make crash-safe: as in plain Scrapy, a crash can lose or "
                          f"repeat its items.")
            return super().open(spider)
        assert ext.outputs is not None
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        options = self._feed_options
        cls = exporter_class(self._crawler, self._format or "")
        assert cls is not None
        is_csv = issubclass(cls, CsvItemExporter)
        header = is_csv and bool(options.get("item_export_kwargs", {}).get(
            "include_headers_line", True))
        framing = self._framing
        if header:
            self._fix_csv_fields(ext)
        overwrite = self.write_mode == "wb"
        if self.batches is not None:
            feed, size, path_of = self.batches
            batched = BatchedOutput(ext.outputs, feed=feed, size=size, path_of=path_of,
                                    overwrite=overwrite, header=header, framing=framing)
            ext.outputs.add(batched)
            return cast("IO[bytes]", batched)
        output = ext.outputs.open(self.path, overwrite=overwrite, has_header=header,
                                  framing=framing)
        return cast("IO[bytes]", output)  # it implements the file methods exporters use

    def _fix_csv_fields(self, ext: CheckpointExtension) -> None:
        """A CSV file that earlier runs of the stage began keeps its columns: the exporter
        gets the header's fields (as ``fields_to_export``), so values stay in their columns."""
        assert ext.outputs is not None
        files: list[tuple[str, list[Any]]]
        if self.batches is not None:
            files = [f for _, f in sorted(ext.outputs.batch_files(self.batches[0]).items())]
        else:
            entry = ext.outputs.recorded(self.path)
            files = [(os.path.abspath(self.path), entry)] if entry is not None else []
        for path, entry in files:
            base, length = entry[0], entry[1]
            if length <= base:
                continue
            with open(path, "rb") as f:
                f.seek(base)
                line = f.readline()
            if line.endswith(b"\n") and base + len(line) <= length:
                columns = csv_header_fields(line, self._feed_options)
                configured = self._feed_options.get("fields")
                if configured:
                    self._keep_columns(ext, columns, configured)
                else:
                    self.fixed_fields = columns
                    self._feed_options["fields"] = list(columns)
            return

    def _keep_columns(self, ext: CheckpointExtension, columns: list[str],
                      configured: Any) -> None:
        """``FEED_EXPORT_FIELDS`` (a list of fields, or a dict of field -> column) given for
        a CSV file whose header earlier runs wrote: if they name other columns, the header's
        are kept (the values of each row stay under their column), with one warning."""
        if isinstance(configured, dict):
            by_column = {str(column): field for field, column in configured.items()}
            if list(by_column) == columns:
                return
            kept: Any = ({by_column[c]: c for c in columns}
                         if all(c in by_column for c in columns) else None)
        else:
            if [str(f) for f in configured] == columns:
                return
            kept = list(columns)
        if kept is not None:
            self._feed_options["fields"] = kept
            outcome = ("the header's columns are kept: fields it lacks are not exported, and "
                       "columns your setting no longer names stay empty")
        else:
            outcome = "its rows may not fit the header"
        ext.warn_once(f"csv-export-fields:{self.path}", (
            f"Feed {self.path!r}: FEED_EXPORT_FIELDS names the columns "
            f"{list(configured.values() if isinstance(configured, dict) else configured)}, but "
            f"the CSV header written by earlier runs of this stage has {columns}; {outcome}. "
            f"To change the columns, start the stage over (CHECKPOINT_RESET=True) with -O."))


def _unwritable_feed(path: str, exc: OSError) -> CheckpointWriteError:
    """The error a crawl stops with when the local feed ``path`` cannot be opened."""
    return CheckpointWriteError(
        f"Feed {path!r} cannot be written ({exc.strerror or exc}). The request whose item it "
        f"could not take is not recorded done, nor is anything after it: make the file (and "
        f"its directory) writable for this user, or give the feed another path, then run the "
        f"same command again to resume.")


class _Batch:
    """What Scrapy's ``_get_uri_params`` reads of a slot: the batch id before the next."""

    def __init__(self, batch_id: int) -> None:
        self.batch_id = batch_id


class CheckpointFeedExporter(FeedExporter):
    """Scrapy's FeedExporter, telling the outputs which request each item came from, and
    cutting the batches of batch feeds when items are committed."""

    _checkpoint: CheckpointExtension | None = None

    def open_spider(self, spider: Spider) -> None:
        """Open the feeds (none when the stage is completed and this run crawls nothing);
        warn once for each feed that cannot be made crash-safe."""
        ext = self._checkpoint = _extension(self.crawler)
        self._item = 0
        self._unwarned_csv: list[Any] = []
        if ext is not None and ext.skipping_completed:
            return  # no slot: no feed file is touched
        super().open_spider(spider)
        if ext is None or not ext.active:
            return
        for slot in self.slots:
            storage = slot.storage
            if not isinstance(storage, CheckpointFeedStorage):
                if ext.outputs is not None:
                    ext.outputs.unsafe[str(slot.uri)] = "a storage that is not a local file"
                ext.warn_once(f"storage:{slot.uri}", f"Feed {slot.uri!r} is not a local file, so "
                              f"scrapy-checkpoint cannot make it crash-safe: as in plain Scrapy, "
                              f"a crash can lose or repeat its items.")
                continue
            options = self.feeds[slot.uri_template]
            size = options.get("batch_item_count")
            if size and storage.not_durable(ext) is None:
                storage.batches = (slot.uri_template, int(size),
                                   partial(self.batch_path, spider, slot.uri_template))
                options["batch_item_count"] = 0  # batches are cut at commit (see .batches)

    def batch_path(self, spider: Spider, uri_template: str, batch_id: int) -> str:
        """The file of batch ``batch_id`` of the feed ``uri_template``, as Scrapy names it
        (``%(batch_id)d``, ``%(batch_time)s``, the feed's ``uri_params``)."""
        options = self.feeds[uri_template]
        # Scrapy's own (private) helper, so user uri_params functions see what they expect.
        params = self._get_uri_params(spider, options["uri_params"],
                                      cast("Any", _Batch(batch_id - 1)))
        uri = apply_uri_params(uri_template, params)
        return file_uri_to_path(uri) if uri.startswith("file:") else uri

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
        for slot in self.slots:
            # Started outside the item: what the exporter writes first is its opening.
            if (slot.exporter is None and isinstance(slot.storage, CheckpointFeedStorage)
                    and slot.filter.accepts(item)):
                try:
                    slot.start_exporting()
                except OSError as exc:  # the feed cannot be opened: nothing more is recorded
                    slot.storage.unwritable = True
                    ext.stop(_unwritable_feed(slot.storage.path, exc))
                    return
                except CheckpointError as exc:  # e.g. a file of the checkpoint: refused
                    slot.storage.unwritable = True
                    ext.stop(exc)
                    return
                if slot.storage.fixed_fields is not None:
                    self._unwarned_csv.append(slot)
        if self._unwarned_csv:
            self._warn_dropped_fields(ext, item)
        unit = frontier.unit_of(response)
        self._item += 1
        previous, router.current, router.item = router.current, unit, self._item
        try:
            super().item_scraped(item, spider)
        except CheckpointError as exc:  # a feed's start could not be journaled (full disk)
            ext.stop(exc)
        except Exception as exc:  # the exporter cannot write the item: counted, then as in
            if ext.totals is not None:  # plain Scrapy (logged by the signal's dispatcher)
                ext.totals.feed_error(response, exc)
            raise
        finally:
            router.current, router.item = previous, None
            if unit is None:
                outputs.release(None)
                if ext.deliveries is not None:  # an item of start(): its bytes are out
                    ext.deliveries.start_written(START_ITEM.get())

    def _warn_dropped_fields(self, ext: CheckpointExtension, item: Any) -> None:
        """One warning per CSV feed whose columns earlier runs fixed, for fields they lack."""
        names = ItemAdapter(item).field_names()
        for slot in list(self._unwarned_csv):
            fixed = slot.storage.fixed_fields
            extra = [name for name in names if name not in fixed]
            if extra:
                self._unwarned_csv.remove(slot)
                ext.warn_once(f"csv-fields:{slot.uri}", (
                    f"Feed {slot.uri!r}: the items have field(s) {extra} that the CSV header "
                    f"written by earlier runs of this stage lacks ({fixed}); as plain Scrapy "
                    f"does when a later item has more fields than the first, they are not "
                    f"exported. To export them, start the stage over (CHECKPOINT_RESET=True) "
                    f"with FEED_EXPORT_FIELDS listing every field."))
