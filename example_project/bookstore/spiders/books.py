from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy
from scrapy.http import Response


class BooksSpider(scrapy.Spider):
    """Crawls the bundled bookstore: categories -> listing pages -> books.

    ``scrapy crawl books -a base=http://127.0.0.1:PORT`` (run_demo.py serves the site).
    """

    name = "books"

    def __init__(self, base: str = "http://127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/", callback=self.parse)

    def parse(self, response: Response) -> Iterator[Any]:
        yield from response.follow_all(css="a.category", callback=self.parse_listing)

    def parse_listing(self, response: Response) -> Iterator[Any]:
        yield from response.follow_all(css="a.book", callback=self.parse_book)
        yield from response.follow_all(css="a.next", callback=self.parse_listing)

    def parse_book(self, response: Response) -> Iterator[Any]:
        yield {
            "id": int(response.url.rsplit("/", 1)[1].removesuffix(".html")),
            "title": response.css("h1::text").get(),
            "price": float(response.css("p.price::text").get()),
            "category": response.css("a.cat::text").get(),
            "url": response.url,
        }
        yield from response.follow_all(css="a.related", callback=self.parse_book)
        yield from response.follow_all(css="a.cat", callback=self.parse_listing)
