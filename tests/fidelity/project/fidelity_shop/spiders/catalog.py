from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule

from fidelity_shop.items import product_from


class CatalogSpider(CrawlSpider):
    """The whole catalog by rules: categories and their next pages are followed, product
    pages parsed (their related-product links are followed too, mostly duplicates)."""

    name = "catalog"
    rules = (
        Rule(LinkExtractor(allow=r"/category/\d+(\?page=\d+)?$")),
        Rule(LinkExtractor(allow=r"/product/\d+$"), callback="parse_product", follow=True),
    )

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [f"{base}/"]

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield product_from(response)
