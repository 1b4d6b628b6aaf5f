from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy


class SiteSpider(scrapy.Spider):
    """Follows every link of the test site; one item per page.

    ``-a base=http://127.0.0.1:PORT``; ``-a fail_in_callback=7`` raises in page 7's callback;
    ``-a unserializable=1`` puts an object that JSON cannot hold in the children's meta;
    ``-a extra=1`` gives every item one more field, ``extra``, after ``page``.
    """

    name = "site"

    def __init__(self, base: str = "", fail_in_callback: str = "", unserializable: str = "",
                 extra: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = bool(extra)
        self.unserializable = bool(unserializable)
        self.base = base
        self.fail_in_callback = {int(x) for x in fail_in_callback.split(",") if x}

    async def start(self) -> AsyncIterator[Any]:
        # Without dont_filter: with it, plain Scrapy fetches page 0 twice (every page links
        # to it, and the dupefilter never sees a dont_filter request); so does the add-on.
        yield scrapy.Request(f"{self.base}/p/0", callback=self.parse)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.css("h1::text").get().split()[1])
        if page in self.fail_in_callback:
            raise ValueError(f"callback failed on page {page}")
        item: dict[str, Any] = {"page": page}
        if self.extra:
            item["extra"] = f"x{page}"
        yield {**item, "title": response.css("title::text").get(), "url": response.url}
        meta = {"handle": object()} if self.unserializable else {}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse, meta=meta)
