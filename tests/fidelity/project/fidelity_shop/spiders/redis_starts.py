"""A scrapy-redis ``RedisSpider``: its start URLs are popped from a Redis list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy_redis.spiders import RedisSpider

from fidelity_shop.items import product_from


class RedisStartsSpider(RedisSpider):
    name = "redis_starts"
    custom_settings = {"MAX_IDLE_TIME_BEFORE_CLOSE": 1}

    def __init__(self, base: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield product_from(response)
        yield response.follow(response.css("a.reviews::attr(href)").get(), self.parse_reviews,
                              cb_kwargs={"url": response.url})

    def parse_reviews(self, response: scrapy.http.Response, url: str) -> Iterator[Any]:
        yield {"reviews_of": url, "rating": response.css("span.rating::text").get()}
