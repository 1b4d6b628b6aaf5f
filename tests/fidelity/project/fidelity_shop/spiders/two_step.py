from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy

from fidelity_shop.items import ProductItem, product_from


class TwoStepSpider(scrapy.Spider):
    """A product's item is built on two pages: the product page fills half of it and passes
    it in ``cb_kwargs`` to the reviews page's callback, which completes and yields it."""

    name = "two_step"

    def __init__(self, base: str = "", categories: str = "4", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.categories = base, int(categories)

    async def start(self) -> AsyncIterator[Any]:
        for c in range(self.categories):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_category)

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        for href in response.css("li.product a::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_category)

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        item = product_from(response)
        yield response.follow(response.css("a.reviews::attr(href)").get(), callback=self.parse_reviews,
                              cb_kwargs={"item": item})

    def parse_reviews(self, response: scrapy.http.Response, item: ProductItem) -> Iterator[Any]:
        item["rating"] = int(response.css("span.rating::text").get())
        item["reviews"] = int(response.css("span.count::text").get())
        yield item
