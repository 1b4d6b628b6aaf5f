"""Scrapy's counters over every run of a stage, and CLOSESPIDER_* limits that count them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest_twisted
import scrapy
from scrapy.crawler import Crawler

from scrapy_checkpoint import FileStore, Status, read_stage

from ...site import Site
from ..conftest import MakeCrawler

N_PAGES = 20


class PagesSpider(scrapy.Spider):
    """One item per page of the site, from page 0 (filtered like its links)."""

    name = "tree"

    def __init__(self, base: str, fail: frozenset[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.fail = base, fail

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/p/0")

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        if page in self.fail:
            raise ValueError(f"page {page}")
        yield {"page": page}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


ONE_AT_A_TIME = {"CONCURRENT_REQUESTS": 1, "CONCURRENT_REQUESTS_PER_DOMAIN": 1}


def _stats(crawler: Crawler) -> dict[str, Any]:
    assert crawler.stats is not None
    return crawler.stats.get_stats()


@pytest_twisted.inlineCallbacks
def test_a_limit_reached_by_the_stage_ends_the_next_run_at_once(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    first = make_crawler(PagesSpider, CLOSESPIDER_ITEMCOUNT=5, **ONE_AT_A_TIME)
    yield first.crawl(base=site.url)
    stats = _stats(first)
    assert stats["finish_reason"] == "closespider_itemcount"
    items = stats["item_scraped_count"]
    assert stats["checkpoint/stage/item_scraped_count"] == items
    view = read_stage(FileStore(tmp_path / "checkpoints"), "tree")
    assert view.state.status is Status.PAUSED
    assert view.totals["item_scraped_count"] == items
    assert view.totals["response_received_count"] == stats["response_received_count"]
    hits = site.total_hits

    second = make_crawler(PagesSpider, CLOSESPIDER_ITEMCOUNT=5, **ONE_AT_A_TIME)
    yield second.crawl(base=site.url)
    stats = _stats(second)
    assert stats["finish_reason"] == "closespider_itemcount"
    assert site.total_hits == hits
    assert stats["checkpoint/stage/item_scraped_count"] == items

    # A higher limit counts on from the stage's items, not from zero.
    third = make_crawler(PagesSpider, CLOSESPIDER_ITEMCOUNT=items + 3, **ONE_AT_A_TIME)
    yield third.crawl(base=site.url)
    stats = _stats(third)
    assert stats["finish_reason"] == "closespider_itemcount"
    assert stats["item_scraped_count"] >= 3
    assert stats["checkpoint/stage/item_scraped_count"] == items + stats["item_scraped_count"]
    assert stats["checkpoint/stage/item_scraped_count"] < N_PAGES


@pytest_twisted.inlineCallbacks
def test_stage_totals_count_every_run_and_per_status(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    site.fail = {7}
    first = make_crawler(PagesSpider, CLOSESPIDER_PAGECOUNT=6, **ONE_AT_A_TIME)
    yield first.crawl(base=site.url)
    assert _stats(first)["finish_reason"] == "closespider_pagecount"
    second = make_crawler(PagesSpider)
    yield second.crawl(base=site.url)
    stats = _stats(second)
    assert stats["finish_reason"] == "finished"
    assert stats["checkpoint/stage/response_received_count"] == N_PAGES
    assert stats["checkpoint/stage/response_status_count/500"] == 1
    assert stats["checkpoint/stage/response_status_count/200"] == N_PAGES - 1
    assert stats["checkpoint/stage/item_scraped_count"] == N_PAGES - 1
    assert stats["response_received_count"] < N_PAGES  # the run's own stats: this run only


@pytest_twisted.inlineCallbacks
def test_closespider_errorcount_counts_the_callback_errors_of_every_run(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    fail = frozenset(range(2, N_PAGES))
    first = make_crawler(PagesSpider, CLOSESPIDER_ERRORCOUNT=2, **ONE_AT_A_TIME)
    yield first.crawl(base=site.url, fail=fail)
    stats = _stats(first)
    assert stats["finish_reason"] == "closespider_errorcount"
    errors = stats["checkpoint/stage/spider_exceptions/count"]
    assert errors >= 2
    hits = site.total_hits

    second = make_crawler(PagesSpider, CLOSESPIDER_ERRORCOUNT=2, **ONE_AT_A_TIME)
    yield second.crawl(base=site.url, fail=fail)
    stats = _stats(second)
    assert stats["finish_reason"] == "closespider_errorcount"
    assert site.total_hits == hits
    assert stats["checkpoint/stage/spider_exceptions/count"] == errors
