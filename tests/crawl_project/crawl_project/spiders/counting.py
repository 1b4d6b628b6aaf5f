from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy


class CountingSpider(scrapy.Spider):
    """Follows every link of the test site and counts in ``self.state``.

    Per page it adds one to ``state["pages"]`` and the page number to ``state["sum"]``;
    the first page of each category (page % 7) seen yields ``{"category": c}``: an item
    derived from the state, yielded again if the state were lost, missing if a change
    were kept for a page that is then fetched again. At close the state is written to
    ``-a state_out=PATH``. ``-a bad=1`` stores a set in the state. ``-a pause=0.01``: each
    callback waits that long (s) after changing the state, before its page is done.
    """

    name = "counting"

    def __init__(self, base: str = "", state_out: str = "", bad: str = "", pause: str = "0",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.state_out, self.bad = base, state_out, bool(bad)
        self.pause = float(pause)

    async def start(self) -> AsyncIterator[Any]:
        # Filtered like its links: plain Scrapy fetches page 0 once.
        yield scrapy.Request(f"{self.base}/p/0", callback=self.parse)

    async def parse(self, response: scrapy.http.Response) -> AsyncIterator[Any]:
        page = int(response.css("h1::text").get().split()[1])
        state = self.state
        state["pages"] = state.get("pages", 0) + 1
        state["sum"] = state.get("sum", 0) + page
        categories = state.setdefault("categories", [])
        if page % 7 not in categories:
            categories.append(page % 7)
            yield {"category": page % 7}
        if self.bad and page == 5:
            state["seen"] = {page}
        if self.pause:
            await asyncio.sleep(self.pause)
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)

    def closed(self, reason: str) -> None:
        if self.state_out:
            with open(self.state_out, "w") as f:
                json.dump({"reason": reason, "state": self.state}, f, default=sorted)


class PagesSpider(scrapy.Spider):
    """One item per page of the test site, its start request filtered like its links (plain
    Scrapy fetches every page once)."""

    name = "pages"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/p/0", callback=self.parse)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"page": int(response.css("h1::text").get().split()[1])}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)
