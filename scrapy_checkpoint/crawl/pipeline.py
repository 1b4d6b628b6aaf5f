"""CheckpointItemPipeline: the stage's items, tracked from the item pipelines' place.

The add-on puts it in ``ITEM_PIPELINES`` at order :data:`ORDER`; without the add-on:
``ITEM_PIPELINES = {"scrapy_checkpoint.CheckpointItemPipeline": 0}``. It turns on the item
ids of :func:`~.item_ids.item_id` for the crawl, and the counts of items per stage.

It has no ``process_item``: it costs the pipelines nothing per item, and its order
changes nothing. Items are counted by outcome on Scrapy's ``item_scraped``,
``item_dropped`` and ``item_error`` signals (:class:`~.stage_totals.StageTotals`), which
carry the final outcome of every item whatever the pipelines' order; a ``process_item``
would only see the items that reach it, not those an earlier pipeline drops, nor know
whether a later one drops the items it passes on. The ids are kept by
:class:`~.item_ids.ItemIds`, fed by the engine hooks from the moment a callback yields an
item to the end of its processing.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.exceptions import NotConfigured

from .extension import CheckpointExtension
from .item_ids import ItemIds

logger = logging.getLogger("scrapy_checkpoint")

#: The pipeline's order in ``ITEM_PIPELINES`` when the add-on installs it (any order works).
ORDER = 0


class CheckpointItemPipeline:
    """Turns on :func:`~scrapy_checkpoint.item_id` and the item counts for its crawl.

    Build it with :meth:`from_crawler`, which raises ``NotConfigured`` when the crawl has
    no open checkpoint (``CHECKPOINT_ENABLED = False``, a command that does not crawl, a
    completed stage skipped).
    """

    def __init__(self, ids: ItemIds) -> None:
        self.ids = ids

    @classmethod
    def from_crawler(cls, crawler: Any) -> CheckpointItemPipeline:
        """Attach an :class:`~.item_ids.ItemIds` to the crawl's checkpoint extension (built
        if needed, as the middleware does)."""
        ext = CheckpointExtension.of(crawler) or CheckpointExtension.from_crawler(crawler)
        if not ext.active:  # said by the extension when it matters (a completed stage)
            # Without a message: Scrapy logs NotConfigured's message as a WARNING ("Disabled
            # <class ...CheckpointItemPipeline>: ..."), alarming on these normal paths.
            logger.debug("CheckpointItemPipeline is off: the crawl has no open checkpoint.")
            raise NotConfigured
        ids = ext.item_ids = ItemIds(crawler.request_fingerprinter.fingerprint)
        return cls(ids)

    def open_spider(self) -> None:
        """Make the crawl's item ids visible to ``item_id()``."""
        self.ids.open()

    def close_spider(self) -> None:
        """Forget the crawl's items."""
        self.ids.close()


__all__ = ["ORDER", "CheckpointItemPipeline"]
