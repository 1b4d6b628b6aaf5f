"""A user-style pipeline: every item becomes a row of a SQLite table, committed at once.

A plain ``INSERT`` with no key, so a repeated item is a repeated row and the suite can
count them. ``-s FIDELITY_DB=PATH`` names the database; without it the pipeline is off.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from itemadapter import ItemAdapter
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured


class SQLitePipeline:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> SQLitePipeline:
        path = crawler.settings.get("FIDELITY_DB")
        if not path:
            raise NotConfigured("FIDELITY_DB is not set")
        return cls(path)

    def open_spider(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: a row per item
        self.db.execute("CREATE TABLE IF NOT EXISTS items (kind TEXT NOT NULL, data TEXT NOT NULL)")

    def close_spider(self) -> None:
        if self.db is not None:
            self.db.close()

    def process_item(self, item: Any) -> Any:
        assert self.db is not None
        data = json.dumps(ItemAdapter(item).asdict(), sort_keys=True, default=str)
        self.db.execute("INSERT INTO items (kind, data) VALUES (?, ?)", (type(item).__name__, data))
        return item
