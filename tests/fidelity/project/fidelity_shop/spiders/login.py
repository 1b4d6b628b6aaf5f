from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import scrapy

from fidelity_shop.items import OrderItem


def order_item(response: scrapy.http.Response) -> OrderItem:
    """An order page's item; on the login page (no session) its fields are None."""
    order = response.css("h1::attr(data-order)").get()
    total = response.css("span.total::text").get()
    return OrderItem(user=response.css("p.user::text").get(),
                     order=None if order is None else int(order),
                     total=None if total is None else int(total),
                     path=urlsplit(response.url).path)


class LoginSpider(scrapy.Spider):
    """Logs in through the login form (its CSRF token with it, FormRequest.from_response),
    then reads every order of the account, behind the session cookie.

    ``-a setup=1`` marks the login page and the login as setup requests of the add-on
    (``meta["checkpoint_setup"]``: made again by every run, before resumed requests); plain
    Scrapy ignores the key."""

    name = "login"

    def __init__(self, base: str = "", user: str = "alice", setup: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.user = base, user
        self.setup = {"dont_filter": True, "meta": {"checkpoint_setup": True}} if setup else {}

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/login", callback=self.login, **self.setup)

    def login(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield scrapy.FormRequest.from_response(
            response, formid="login", formdata={"username": self.user, "password": "secret"},
            callback=self.parse_orders, **self.setup)

    def parse_orders(self, response: scrapy.http.Response) -> Iterator[Any]:
        for href in response.css("a.order::attr(href)").getall():
            yield response.follow(href, callback=self.parse_order)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, callback=self.parse_orders)

    def parse_order(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield order_item(response)
