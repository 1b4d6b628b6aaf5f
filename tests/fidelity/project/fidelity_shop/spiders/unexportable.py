"""A spider some of whose items a JSON feed cannot hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy


class UnexportableSpider(scrapy.Spider):
    """Every third product's item holds a complex number, which the JSON lines exporter cannot write."""

    name = "unexportable"

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> Any:
        for n in range(12):
            yield scrapy.Request(f"{self.base}/product/{n}")

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        n = int(response.url.rsplit("/", 1)[1])
        yield {"id": n, "tags": 1j if n % 3 == 0 else ["x"]}
