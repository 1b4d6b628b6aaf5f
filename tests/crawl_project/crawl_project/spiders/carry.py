from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import scrapy

try:
    import attr
except ImportError:  # attrs is optional: without it the meta carries no attrs item
    attr = None


class PageItem(scrapy.Item):
    page = scrapy.Field()
    parent = scrapy.Field()
    title = scrapy.Field()


@dataclasses.dataclass
class Crumb:
    page: int
    seen: date


if attr is not None:
    @attr.s(auto_attribs=True)
    class Note:
        text: str


def _note(text: str) -> Any:
    return Note(text) if attr is not None else None


class CarrySpider(scrapy.Spider):
    """Builds part of an item on a page and passes it to the child page's callback in
    ``cb_kwargs``, with a datetime, a Decimal, bytes, a set and a tuple; ``meta`` carries a
    dataclass, an attrs object and a date. Follows only links to higher pages, so every page
    is reached once, from its parent, and the output is the same in every run.

    ``-a base=http://127.0.0.1:PORT``.
    """

    name = "carry"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        yield self._request(f"{self.base}/p/0", 0, None, ())

    def _request(self, url: str, page: int, parent: int | None, path: tuple[int, ...]) -> Any:
        return scrapy.Request(
            url, callback=self.parse_child,
            cb_kwargs={"item": PageItem(page=page, parent=parent),
                       "found": datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=page),
                       "price": Decimal(page) / 100, "raw": f"p{page}".encode(),
                       "tags": {"a", f"t{page}"}, "path": (*path, page)},
            meta={"crumb": Crumb(page, date(2026, 1, 1) + timedelta(days=page)),
                  "note": _note(f"n{page}")})

    def parse_child(self, response: scrapy.http.Response, item: PageItem, found: datetime,
                    price: Decimal, raw: bytes, tags: set[str], path: tuple[int, ...]) -> Iterator[Any]:
        item["title"] = response.css("title::text").get()
        crumb, note = response.meta["crumb"], response.meta["note"]
        yield {
            **item,
            "found": found.isoformat(), "price": str(price), "raw": raw.decode(),
            "tags": sorted(tags), "path": list(path),
            "crumb": [crumb.page, crumb.seen.isoformat()],
            "note": None if note is None else note.text,
            "types": [type(v).__name__ for v in (item, found, price, raw, tags, path, crumb, note)],
        }
        page = item["page"]
        for href in response.css("a::attr(href)").getall():
            child = int(href.rsplit("/", 1)[1])
            if child > page:
                yield self._request(response.urljoin(href), child, page, path)
