from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.dupefilters import BaseDupeFilter

from fidelity_shop.items import product_from


class PathDupeFilter(BaseDupeFilter):
    """A dupefilter of the user's own: requests are duplicates when their URLs are but for a
    ``?ref=`` (naming the page the link was found on), which the request fingerprints the
    checkpoint keys its units by do not say."""

    def __init__(self) -> None:
        self.urls: set[str] = set()

    def request_seen(self, request: scrapy.Request) -> bool:
        url = request.url.split("?ref=")[0]
        if url in self.urls:
            return True
        self.urls.add(url)
        return False


class DupesSpider(scrapy.Spider):
    """Categories and their products, each product linked from several pages with a
    different ``?ref=`` (its category page and the related links of other products):
    ``DUPEFILTER_CLASS`` sees them as one page; one request at a time, so which link is
    fetched is the same in every crawl."""

    name = "dupes"
    custom_settings = {"DUPEFILTER_CLASS": "fidelity_shop.spiders.dupes.PathDupeFilter",
                       "CONCURRENT_REQUESTS": 1}

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> Any:
        for c in range(4):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_category)

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        ref = urlsplit(response.url).path.rsplit("/", 1)[1]
        for href in response.css("li.product a::attr(href)").getall():
            yield response.follow(f"{href}?ref=category-{ref}", callback=self.parse_product)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_category)

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        item = product_from(response)
        yield item
        for href in response.css("div.related a::attr(href)").getall():
            yield response.follow(f"{href}?ref=related-{item['id']}", callback=self.parse_product)
