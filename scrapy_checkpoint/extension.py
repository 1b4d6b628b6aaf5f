"""Old path of :class:`scrapy_checkpoint.crawl.extension.CheckpointExtension`, kept for
settings that name it (``EXTENSIONS``)."""

from .crawl.extension import CheckpointExtension

__all__ = ["CheckpointExtension"]
