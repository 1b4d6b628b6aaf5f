from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule

from fidelity_shop.items import product_from


class CatalogSpider(CrawlSpider):
    """The whole catalog by rules: categories and their next pages are followed, product
    pages parsed (their related-product links are followed too, mostly duplicates).

    ``-a rules=`` changes the rules, as an edit of the spider between two runs would:
    ``reversed`` (the same rules in the other order), ``categories`` (the product rule
    removed), ``reviews`` (a rule added first, parsing the reviews pages)."""

    name = "catalog"
    rules = (
        Rule(LinkExtractor(allow=r"/category/\d+(\?page=\d+)?$")),
        Rule(LinkExtractor(allow=r"/product/\d+$"), callback="parse_product", follow=True),
    )

    def __init__(self, base: str = "", rules: str = "", **kwargs: Any) -> None:
        if rules == "reversed":
            self.rules = tuple(reversed(type(self).rules))
        elif rules == "categories":
            self.rules = type(self).rules[:1]
        elif rules == "reviews":
            self.rules = (Rule(LinkExtractor(allow=r"/product/\d+/reviews$"), callback="parse_reviews"),
                          *type(self).rules)
        super().__init__(**kwargs)
        self.start_urls = [f"{base}/"]

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield product_from(response)

    def parse_reviews(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"reviews": response.url, "rating": response.css("span.rating::text").get()}
