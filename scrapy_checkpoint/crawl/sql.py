"""SQLPipeline: items as rows of a SQLite or PostgreSQL table, each item once across crashes.

``ITEM_PIPELINES = {"scrapy_checkpoint.pipelines.SQLPipeline": 800}`` with
``CHECKPOINT_SQL_URL`` (``sqlite:///items.db``, ``postgresql+psycopg://user@host/db``).
Each row is ``(stage, item_id, data)``: the stage, :func:`~.item_ids.item_id` and the
item's fields as JSON (Scrapy's JSON encoder: dates, decimals and sets included), keyed by
``(stage, item_id)`` and inserted with ``ON CONFLICT DO NOTHING`` (:mod:`.sql_table`).

Why each item lands once: rows are buffered and written in one transaction per batch, at
the latest just before each checkpoint commit (a commit hook), so every item of a request
the checkpoint records done is in the table first. A crash loses only rows of requests
not recorded done; those requests are redone, and the rows written before the crash come
again with the same keys and are left as they were. Batches are also written when
``CHECKPOINT_SQL_BATCH_SIZE`` rows wait, every ``CHECKPOINT_SQL_FLUSH_INTERVAL`` seconds and
when the spider closes. The writes run on the crawl's thread.

A batch that cannot be written stops the crawl as a checkpoint write failure does: nothing
more is recorded done, and the next run redoes the requests whose rows were not written.
"""

from __future__ import annotations

import logging
from typing import Any

from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.serialize import ScrapyJSONEncoder

from ..errors import CheckpointWriteError, ConfigError
from .extension import CheckpointExtension
from .item_ids import item_id
from .start_errors import report

logger = logging.getLogger("scrapy_checkpoint")


class SQLPipeline:
    """Writes every item it is given as a row (see the module docstring).

    Build it with :meth:`from_crawler`. Its ``process_item`` raises
    :class:`~scrapy_checkpoint.UnknownItemError` for an item that is not the object the
    spider yielded (see :func:`~scrapy_checkpoint.item_id`).
    """

    def __init__(self, ext: CheckpointExtension, rows: Any, batch_size: int,
                 flush_interval: float) -> None:
        self.ext = ext
        #: The table (:class:`~.sql_table.SQLRows`).
        self.rows = rows
        self.stage = ext.stage
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer: list[dict[str, Any]] = []
        #: The error that stopped the writes (then every later write raises it again).
        self.failure: CheckpointWriteError | None = None
        self._loop: Any = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> SQLPipeline:
        """Open the table and hook the checkpoint's commits. Raises NotConfigured when the
        crawl skips a completed stage; ConfigError, logged once as one paragraph, when the
        checkpoint is off, ``CHECKPOINT_SQL_URL`` is not set, SQLAlchemy is missing, or the
        database cannot be reached or written."""
        ext = CheckpointExtension.of(crawler)
        if ext is None:
            try:
                ext = CheckpointExtension.from_crawler(crawler)
            except NotConfigured:
                ext = None  # the checkpoint is off: said below
        if ext is not None and ext.skipping_completed:
            raise NotConfigured("the stage is completed: nothing to write")
        try:
            return cls._build(crawler, ext)
        except ConfigError as exc:
            raise report(exc) from None

    @classmethod
    def _build(cls, crawler: Any, ext: CheckpointExtension | None) -> SQLPipeline:
        if ext is None or not ext.active or ext.cp is None:
            raise ConfigError(
                "SQLPipeline needs the checkpoint: its rows are keyed by item_id(). Enable it "
                "(ADDONS = {'scrapy_checkpoint.Addon': 100}, or CHECKPOINT_ENABLED = True with "
                "the extension), or remove SQLPipeline from ITEM_PIPELINES.")
        if ext.item_ids is None:
            raise ConfigError(
                "SQLPipeline keys its rows by item_id(), which CheckpointItemPipeline turns on: "
                "add 'scrapy_checkpoint.CheckpointItemPipeline': 0 to ITEM_PIPELINES (the add-on "
                "does it for you), or enable the add-on.")
        config = ext.config
        if not config.sql_url:
            raise ConfigError("SQLPipeline needs CHECKPOINT_SQL_URL, the database to write to: "
                              "e.g. sqlite:///items.db or postgresql+psycopg://user@host/dbname.")
        try:
            from .sql_table import SQLRows
        except ImportError as exc:
            raise ConfigError(f"SQLPipeline needs SQLAlchemy 2 ({exc}): pip install "
                              f"'scrapy-checkpoint[sql]'.") from None
        rows = SQLRows.connect(config.sql_url, config.sql_table,
                               ScrapyJSONEncoder().encode)
        pipeline = cls(ext, rows, config.sql_batch_size, config.sql_flush_interval)
        ext.cp.add_commit_hook(pipeline.before_commit)
        logger.info("Stage %s: SQLPipeline writes items to table %s of %s.", ext.stage,
                    config.sql_table, rows.location)
        return pipeline

    def open_spider(self) -> None:
        """Start the flush timer."""
        self._loop = create_looping_call(self._on_timer)
        self._loop.start(self.flush_interval, now=False)

    def process_item(self, item: Any) -> Any:
        """Buffer ``item``'s row; write the batch when it is full. Returns ``item``."""
        self.buffer.append({"stage": self.stage, "item_id": item_id(item),
                            "data": ItemAdapter(item).asdict()})
        if len(self.buffer) >= self.batch_size:
            self._flush_or_stop()
        return item

    def close_spider(self) -> None:
        """Write what is buffered, stop the timer, close the connections."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        try:
            self.flush()
        except CheckpointWriteError as exc:
            logger.error("Stage %s: %s", self.stage, exc)
        self.rows.close()

    def before_commit(self) -> None:
        """The checkpoint's commit hook: the rows of the requests about to be recorded done
        are written first. Raises CheckpointWriteError when they cannot be (the commit
        does not happen)."""
        self.flush()

    def flush(self) -> None:
        """Write the buffered rows in one transaction. Raises CheckpointWriteError (and
        keeps raising it) when the database refuses them."""
        if self.failure is not None:
            raise self.failure
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        from sqlalchemy.exc import SQLAlchemyError

        from .sql_table import reason

        try:
            self.rows.write(batch)
        except SQLAlchemyError as exc:
            self.failure = CheckpointWriteError(
                f"SQLPipeline could not write {len(batch)} row(s) to {self.rows.location}: "
                f"{reason(exc)}. The rows of every request recorded done are in the table; "
                f"fix the database, then run the same command again to resume.")
            raise self.failure from None

    def _flush_or_stop(self) -> None:
        try:
            self.flush()
        except CheckpointWriteError as exc:
            self.ext.stop(exc)

    def _on_timer(self) -> None:
        # A looping call whose function raises stops for good: never let it.
        try:
            self._flush_or_stop()
        except Exception:
            logger.exception("Stage %s: SQLPipeline's timer failed", self.stage)


__all__ = ["SQLPipeline"]
