"""Spider shapes beside the main five: async callbacks, items in ``meta``, redirects,
meta refreshes, retries, errbacks, priorities, download slots, items of ``start()``."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import attrs
import scrapy
from scrapy.exceptions import DropItem
from scrapy.linkextractors import LinkExtractor
from scrapy.spiders import CrawlSpider, Rule

from fidelity_shop.items import N_PRODUCTS_HINT


@dataclasses.dataclass
class Product:
    id: int
    name: str
    price: str
    via: str


@attrs.define
class Rated:
    id: int
    rating: int = 0
    reviews: int = 0
    path: str = ""


class DropEveryFifth:
    """A user pipeline that drops the products whose id is a multiple of 5."""

    def process_item(self, item: Any) -> Any:
        if isinstance(item, (Product, Rated)) and item.id % 5 == 0:
            raise DropItem(f"product {item.id} is not wanted")
        return item


class AsyncMixSpider(scrapy.Spider):
    """An async ``start()`` generator, async callbacks with ``follow_all``, dataclass items,
    a pipeline dropping some of them, priorities."""

    name = "async_mix"
    custom_settings = {
        "ITEM_PIPELINES": {"fidelity_shop.spiders.variants.DropEveryFifth": 200,
                           "fidelity_shop.pipelines.SQLitePipeline": 300},
    }

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        for c in range(4):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_category,
                                 priority=c)

    async def parse_category(self, response: scrapy.http.Response) -> AsyncIterator[Any]:
        for request in response.follow_all(css="li.product a", callback=self.parse_product):
            yield request
        for request in response.follow_all(css="a.next", callback=self.parse_category, priority=5):
            yield request

    async def parse_product(self, response: scrapy.http.Response) -> AsyncIterator[Any]:
        yield Product(int(response.css("h1::attr(data-id)").get()), response.css("h1::text").get(),
                      response.css("span.price::text").get(), "async")



class DetoursSpider(scrapy.Spider):
    """Products reached by a 301 redirect, a meta refresh and a flaky path (retried), an
    attrs item carried in ``meta`` to the reviews page, errbacks turning 404s into items,
    and a ``DEPTH_LIMIT``."""

    name = "detours"
    custom_settings = {
        "RETRY_ENABLED": True,
        "RETRY_TIMES": 2,
        "DEPTH_LIMIT": 2,
        "METAREFRESH_ENABLED": True,
    }

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        for n in range(N_PRODUCTS_HINT):
            prefix = ("old", "refresh", "flaky")[n % 3]
            yield scrapy.Request(f"{self.base}/{prefix}/{n}", callback=self.parse_product,
                                 errback=self.failed)
        for n in (100, 101, 102):
            yield scrapy.Request(f"{self.base}/product/{n}", callback=self.parse_product,
                                 errback=self.failed)

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        n = int(response.css("h1::attr(data-id)").get())
        rated = Rated(n, path=urlsplit(response.url).path)
        yield response.follow(response.css("a.reviews::attr(href)").get(), callback=self.parse_reviews,
                              meta={"rated": rated, "redirects": len(response.meta.get("redirect_urls", []))})
        yield response.follow(response.css("a.category::attr(href)").get(), callback=self.parse_category)

    def parse_reviews(self, response: scrapy.http.Response) -> Iterator[Any]:
        rated: Rated = response.meta["rated"]
        rated.rating = int(response.css("span.rating::text").get())
        rated.reviews = int(response.css("span.count::text").get())
        yield rated

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        # depth 1: the category's first page, 2: its second, and the third is cut off.
        yield {"category": response.url.split("/", 3)[3], "depth": response.meta["depth"]}
        yield from response.follow_all(css="a.next", callback=self.parse_category)

    def failed(self, failure: Any) -> Iterator[Any]:
        yield {"failed": urlsplit(failure.request.url).path,
               "status": getattr(getattr(failure.value, "response", None), "status", None)}


class RulesSpider(CrawlSpider):
    """A CrawlSpider whose rules set priorities and download slots in ``process_request``,
    with an errback, and items passed on in ``cb_kwargs``."""

    name = "rules"
    rules = (
        Rule(LinkExtractor(allow=r"/category/\d+(\?page=\d+)?$"), process_request="per_slot"),
        Rule(LinkExtractor(allow=r"/product/\d+$"), callback="parse_product", follow=False,
             process_request="per_slot", errback="failed"),
    )

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [f"{base}/"]

    def per_slot(self, request: scrapy.Request, response: scrapy.http.Response) -> scrapy.Request:
        slot = "products" if "/product/" in request.url else "lists"
        return request.replace(priority=3 if slot == "products" else 0,
                               meta={**request.meta, "download_slot": slot})

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        item = {"id": int(response.css("h1::attr(data-id)").get()),
                "slot": response.meta.get("download_slot")}
        yield response.follow(response.css("a.reviews::attr(href)").get(), callback=self.parse_reviews,
                              cb_kwargs={"item": item, "price": response.css("span.price::text").get()})

    def parse_reviews(self, response: scrapy.http.Response, item: dict[str, Any],
                      price: str) -> Iterator[Any]:
        yield {**item, "price": price, "rating": response.css("span.rating::text").get()}

    def failed(self, failure: Any) -> Iterator[Any]:
        yield {"failed": failure.request.url}


class StartItemsSpider(scrapy.Spider):
    """``start()`` yields items between its requests, and an errback yields the next request:
    the products 0..35 and three pages that do not exist, each 404 followed by its product."""

    name = "start_items"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        for n in range(N_PRODUCTS_HINT):
            yield {"start": n}
            yield scrapy.Request(f"{self.base}/product/{n}", callback=self.parse_product)
        for n in (200, 201, 202):
            yield scrapy.Request(f"{self.base}/product/{n}", callback=self.parse_product,
                                 errback=self.missing, cb_kwargs={"instead": n - 200})

    def parse_product(self, response: scrapy.http.Response, instead: int = -1) -> Iterator[Any]:
        yield {"id": int(response.css("h1::attr(data-id)").get()), "instead": instead}

    def missing(self, failure: Any) -> Iterator[Any]:
        instead = failure.request.cb_kwargs["instead"]
        yield {"missing": failure.request.url.rsplit("/", 1)[1]}
        yield scrapy.Request(f"{self.base}/product/{instead}/reviews", callback=self.parse_reviews,
                             cb_kwargs={"instead": instead})

    def parse_reviews(self, response: scrapy.http.Response, instead: int) -> Iterator[Any]:
        yield {"reviews_of": instead, "rating": response.css("span.rating::text").get()}
