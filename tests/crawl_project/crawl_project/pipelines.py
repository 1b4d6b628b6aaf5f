"""A user's own database pipeline made exactly-once by ``item_id`` (docs/items.md).

:class:`ItemIdSQLitePipeline` (``-s ITEMS_DB=PATH``) inserts each item of the site spider
into the SQLite table ``pages`` keyed by ``item_id(item)``, ``ON CONFLICT DO NOTHING``, and
counts every insert it tried in the table ``tries``. Without ``ITEMS_DB`` it is not enabled.
:class:`FileLinesPipeline` (``-s ITEMS_FILE=PATH``) appends each page to a file.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from scrapy.exceptions import NotConfigured

from scrapy_checkpoint import item_id


class ItemIdSQLitePipeline:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> ItemIdSQLitePipeline:
        path = crawler.settings.get("ITEMS_DB")
        if not path:
            raise NotConfigured("ITEMS_DB is not set")
        return cls(path)

    def open_spider(self) -> None:
        self.db = sqlite3.connect(self.path)
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS pages "
                            "(item_id TEXT PRIMARY KEY, page INTEGER, title TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS tries (item_id TEXT)")

    def process_item(self, item: Any) -> Any:
        assert self.db is not None
        key = item_id(item)
        with self.db:  # one transaction, committed before the item goes on
            self.db.execute("INSERT INTO pages (item_id, page, title) VALUES (?, ?, ?) "
                            "ON CONFLICT (item_id) DO NOTHING",
                            (key, item["page"], item["title"]))
            self.db.execute("INSERT INTO tries (item_id) VALUES (?)", (key,))
        return item

    def close_spider(self) -> None:
        if self.db is not None:
            self.db.close()


class FileLinesPipeline:
    """``-s ITEMS_FILE=PATH``: appends each item's page as one line of ``PATH`` (a user's
    own file output, with the ``OSError`` of a full disk as it comes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_crawler(cls, crawler: Any) -> FileLinesPipeline:
        path = crawler.settings.get("ITEMS_FILE")
        if not path:
            raise NotConfigured("ITEMS_FILE is not set")
        return cls(path)

    def process_item(self, item: Any) -> Any:
        with open(self.path, "a") as f:
            f.write(f"{item['page']}{' ' * 200}\n")
        return item
