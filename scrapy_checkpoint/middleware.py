"""Old path of :class:`scrapy_checkpoint.crawl.middleware.CheckpointMiddleware`, kept for
settings that name it (``DOWNLOADER_MIDDLEWARES``)."""

from .crawl.middleware import CheckpointMiddleware

__all__ = ["CheckpointMiddleware"]
