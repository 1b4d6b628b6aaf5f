from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy import signals


class SlowReceiver:
    """An extension with an async ``item_scraped`` receiver: with ``-a wait=1`` it never
    ends for the items of ``start()`` (until the crawl is killed)."""

    def __init__(self, crawler: Any) -> None:
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)

    @classmethod
    def from_crawler(cls, crawler: Any) -> SlowReceiver:
        return cls(crawler)

    async def item_scraped(self, item: Any, response: Any, spider: scrapy.Spider) -> None:
        if getattr(spider, "wait", False) and "start" in item:
            self.never = asyncio.Event()  # kept: a task waiting on it is kept with it
            await self.never.wait()  # never set


class StartWaitingSpider(scrapy.Spider):
    """``start()`` yields an item, then two products' requests. The item is in the feed (the
    feed exporter's receiver wrote it) while another receiver of its ``item_scraped`` still
    runs; meanwhile the product's request is done and committed."""

    name = "start_waiting"
    custom_settings = {"EXTENSIONS": {"fidelity_shop.spiders.start_waiting.SlowReceiver": 500}}

    def __init__(self, base: str = "", wait: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.wait = base, bool(wait)

    async def start(self) -> AsyncIterator[Any]:
        yield {"start": 0}
        yield scrapy.Request(f"{self.base}/product/0", callback=self.parse_product)
        yield scrapy.Request(f"{self.base}/product/1", callback=self.parse_product)

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"product": response.url.rsplit("/", 1)[1]}
