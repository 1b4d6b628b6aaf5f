"""A single-file spider with ``start_urls`` for ``scrapy runspider`` (base URL via -a)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy


class StartUrlsSpider(scrapy.Spider):
    name = "start_urls_site"
    custom_settings = {
        "ADDONS": {"scrapy_checkpoint.Addon": 100},
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "CONCURRENT_REQUESTS": 8,
        "RETRY_ENABLED": False,
    }

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_urls = [f"{base}/p/0"]

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"page": int(response.css("h1::text").get().split()[1]), "url": response.url}
        yield from response.follow_all(css="a", callback=self.parse)
