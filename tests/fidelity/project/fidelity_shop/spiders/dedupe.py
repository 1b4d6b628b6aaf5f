"""Duplicates dropped by an item pipeline, as in Scrapy's documentation: the same product
is reached from its category's list (``/product/N?from=list``) and from related products
(``/product/N``), two requests, two items with one id; the pipeline drops the second."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy.exceptions import DropItem

from fidelity_shop.items import product_from


class DuplicatesPipeline:
    """The ids seen so far in memory (``-a in_state=1``: in ``spider.state``)."""

    def __init__(self) -> None:
        self.ids_seen: set[int] = set()

    def process_item(self, item: Any, spider: scrapy.Spider) -> Any:
        if getattr(spider, "in_state", False):
            seen = spider.state.setdefault("ids_seen", [])
            if item["id"] in seen:
                raise DropItem(f"product {item['id']} seen before")
            seen.append(item["id"])
            return item
        if item["id"] in self.ids_seen:
            raise DropItem(f"product {item['id']} seen before")
        self.ids_seen.add(item["id"])
        return item


class DedupeItemsSpider(scrapy.Spider):
    name = "dedupe_items"
    custom_settings = {"ITEM_PIPELINES": {
        "fidelity_shop.spiders.dedupe.DuplicatesPipeline": 100,
        "fidelity_shop.pipelines.SQLitePipeline": 300}}

    def __init__(self, base: str = "", in_state: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.in_state = base, bool(in_state)

    async def start(self) -> AsyncIterator[Any]:
        for c in range(4):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_category)

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        for href in response.css("li.product a::attr(href)").getall():
            yield response.follow(f"{href}?from=list", callback=self.parse_product)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_category)

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield product_from(response)
        yield from response.follow_all(css="div.related a", callback=self.parse_product)
