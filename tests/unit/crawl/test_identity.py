"""Unit identity of requests (crawl/identity.py): ``dont_filter`` requests are units of their
own, the same in every run of a deterministic spider, and copies continue their unit.

The first tests drive :class:`UnitIdentity` directly; the crawls below compare, in this
process, what plain Scrapy fetches and writes with what the add-on fetches and writes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.crawler import Crawler
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.request import RequestFingerprinter

from scrapy_checkpoint import FileStore, Status, read_stage
from scrapy_checkpoint.crawl.identity import ORIGIN_META, ROOT, UNIT_META, UnitIdentity
from scrapy_checkpoint.crawl.requests import payload_to_request, request_to_payload
from scrapy_checkpoint.journal.keys import fingerprint_code, key_code

from ...site import Site
from ..conftest import MakeCrawler
from .test_frontier import TreeSpider

URL = "http://example.com/board/1"
fingerprint = RequestFingerprinter().fingerprint


def _register(identity: UnitIdentity, request: scrapy.Request, live: set[int]) -> int:
    """Schedule ``request`` as the frontier does: its unit, put in ``meta`` and ``live``."""
    code, continued = identity.unfiltered_code(request, live)
    assert not continued
    request.meta[UNIT_META] = code
    live.add(code)
    return code


def _children(identity: UnitIdentity, parent: int | None, urls: list[str]) -> list[int]:
    """The units of ``dont_filter`` requests for ``urls`` that unit ``parent``'s callback yields."""
    live: set[int] = set()
    codes = []
    for url in urls:
        child = scrapy.Request(url, dont_filter=True)
        identity.tag(child, parent)
        codes.append(_register(identity, child, live))
    return codes



def test_fingerprint_code_is_the_key_code_of_the_fingerprint() -> None:
    """The frontier's shortcut gives a fingerprint the code ``key_code`` gives it (the code
    journals written before it hold), and never an index's code."""
    for url in (URL, "http://example.com/", "http://example.com/p?q=%C3%A9"):
        fp = fingerprint(scrapy.Request(url))
        assert fingerprint_code(fp) == key_code(fp)
        assert fingerprint_code(fp) >= 1 << 63
    assert fingerprint_code(b"") == key_code(b"")

def test_dont_filter_requests_for_one_url_are_distinct_units_the_same_in_every_run() -> None:
    urls = [URL, URL, "http://example.com/other", URL]
    first = _children(UnitIdentity(fingerprint), 42, urls)
    again = _children(UnitIdentity(fingerprint), 42, urls)  # the next run: a new identity
    assert first == again
    assert len(set(first)) == 4
    assert key_code(fingerprint(scrapy.Request(URL))) not in first  # not the page's own unit
    assert _children(UnitIdentity(fingerprint), 43, urls) != first  # another parent's children
    # Only the order among requests for the same URL counts: other URLs may move around.
    moved = _children(UnitIdentity(fingerprint), 42, ["http://example.com/other", URL, URL, URL])
    assert moved[0] == first[2]
    assert moved[1:] == [first[0], first[1], first[3]]


def test_start_requests_count_per_url_across_the_whole_of_start() -> None:
    identity, live = UnitIdentity(fingerprint), set[int]()
    codes = [_register(identity, scrapy.Request(url, dont_filter=True), live)
             for url in (URL, "http://example.com/other", URL)]
    again, live = UnitIdentity(fingerprint), set()
    assert codes == [_register(again, scrapy.Request(url, dont_filter=True), live)
                     for url in (URL, "http://example.com/other", URL)]
    assert len(set(codes)) == 3
    assert _children(UnitIdentity(fingerprint), None, [URL]) == codes[:1]  # no unit: the root
    assert scrapy.Request(URL, dont_filter=True).meta.get(ORIGIN_META) is None
    start = scrapy.Request(URL, dont_filter=True)
    UnitIdentity(fingerprint).unfiltered_code(start, set())
    assert start.meta[ORIGIN_META] == [ROOT, 0]


def test_a_retry_continues_its_unit_while_it_is_live_and_is_a_request_of_its_own_after() -> None:
    identity, live = UnitIdentity(fingerprint), set[int]()
    request = scrapy.Request(URL, dont_filter=True)
    identity.tag(request, 7)
    code = _register(identity, request, live)
    retry = request.copy()  # RetryMiddleware's copy
    assert identity.unfiltered_code(retry, live) == (code, True)
    plain = scrapy.Request(URL)  # a unit keyed by its fingerprint, retried with dont_filter
    plain_code = identity.plain_code(plain)
    plain.meta[UNIT_META] = plain_code
    assert identity.unfiltered_code(plain.replace(dont_filter=True), {plain_code}) == (
        plain_code, True)
    # Once the unit is done, a copy is sent again by plain Scrapy: a new unit.
    live.discard(code)
    later, continued = identity.unfiltered_code(request.copy(), live)
    assert not continued
    assert later != code


def test_a_redirect_or_a_request_with_copied_meta_is_a_unit_of_its_own() -> None:
    identity, live = UnitIdentity(fingerprint), set[int]()
    request = scrapy.Request(URL, dont_filter=True)
    code = _register(identity, request, live)
    redirected = request.replace(url="http://example.com/login")
    unit, continued = identity.unfiltered_code(redirected, live)
    assert not continued
    assert unit != code
    assert redirected.meta[ORIGIN_META] == [code, 0]  # the unit redirected is its parent
    # A callback of unit ``code`` yields a request with its response's meta, for its own URL.
    child = scrapy.Request(URL, dont_filter=True, meta=request.meta)
    identity.tag(child, code)
    assert UNIT_META not in child.meta
    unit, continued = identity.unfiltered_code(child, live)
    assert not continued
    assert unit not in (code, identity.plain_code(child))


def test_a_journaled_request_keeps_its_unit() -> None:
    spider = scrapy.Spider(name="tree")
    identity, live = UnitIdentity(fingerprint), set[int]()
    request = scrapy.Request(URL, dont_filter=True, meta={"cookiejar": 2})
    identity.tag(request, 42)
    code = _register(identity, request, live)
    rebuilt = payload_to_request(json.loads(json.dumps(request_to_payload(request, spider))),
                                 spider)
    assert UnitIdentity(fingerprint).journaled_code(rebuilt) == code
    # A payload journaled before its unit was put in meta (scrapy-redis's shared queue).
    del rebuilt.meta[UNIT_META]
    assert UnitIdentity(fingerprint).journaled_code(rebuilt) == code
    assert UnitIdentity(fingerprint).journaled_code(scrapy.Request(URL)) == key_code(
        fingerprint(scrapy.Request(URL)))


def test_a_parent_done_is_forgotten() -> None:
    identity = UnitIdentity(fingerprint)
    assert _children(identity, 42, [URL]) == _children(UnitIdentity(fingerprint), 42, [URL])
    identity.forget(42)
    assert identity._counts == {}  # no counter left for a parent that is done


# -- crawls ------------------------------------------------------------------------------------

JARS = 3
BOARD = range(1, 7)


class SessionsSpider(scrapy.Spider):
    """The same pages under several cookie sessions (meta cookiejar, dont_filter), the Scrapy
    docs' way: ``start()`` asks for page 0 once per jar, each page 0 for pages 1-6 in its
    jar. One item per page and jar. ``stop_after``: stop as Ctrl-C does after that many."""

    name = "tree"

    def __init__(self, base: str, stop_after: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.stop_after, self.seen = base, stop_after, 0

    async def start(self) -> AsyncIterator[Any]:
        for jar in range(JARS):
            yield scrapy.Request(f"{self.base}/p/0", meta={"cookiejar": jar}, dont_filter=True)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        jar = response.meta["cookiejar"]
        yield {"jar": jar, "page": page}
        self.seen += 1
        if self.seen == self.stop_after:
            deferred_from_coro(self.crawler.stop_async())
        if page == 0:
            for n in BOARD:
                yield scrapy.Request(f"{self.base}/p/{n}", meta={"cookiejar": jar},
                                     dont_filter=True)


def _items(feed: Path) -> Counter[tuple[Any, ...]]:
    data = feed.read_text() if feed.exists() else ""
    assert data == "" or data.endswith("\n"), "the feed ends with a partial line"
    return Counter(tuple(sorted(json.loads(line).items())) for line in data.splitlines())


def _crawl(make_crawler: MakeCrawler, spidercls: type[scrapy.Spider], feed: Path, *,
           plain: bool = False, **kwargs: Any) -> Iterator[Any]:
    settings: dict[str, Any] = {"FEEDS": {str(feed): {"format": "jsonlines"}}}
    if plain:
        settings["CHECKPOINT_ENABLED"] = False
    crawler = make_crawler(spidercls, **settings)
    yield crawler.crawl(**kwargs)
    return crawler


def _stats(crawler: Crawler) -> dict[str, Any]:
    assert crawler.stats is not None
    return crawler.stats.get_stats()


@pytest_twisted.inlineCallbacks
def test_the_same_pages_under_several_sessions_are_crawled_as_plain_scrapy_crawls_them(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    yield from _crawl(make_crawler, SessionsSpider, tmp_path / "plain.jl", plain=True,
                      base=site.url)
    plain_hits, plain_items = site.page_hits(), _items(tmp_path / "plain.jl")
    assert plain_hits == {0: JARS, **dict.fromkeys(BOARD, JARS)}
    site.hits.clear()
    crawler = yield from _crawl(make_crawler, SessionsSpider, tmp_path / "items.jl",
                                base=site.url)
    assert site.page_hits() == plain_hits
    assert _items(tmp_path / "items.jl") == plain_items
    stats = _stats(crawler)
    assert "checkpoint/duplicates_dropped" not in stats
    assert stats["checkpoint/done"] == JARS * (1 + len(BOARD))
    state = read_stage(FileStore(tmp_path / "checkpoints"), "tree").state
    assert (state.status, state.done_units) == (Status.COMPLETED, JARS * (1 + len(BOARD)))


@pytest_twisted.inlineCallbacks
def test_a_stopped_crawl_of_the_same_pages_under_several_sessions_resumes_exactly(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    feed = tmp_path / "items.jl"
    first = yield from _crawl(make_crawler, SessionsSpider, feed, base=site.url, stop_after=5)
    assert _stats(first)["finish_reason"] == "shutdown"
    paused = read_stage(FileStore(tmp_path / "checkpoints"), "tree").state
    assert paused.status is Status.PAUSED
    assert paused.pending_units > 0
    second = yield from _crawl(make_crawler, SessionsSpider, feed, base=site.url)
    stats = _stats(second)
    assert stats["finish_reason"] == "finished"
    assert stats["checkpoint/skipped"] >= 1  # start() asks for the done pages 0 again
    # Every page once per session, none fetched twice: the stop let in-flight pages finish.
    assert site.page_hits() == {0: JARS, **dict.fromkeys(BOARD, JARS)}
    assert _items(feed) == Counter(tuple(sorted({"jar": jar, "page": page}.items()))
                                   for jar in range(JARS) for page in (0, *BOARD))


@pytest_twisted.inlineCallbacks
def test_retries_of_dont_filter_requests_continue_their_units(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setattr(site, "flaky_every", 2)  # pages 0, 2, 4, 6: 503 to their first request
    make = lambda spidercls, **s: make_crawler(  # noqa: E731
        spidercls, RETRY_ENABLED=True, RETRY_TIMES=2, **s)
    crawler = yield from _crawl(make, SessionsSpider, tmp_path / "items.jl", base=site.url)
    stats = _stats(crawler)
    assert stats["retry/count"] == 4  # one 503 per even page
    assert site.page_hits() == {0: JARS + 1, **{n: JARS + (n % 2 == 0) for n in BOARD}}
    assert (stats["checkpoint/done"], stats["checkpoint/failed_total"]) == (JARS * 7, 0)
    assert _items(tmp_path / "items.jl") == Counter(
        tuple(sorted({"jar": jar, "page": page}.items())) for jar in range(JARS)
        for page in (0, *BOARD))


@pytest_twisted.inlineCallbacks
def test_a_start_request_with_dont_filter_is_a_unit_apart_from_links_to_its_page(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    # Every page links to page 0: plain Scrapy fetches it twice, since the dupefilter never
    # saw the start request (start_urls ones have dont_filter).
    yield from _crawl(make_crawler, TreeSpider, tmp_path / "plain.jl", plain=True,
                      base=site.url, start_dont_filter=True)
    plain_hits, plain_items = site.page_hits(), _items(tmp_path / "plain.jl")
    assert plain_hits[0] == 2
    site.hits.clear()
    feed = tmp_path / "items.jl"
    first = yield from _crawl(make_crawler, TreeSpider, feed, base=site.url,
                              start_dont_filter=True, stop_after=6)
    assert _stats(first)["finish_reason"] == "shutdown"
    second = yield from _crawl(make_crawler, TreeSpider, feed, base=site.url,
                               start_dont_filter=True)
    assert _stats(second)["checkpoint/skipped"] >= 1  # the start request, done in the first run
    assert site.page_hits() == plain_hits
    assert _items(feed) == plain_items


class RedirectedSpider(scrapy.Spider):
    """Asks for /r/1 (302 to /p/1) once per jar, with dont_filter."""

    name = "tree"

    def __init__(self, base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        for jar in range(JARS):
            yield scrapy.Request(f"{self.base}/r/1", meta={"cookiejar": jar}, dont_filter=True)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        yield {"jar": response.meta["cookiejar"], "page": int(response.url.rsplit("/", 1)[1])}


@pytest_twisted.inlineCallbacks
def test_redirects_of_dont_filter_requests_are_units_of_their_own(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    yield from _crawl(make_crawler, RedirectedSpider, tmp_path / "plain.jl", plain=True,
                      base=site.url)
    assert site.page_hits() == {1: JARS}
    site.hits.clear()
    crawler = yield from _crawl(make_crawler, RedirectedSpider, tmp_path / "items.jl",
                                base=site.url)
    assert site.page_hits() == {1: JARS}
    assert _items(tmp_path / "items.jl") == _items(tmp_path / "plain.jl")
    assert _stats(crawler)["checkpoint/done"] == 2 * JARS  # each redirect, and its target


class IgnoredChildrenSpider(scrapy.Spider):
    """Page 0 (a unit) asks for pages 1-9 with ``checkpoint_ignore``; one item per page.
    ``stop_after``: stop as Ctrl-C does after that many items. One request at a time: when
    it stops after 3 items, one more page at most is downloading, the rest wait."""

    name = "tree"
    custom_settings = {"CONCURRENT_REQUESTS": 1}

    def __init__(self, base: str, stop_after: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.stop_after, self.seen = base, stop_after, 0

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/p/0")

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        yield {"page": page}
        self.seen += 1
        if self.seen == self.stop_after:
            deferred_from_coro(self.crawler.stop_async())
        if page == 0:
            for n in range(1, 10):
                yield scrapy.Request(f"{self.base}/p/{n}", meta={"checkpoint_ignore": True})


@pytest_twisted.inlineCallbacks
def test_checkpoint_ignore_requests_a_unit_yielded_are_done_with_it(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    feed = tmp_path / "items.jl"
    first = yield from _crawl(make_crawler, IgnoredChildrenSpider, feed, base=site.url,
                              stop_after=3)
    assert _stats(first)["finish_reason"] == "shutdown"
    paused = read_stage(FileStore(tmp_path / "checkpoints"), "tree").state
    # Page 0's unit waits for the ignored pages it asked for: not done, so it runs again.
    assert (paused.status, paused.done_units, paused.pending_units) == (Status.PAUSED, 0, 1)
    second = yield from _crawl(make_crawler, IgnoredChildrenSpider, feed, base=site.url)
    assert _stats(second)["finish_reason"] == "finished"
    assert _items(feed) == Counter((("page", n),) for n in range(10))  # each once
    state = read_stage(FileStore(tmp_path / "checkpoints"), "tree").state
    assert (state.status, state.done_units) == (Status.COMPLETED, 1)
