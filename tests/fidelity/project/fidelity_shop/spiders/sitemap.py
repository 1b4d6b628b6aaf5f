from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.spiders import SitemapSpider

from fidelity_shop.items import product_from


class ShopSitemapSpider(SitemapSpider):
    """Every page the sitemap index leads to, by rule: products and categories."""

    name = "sitemap"
    sitemap_rules = [(r"/product/\d+$", "parse_product"), (r"/category/\d+$", "parse_category")]

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sitemap_urls = [f"{base}/sitemap_index.xml"]

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield product_from(response)

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"category": response.css("h1::text").get(),
               "products": len(response.css("li.product")),
               "path": urlsplit(response.url).path}
