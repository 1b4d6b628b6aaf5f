"""Old paths of the durable feed storage and exporter (now in :mod:`scrapy_checkpoint.crawl`),
kept for settings that name them (``FEED_STORAGES``, ``EXTENSIONS``)."""

from .crawl.feeds import CheckpointFeedExporter, CheckpointFeedStorage
from .crawl.outputs import DurableOutput

__all__ = ["CheckpointFeedExporter", "CheckpointFeedStorage", "DurableOutput"]
