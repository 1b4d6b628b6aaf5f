"""Ready item pipelines: ``ITEM_PIPELINES = {"scrapy_checkpoint.pipelines.SQLPipeline": 800}``.

:class:`SQLPipeline` writes each item once into a SQLite or PostgreSQL table, across
crashes (docs/items.md). A path for settings: the class lives in the Scrapy layer
(:mod:`scrapy_checkpoint.crawl.sql`), and importing this module imports Scrapy.
"""

from .crawl.sql import SQLPipeline

__all__ = ["SQLPipeline"]
