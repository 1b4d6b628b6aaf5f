"""Fixtures of the in-process component tests.

Crawls run in this process, in the reactor pytest-twisted installs when pytest starts
(``--reactor``, default: Twisted's default reactor; the suite passes no option).
``scrapy.utils.test.get_crawler`` reads which reactor is installed and sets
``TWISTED_REACTOR`` to match (None for a non-asyncio one), so the same tests run under
pytest-twisted's default reactor and under ``--reactor=asyncio``. Tests that crawl are
``pytest_twisted.inlineCallbacks`` generators that ``yield crawler.crawl(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import scrapy
from scrapy.crawler import Crawler
from scrapy.utils.test import get_crawler

from scrapy_checkpoint.crawl.extension import CheckpointExtension

from ..site import Site

#: Settings of every crawler these tests build (the directory is added per test).
BASE_SETTINGS: dict[str, Any] = {
    "ADDONS": {"scrapy_checkpoint.Addon": 100},
    "REMOTE_CONTROL_ENABLED": False,
    "TELNETCONSOLE_ENABLED": False,
    "ROBOTSTXT_OBEY": False,
    "RETRY_ENABLED": False,
    "MEMUSAGE_ENABLED": False,
    "CONCURRENT_REQUESTS": 4,
    "CHECKPOINT_LOG_INTERVAL": 0,
    # get_crawler() builds the extensions before the spider exists, so the stage is named
    # here (see test_addon.py for the spider-name default).
    "CHECKPOINT_STAGE_NAME": "tree",
}


class Counts:
    """A minimal stats collector: what the outputs and the frontier call."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def inc_value(self, key: str, count: int = 1, start: int = 0) -> None:
        self.values[key] = self.values.get(key, start) + count

    def set_value(self, key: str, value: Any) -> None:
        self.values[key] = value

    def get_value(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


MakeCrawler = Callable[..., Crawler]


@pytest.fixture
def make_crawler(tmp_path: Path) -> Iterator[MakeCrawler]:
    """``make_crawler(spidercls=None, **settings)``: a crawler with the add-on, its checkpoint
    in ``tmp_path/checkpoints``. A stage a crawler opened and no crawl closed is closed at
    teardown (get_crawler opens it when it builds the extension)."""
    crawlers: list[Crawler] = []

    def make(spidercls: type[scrapy.Spider] | None = None, **settings: Any) -> Crawler:
        crawler = get_crawler(spidercls, {**BASE_SETTINGS,
                                          "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
                                          **settings})
        crawlers.append(crawler)
        return crawler

    yield make
    for crawler in crawlers:
        ext = CheckpointExtension.of(crawler)
        if ext is not None and ext.cp is not None:
            ext.cp.close()  # a no-op once spider_closed closed it


@pytest.fixture(scope="session")
def shared_site() -> Iterator[Site]:
    """One server for all tests: stopping one waits for its half-second poll."""
    s = Site(20)
    yield s
    s.close()


@pytest.fixture
def site(shared_site: Site) -> Site:
    """The tree site of tests/site.py, 20 pages, all reachable from page 0; no failing
    pages and no hits counted yet."""
    with shared_site._lock:
        shared_site.hits.clear()
        shared_site.total_hits = 0
    shared_site.fail = set()
    return shared_site
