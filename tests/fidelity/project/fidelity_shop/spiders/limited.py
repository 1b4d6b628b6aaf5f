from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy


class LimitedSpider(scrapy.Spider):
    """Every page of the shop, one item a page, one request at a time, until
    ``CLOSESPIDER_ITEMCOUNT`` (set here, 12) closes the spider: Scrapy then finishes the
    request in flight, whose item is the 13th."""

    name = "limited"
    custom_settings = {"CONCURRENT_REQUESTS": 1, "CLOSESPIDER_ITEMCOUNT": 12}

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [f"{base}/"]

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"path": response.url.split("/", 3)[3], "title": response.css("title::text").get()}
        yield from response.follow_all(css="a", callback=self.parse)
