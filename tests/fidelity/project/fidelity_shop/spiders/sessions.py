from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy

from fidelity_shop.spiders.login import order_item


class SessionsSpider(scrapy.Spider):
    """Logs in as several users at once, one cookie jar each (``meta["cookiejar"]``), and
    reads the same order pages under every session: the same URLs, so ``dont_filter=True``
    (the redirect after the login POST included); the pages differ by who is logged in."""

    name = "sessions"

    def __init__(self, base: str = "", users: str = "alice,bob,carol", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.users = base, users.split(",")

    async def start(self) -> AsyncIterator[Any]:
        for jar, user in enumerate(self.users):
            yield scrapy.Request(f"{self.base}/login", callback=self.login, dont_filter=True,
                                 meta={"cookiejar": jar}, cb_kwargs={"user": user})

    def login(self, response: scrapy.http.Response, user: str) -> Iterator[Any]:
        yield scrapy.FormRequest.from_response(
            response, formid="login", formdata={"username": user, "password": "secret"},
            callback=self.parse_orders, dont_filter=True,
            meta={"cookiejar": response.meta["cookiejar"]})

    def parse_orders(self, response: scrapy.http.Response) -> Iterator[Any]:
        meta = {"cookiejar": response.meta["cookiejar"]}
        for href in response.css("a.order::attr(href)").getall():
            yield response.follow(href, callback=self.parse_order, meta=meta, dont_filter=True)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_orders, meta=meta, dont_filter=True)

    def parse_order(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield order_item(response)
