from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import scrapy

from fidelity_shop.spiders.login import order_item


class TokenLoginSpider(scrapy.Spider):
    """Logs in without the cookie middleware: the login's callback keeps the session id on
    the spider (``self.session``) and every later request sends it in its ``Cookie``
    header. ``-a setup=1`` marks the two login requests ``checkpoint_setup``."""

    name = "token_login"
    custom_settings = {"COOKIES_ENABLED": False}

    def __init__(self, base: str = "", setup: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.meta = {"checkpoint_setup": True} if setup else {}

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/login", callback=self.login_form, dont_filter=True,
                             meta=dict(self.meta))

    def login_form(self, response: scrapy.http.Response) -> Iterator[Any]:
        token = response.css("input[name=csrfmiddlewaretoken]::attr(value)").get()
        yield scrapy.FormRequest(
            f"{self.base}/login", formdata={"csrfmiddlewaretoken": token, "username": "alice",
                                            "password": "secret", "next": "/account"},
            headers={"Cookie": f"csrftoken={token}"}, callback=self.logged_in, dont_filter=True,
            meta={**self.meta, "dont_redirect": True, "handle_httpstatus_list": [302]})

    def logged_in(self, response: scrapy.http.Response) -> Iterator[Any]:
        cookie = response.headers.get("Set-Cookie", b"").decode()
        self.session = cookie.split(";")[0].split("=", 1)[1]
        yield scrapy.Request(f"{self.base}/account", headers={"Cookie": f"sessionid={self.session}"},
                             callback=self.parse_orders)

    def parse_orders(self, response: scrapy.http.Response) -> Iterator[Any]:
        headers = {"Cookie": f"sessionid={self.session}"}
        for href in response.css("a.order::attr(href)").getall():
            yield response.follow(href, headers=headers, callback=self.parse_order)
        next_page = response.css("a.next::attr(href)").get()
        if next_page:
            yield response.follow(next_page, headers=headers, callback=self.parse_orders)

    def parse_order(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield order_item(response)
