from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import scrapy


class WaitingSpider(scrapy.Spider):
    """A callback changes ``spider.state`` (the home page's), and another callback is still
    running (the category page's: it yielded a product request, then waits) when the first
    item, the product's, opens the feed. ``-a wait=1``: it waits until the crawl is killed."""

    name = "waiting"

    def __init__(self, base: str = "", wait: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.wait = base, bool(wait)

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/", callback=self.parse)

    def parse(self, response: scrapy.http.Response) -> Any:
        self.state["home"] = self.state.get("home", 0) + 1
        yield scrapy.Request(f"{self.base}/category/0", callback=self.parse_category)

    async def parse_category(self, response: scrapy.http.Response) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/product/0", callback=self.parse_product)
        if self.wait:
            await asyncio.Event().wait()  # never set: running until the crawl is killed

    def parse_product(self, response: scrapy.http.Response) -> Any:
        yield {"product": response.url.rsplit("/", 1)[1]}

    def closed(self, reason: str) -> None:
        self.logger.info("Final spider.state: %s", dict(self.state))
