"""A completed stage run again, in this process: nothing by default, or (incremental) the
requests done before the refresh time and what they link to, with a faked clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from scrapy_checkpoint import Status
from scrapy_checkpoint.errors import ConfigError

from ...site import Site
from ..conftest import MakeCrawler
from .test_frontier import N_PAGES, TreeSpider, _feed_pages, _settings, _stage, _stats

T0 = 1_790_000_000.0  # Unix seconds
DAY = 86400


class Clock:
    """The wall clock of commits (done times) and of the refresh cutoff."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        for where in ("scrapy_checkpoint.durability.walltime",
                      "scrapy_checkpoint.crawl.open_policy.walltime"):
            monkeypatch.setattr(where, lambda: self.now)


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return tmp_path / "items.jl"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def _children(page: int) -> list[int]:
    return [c for c in (3 * page + 1, 3 * page + 2, 3 * page + 3) if c < N_PAGES]


def _reached_through(stale: set[int]) -> set[int]:
    """Pages an incremental pass fetches when ``stale`` are the pages done before the cutoff
    (every other page is done and fresh): from page 0, through stale pages only."""
    fetched, todo = set(), [0]
    while todo:
        page = todo.pop()
        if page in fetched or page not in stale:
            continue
        fetched.add(page)
        todo += _children(page)
    return fetched


INCREMENTAL = {"CHECKPOINT_ON_COMPLETE": "incremental", "CHECKPOINT_REFRESH_AFTER": "7d"}


@pytest_twisted.inlineCallbacks
def test_an_incremental_pass_fetches_the_pages_done_before_the_refresh_time_and_what_they_link_to(
    make_crawler: MakeCrawler, site: Site, feed: Path, tmp_path: Path, clock: Clock
) -> Iterator[Any]:
    # Day 0: part of the crawl, stopped; day 5: the rest. Done times differ by page.
    yield make_crawler(TreeSpider, **_settings(feed)).crawl(base=site.url, stop_after=5)
    day0 = set(site.page_hits())
    clock.now = T0 + 5 * DAY
    yield make_crawler(TreeSpider, **_settings(feed)).crawl(base=site.url)
    day5 = set(site.page_hits()) - day0
    assert _stage(tmp_path).state.status is Status.COMPLETED
    assert _feed_pages(feed) == list(range(N_PAGES))
    stale = day0 - {p for p, n in site.page_hits().items() if n > 1}  # done on day 0
    assert 0 in stale
    assert day5

    # Day 10, refresh after 7 days: the pages done on day 0 are refetched when reached.
    clock.now = T0 + 10 * DAY
    before = site.page_hits()
    again = make_crawler(TreeSpider, **_settings(feed, **INCREMENTAL))
    yield again.crawl(base=site.url)
    hits = {p: n - before.get(p, 0) for p, n in site.page_hits().items() if n - before.get(p, 0)}
    expected = _reached_through(stale)
    assert hits == dict.fromkeys(expected, 1)
    assert _stats(again)["checkpoint/refreshed"] == len(stale)
    assert _feed_pages(feed) == sorted([*range(N_PAGES), *expected])  # -o appends the pass
    state = _stage(tmp_path).state
    assert state.status is Status.COMPLETED
    assert state.done_units == N_PAGES - len(stale - expected)

    # The same day, again: nothing was done 7 days ago or longer; nothing is touched.
    items = feed.read_bytes()
    before = site.page_hits()
    third = make_crawler(TreeSpider, **_settings(feed, **INCREMENTAL))
    yield third.crawl(base=site.url)
    assert site.page_hits() == before
    assert _stats(third)["finish_reason"] == "checkpoint_completed"
    assert feed.read_bytes() == items

    # Day 13: the pages done on day 5 are due, but every page that links to them was
    # refetched on day 10 and is fresh: none is reached, so none is fetched (a page is
    # fetched again when the crawl reaches it); they are done no more.
    clock.now = T0 + 13 * DAY
    before = site.page_hits()
    fourth = make_crawler(TreeSpider, **_settings(feed, **INCREMENTAL))
    yield fourth.crawl(base=site.url)
    assert site.page_hits() == before
    assert _stats(fourth)["checkpoint/refreshed"] == len(day5)
    assert feed.read_bytes() == items
    state = _stage(tmp_path).state
    assert (state.status, state.done_units) == (Status.COMPLETED, N_PAGES - len(day5))


def test_incremental_needs_a_refresh_time_and_takes_durations(make_crawler: MakeCrawler) -> None:
    with pytest.raises(ConfigError, match="needs CHECKPOINT_REFRESH_AFTER"):
        make_crawler(TreeSpider, CHECKPOINT_ON_COMPLETE="incremental")
    with pytest.raises(ConfigError, match=r"CHECKPOINT_REFRESH_AFTER='a week'.*7d"):
        make_crawler(TreeSpider, **{**INCREMENTAL, "CHECKPOINT_REFRESH_AFTER": "a week"})
