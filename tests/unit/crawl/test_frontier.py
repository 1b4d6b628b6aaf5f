"""Whole crawls in this process against the local test site: which requests become units,
when each is done, and what each close reason leaves in the stage.

Every crawl is ``yield crawler.crawl(...)`` in the reactor pytest-twisted runs (see
tests/unit/conftest.py); two crawls of one stage run one after the other in one test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from scrapy.utils.defer import deferred_from_coro

from scrapy_checkpoint import FileStore, Status, read_stage
from scrapy_checkpoint.stores import open_store
from scrapy_checkpoint.view import StageView

from ...site import Site
from ..conftest import MakeCrawler

N_PAGES = 20  # the site fixture's size


def page_of(response: scrapy.http.Response) -> int:
    return int(response.url.rsplit("/", 1)[1])


class TreeSpider(scrapy.Spider):
    """Follows every link of the site from page 0; one item per page.

    ``stop_after``: after that many pages, stop the crawl as Ctrl-C does (reason ``shutdown``).
    ``start_dont_filter``: the start request has ``dont_filter``, as ``start_urls`` ones do;
    plain Scrapy then fetches page 0 twice (every page links to it, and the dupefilter did
    not see the start request).
    """

    name = "tree"

    def __init__(self, base: str, stop_after: int = 0, start_dont_filter: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.stop_after = stop_after
        self.start_dont_filter = start_dont_filter
        self.seen = 0

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/p/0", dont_filter=self.start_dont_filter)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"page": page_of(response)}
        self.seen += 1
        if self.seen == self.stop_after:
            deferred_from_coro(self.crawler.stop_async())
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


class ListSpider(scrapy.Spider):
    """Fetches the pages ``pages`` and follows nothing; ``ignore``: pages requested with
    ``checkpoint_ignore``; ``again``: pages whose callback asks for another page
    (``{from: [(to, dont_filter)]}``)."""

    name = "tree"

    def __init__(self, base: str, pages: list[int], ignore: frozenset[int] = frozenset(),
                 again: dict[int, list[tuple[int, bool]]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.pages, self.ignore, self.again = base, pages, ignore, again or {}

    async def start(self) -> AsyncIterator[Any]:
        for page in self.pages:
            yield self.request(page, meta={"checkpoint_ignore": True} if page in self.ignore else {})

    def request(self, page: int, **kwargs: Any) -> scrapy.Request:
        return scrapy.Request(f"{self.base}/p/{page}", **kwargs)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = page_of(response)
        yield {"page": page}
        for to, dont_filter in self.again.get(page, []):
            yield self.request(to, dont_filter=dont_filter)


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return tmp_path / "items.jl"


def _settings(feed: Path, **extra: Any) -> dict[str, Any]:
    return {"FEEDS": {str(feed): {"format": "jsonlines"}}, **extra}


def _feed_pages(feed: Path) -> list[int]:
    data = feed.read_text() if feed.exists() else ""
    assert data == "" or data.endswith("\n"), "the feed ends with a partial line"
    return sorted(json.loads(line)["page"] for line in data.splitlines())


def _stage(tmp_path: Path) -> StageView:
    return read_stage(FileStore(tmp_path / "checkpoints"), "tree")


def _stats(crawler: Crawler) -> dict[str, Any]:
    assert crawler.stats is not None
    return crawler.stats.get_stats()


@pytest_twisted.inlineCallbacks
def test_a_full_crawl_completes_the_stage(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path
) -> Iterator[Any]:
    crawler = make_crawler(TreeSpider, **_settings(feed))
    yield crawler.crawl(base=site.url)
    stats = _stats(crawler)
    assert stats["finish_reason"] == "finished"
    assert site.page_hits() == dict.fromkeys(range(N_PAGES), 1)
    assert _feed_pages(feed) == list(range(N_PAGES))
    state = _stage(tmp_path).state
    assert state.status is Status.COMPLETED
    assert (state.done_units, state.pending_units) == (N_PAGES, 0)
    assert (state.progress.processed_items, state.progress.successful_items) == (N_PAGES, N_PAGES)
    assert state.progress.total_items == N_PAGES
    assert (stats["checkpoint/done"], stats["checkpoint/done_total"], stats["checkpoint/pending"],
            stats["checkpoint/resumed"]) == (N_PAGES, N_PAGES, 0, 0)
    assert stats["checkpoint/failed_total"] == 0
    assert "checkpoint/failed" not in stats
    assert "checkpoint/skipped" not in stats
    assert _stage(tmp_path).outputs == {str(feed): [0, feed.stat().st_size]}


@pytest_twisted.inlineCallbacks
def test_a_completed_stage_run_again_fetches_nothing_by_default(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path
) -> Iterator[Any]:
    yield make_crawler(TreeSpider, **_settings(feed)).crawl(base=site.url)
    assert _stage(tmp_path).state.status is Status.COMPLETED
    hits, items = site.total_hits, feed.read_bytes()

    again = make_crawler(TreeSpider, **_settings(feed))
    yield again.crawl(base=site.url)
    stats = _stats(again)
    assert stats["finish_reason"] == "checkpoint_completed"
    assert site.total_hits == hits
    assert "downloader/request_count" not in stats
    assert feed.read_bytes() == items
    state = _stage(tmp_path).state
    assert (state.status, state.done_units) == (Status.COMPLETED, N_PAGES)


@pytest.mark.parametrize("reason", ["closespider_itemcount", "shutdown"])
@pytest_twisted.inlineCallbacks
def test_a_stopped_crawl_pauses_and_the_next_one_resumes_it(
    make_crawler: MakeCrawler, site: Site, feed: Path, store_location: str, reason: str
) -> Iterator[Any]:
    """On every store (``store_location``): both runs are in this process, so the memory
    store (``memory://NAME``) resumes too."""
    where = ({"CHECKPOINT_BACKEND": store_location} if "://" in store_location
             else {"CHECKPOINT_DIR": store_location})
    if reason == "shutdown":
        first = make_crawler(TreeSpider, **_settings(feed, **where))
        yield first.crawl(base=site.url, stop_after=5)
    else:
        first = make_crawler(TreeSpider, **_settings(feed, CLOSESPIDER_ITEMCOUNT=5, **where))
        yield first.crawl(base=site.url)
    stats = _stats(first)
    assert stats["finish_reason"] == reason
    paused = read_stage(open_store(store_location), "tree").state
    assert paused.status is Status.PAUSED
    done, pending = paused.done_units, paused.pending_units
    assert done >= 5
    assert pending > 0
    assert done + pending <= N_PAGES
    assert (stats["checkpoint/done"], stats["checkpoint/done_total"],
            stats["checkpoint/pending"]) == (done, done, pending)
    assert _feed_pages(feed) == sorted(site.page_hits())  # one item per page fetched
    first_hits = site.page_hits()

    second = make_crawler(TreeSpider, **_settings(feed, **where))
    yield second.crawl(base=site.url)
    stats = _stats(second)
    assert stats["finish_reason"] == "finished"
    assert stats["checkpoint/resumed"] == pending
    assert stats["checkpoint/skipped"] >= 1  # at least the start request, done in the first run
    assert stats["checkpoint/done"] == N_PAGES - done
    assert site.page_hits() == dict.fromkeys(range(N_PAGES), 1)
    assert not set(first_hits) & (set(site.page_hits()) - set(first_hits))
    assert _feed_pages(feed) == list(range(N_PAGES))
    state = read_stage(open_store(store_location), "tree").state
    assert state.status is Status.COMPLETED
    assert (state.done_units, state.pending_units) == (N_PAGES, 0)


@pytest_twisted.inlineCallbacks
def test_a_request_with_checkpoint_ignore_is_not_journaled(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path
) -> Iterator[Any]:
    crawler = make_crawler(ListSpider, **_settings(feed))
    yield crawler.crawl(base=site.url, pages=[0, 1, 2, 3], ignore=frozenset({2}))
    assert site.page_hits() == dict.fromkeys([0, 1, 2, 3], 1)
    assert _feed_pages(feed) == [0, 1, 2, 3]  # its item is written, at once
    assert _stats(crawler)["checkpoint/done"] == 3
    view = _stage(tmp_path)
    assert (view.state.done_units, view.state.pending_units) == (3, 0)
    fingerprint = crawler.request_fingerprinter.fingerprint
    assert [view.is_done(fingerprint(scrapy.Request(f"{site.url}/p/{p}"))) for p in range(4)] == [
        True, True, False, True]


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retried"])
@pytest_twisted.inlineCallbacks
def test_a_500_response_fails_its_unit(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path, retry: bool
) -> Iterator[Any]:
    site.fail = {2}
    crawler = make_crawler(ListSpider, **_settings(feed, RETRY_ENABLED=retry, RETRY_TIMES=2))
    yield crawler.crawl(base=site.url, pages=[0, 1, 2, 3])
    assert site.page_hits()[2] == (3 if retry else 1)
    stats = _stats(crawler)
    assert (stats["checkpoint/failed"], stats["checkpoint/done"]) == (1, 4)
    assert stats["checkpoint/failed_total"] == 1
    assert _feed_pages(feed) == [0, 1, 3]
    state = _stage(tmp_path).state
    assert state.status is Status.COMPLETED
    progress = state.progress
    assert (progress.processed_items, progress.successful_items, progress.failed_items) == (4, 3, 1)


@pytest_twisted.inlineCallbacks
def test_retry_failed_fetches_only_the_failed_units_again(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path
) -> Iterator[Any]:
    site.fail = {2}
    yield make_crawler(ListSpider, **_settings(feed)).crawl(base=site.url, pages=[0, 1, 2, 3])
    site.fail = set()
    again = make_crawler(ListSpider, **_settings(feed, CHECKPOINT_RETRY_FAILED=True))
    yield again.crawl(base=site.url, pages=[0, 1, 2, 3])
    stats = _stats(again)
    assert (stats["checkpoint/resumed"], stats["checkpoint/skipped"], stats["checkpoint/done"]) == (
        1, 3, 1)
    assert site.page_hits() == {0: 1, 1: 1, 2: 2, 3: 1}
    assert _feed_pages(feed) == [0, 1, 2, 3]
    progress = _stage(tmp_path).state.progress
    assert (progress.failed_items, progress.successful_items) == (0, 4)


@pytest_twisted.inlineCallbacks
def test_a_dont_filter_request_for_a_done_page_is_sent_as_plain_scrapy_sends_it(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path
) -> Iterator[Any]:
    crawler = make_crawler(ListSpider, **_settings(feed))
    # 0 -> 1 -> 2, then page 2 asks for 0 again past the dupefilter, and for 1 through it;
    # page 0 fetched again asks for 1 again, through the dupefilter.
    yield crawler.crawl(base=site.url, pages=[0], again={0: [(1, False)], 1: [(2, False)],
                                                          2: [(0, True), (1, False)]})
    assert site.page_hits() == {0: 2, 1: 1, 2: 1}
    stats = _stats(crawler)
    assert "checkpoint/duplicates_dropped" not in stats
    assert stats["dupefilter/filtered"] == 2  # the plain duplicates are left to the dupefilter
    assert stats["checkpoint/done"] == 4
    assert _feed_pages(feed) == [0, 0, 1, 2]
    assert _stage(tmp_path).state.done_units == 4


class OpaqueMetaSpider(TreeSpider):
    """TreeSpider whose links carry an object in ``meta``: they cannot be journaled."""

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        for out in super().parse(response):
            if isinstance(out, scrapy.Request):
                out.meta["handle"] = object()
            yield out


@pytest_twisted.inlineCallbacks
def test_requests_that_cannot_be_journaled_pending_at_a_stop_are_found_again(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path
) -> Iterator[Any]:
    first = make_crawler(OpaqueMetaSpider, **_settings(feed))
    yield first.crawl(base=site.url, stop_after=3)
    paused = _stage(tmp_path).state
    assert paused.status is Status.PAUSED
    pending = paused.pending_units  # some recorded as existing, with no payload
    assert pending > 0
    assert _stats(first)["checkpoint/unserializable"] > 0

    # Each holds the unit whose callback yielded it: that unit is resumed, and yields them
    # again (the lost-count of those nothing yields again: test_crawl_requests.py).
    second = make_crawler(OpaqueMetaSpider, **_settings(feed))
    yield second.crawl(base=site.url)
    stats = _stats(second)
    assert stats["finish_reason"] == "finished"
    assert stats["checkpoint/resumed"] > 0
    assert "checkpoint/lost" not in stats
    state = _stage(tmp_path).state
    assert (state.status, state.lost, state.pending_units) == (Status.COMPLETED, {}, 0)
    assert state.progress.total_items == state.done_units
