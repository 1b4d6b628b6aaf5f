"""Pagination by a cursor kept in ``spider.state``: each category's next page is the page
its cursor says, and the items carry the cursor's value."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy


class CursorSpider(scrapy.Spider):
    name = "cursor"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> Any:
        if not hasattr(self, "state"):  # plain Scrapy gives a state only with JOBDIR
            self.state = {}
        self.state.setdefault("cursor", {})
        for c in range(4):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_page,
                                 cb_kwargs={"c": c})

    def parse_page(self, response: scrapy.http.Response, c: int) -> Iterator[Any]:
        cursor = self.state["cursor"]
        page = cursor.get(str(c), 0) + 1
        cursor[str(c)] = page
        self.state["pages"] = self.state.get("pages", 0) + 1
        for href in response.css("li.product a::attr(href)").getall():
            yield {"category": c, "page": page, "product": href}
        if response.css("a.next"):
            yield scrapy.Request(f"{self.base}/category/{c}?page={page + 1}",
                                 callback=self.parse_page, cb_kwargs={"c": c})
