"""Spiders that pass objects to their callbacks in ``cb_kwargs``: items, dataclass and
attrs objects, nested containers, subclasses of dict and tuple, enum members. A resumed
crawl must give each callback what plain Scrapy gives it, with its type."""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any, NamedTuple

import attrs
import scrapy

from fidelity_shop.items import ProductItem, product_from


@dataclasses.dataclass
class Seen:
    id: int
    name: str
    tags: list[str] = dataclasses.field(default_factory=list)


@attrs.define
class Price:
    amount: Decimal
    currency: str = "EUR"


def describe(value: Any) -> Any:
    """A value with the name of its type, nested: what a callback received."""
    if isinstance(value, dict):
        return {"dict": {str(k): describe(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return {type(value).__name__: [describe(v) for v in items]}
    if isinstance(value, scrapy.Item):
        return {type(value).__name__: {k: describe(v) for k, v in sorted(value.items())}}
    if dataclasses.is_dataclass(value) or attrs.has(type(value)):
        fields = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else attrs.asdict(value)
        return {type(value).__name__: describe(fields)}
    return {type(value).__name__: str(value)}


class KwObjectsSpider(scrapy.Spider):
    """The product page passes an Item, a dataclass, an attrs object and nested containers
    (tuples, a set, Decimals, an Item in a list) in ``cb_kwargs`` to the reviews page."""

    name = "kw_objects"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        for c in range(4):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_category)

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        for href in response.css("li.product a::attr(href)").getall():
            yield response.follow(href, callback=self.parse_product)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_category)

    def parse_product(self, response: scrapy.http.Response) -> Iterator[Any]:
        item = product_from(response)
        kwargs = {
            "item": item,
            "seen": Seen(item["id"], item["name"], ["a", "b"]),
            "price": Price(item["price"]),
            "nested": {"pair": (item["id"], "x"), "tags": {"new", "sale"},
                       "items": [ProductItem(id=item["id"])], 3: Decimal("1.5")},
        }
        yield response.follow(response.css("a.reviews::attr(href)").get(),
                              callback=self.parse_reviews, cb_kwargs=kwargs)

    def parse_reviews(self, response: scrapy.http.Response, **kwargs: Any) -> Iterator[Any]:
        yield {"path": response.url.split("/", 3)[3], "received": describe(kwargs)}


class Point(NamedTuple):
    x: int
    y: str


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 2


class KwContainersSpider(scrapy.Spider):
    """Passes containers of subclasses of JSON's types in ``cb_kwargs`` (a defaultdict, an
    OrderedDict, a Counter, a named tuple, enum members) and uses what the subclass adds."""

    name = "kw_containers"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        for c in range(4):
            yield scrapy.Request(f"{self.base}/category/{c}", callback=self.parse_category)

    def parse_category(self, response: scrapy.http.Response) -> Iterator[Any]:
        for href in response.css("li.product a::attr(href)").getall():
            n = int(href.rsplit("/", 1)[1])
            kwargs = {"acc": collections.defaultdict(list), "order": collections.OrderedDict(b=1, a=2),
                      "counts": collections.Counter(seen=1), "point": Point(n, "p"),
                      "size": Size(1 + n % 2)}
            yield response.follow(href, callback=self.parse_product, cb_kwargs=kwargs)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_category)

    def parse_product(self, response: scrapy.http.Response, acc: Any, order: Any, counts: Any,
                      point: Any, size: Any) -> Iterator[Any]:
        acc["prices"].append(response.css("span.price::text").get())
        counts["missing"] += 1
        order.move_to_end("b")
        yield {"id": point.x, "y": point.y, "acc": dict(acc), "counts": dict(counts),
               "order": list(order), "size": size.name,
               "types": [type(v).__name__ for v in (acc, order, counts, point, size)]}
