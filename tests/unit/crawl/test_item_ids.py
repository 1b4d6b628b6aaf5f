"""Stable item ids (``item_id``) and the stage's item counts, in-process crawls."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attr
import pytest
import pytest_twisted
import scrapy
from itemadapter import ItemAdapter
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem

from scrapy_checkpoint import FileStore, UnknownItemError, item_id, read_stage
from scrapy_checkpoint.crawl.extension import CheckpointExtension
from scrapy_checkpoint.crawl.pipeline import CheckpointItemPipeline
from scrapy_checkpoint.journal.keys import key_code

from ...conftest import PYTHON, python_env
from ...site import Site
from ..conftest import MakeCrawler

N_PAGES = 20


class PageItem(scrapy.Item):
    page = scrapy.Field()


@dataclasses.dataclass
class PageData:
    page: int


@attr.s(auto_attribs=True)
class PageNote:
    page: int


class KindsSpider(scrapy.Spider):
    """Per page four items, one of each kind; start() yields two items around its request;
    page 0 also asks for page 1 twice with ``dont_filter`` (``again``), one item each."""

    name = "tree"

    def __init__(self, base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        yield {"start": 0}
        yield scrapy.Request(f"{self.base}/p/0")
        yield PageData(-1)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        yield {"page": page}
        yield PageItem(page=page)
        yield PageData(page)
        yield PageNote(page)
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)
        if page == 0:
            for n in range(2):
                yield scrapy.Request(f"{self.base}/p/1", callback=self.again, dont_filter=True,
                                     cb_kwargs={"n": n})

    def again(self, response: scrapy.http.Response, n: int) -> Iterator[Any]:
        yield {"again": n}


def _describe(item: Any) -> tuple[str, str]:
    return type(item).__name__, repr(item)


class RecordingPipeline:
    """Records ``(kind, repr, item_id)`` of every item in ``crawler.recorded``, the largest
    number of live ids seen, and the number left when the spider closes."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        crawler.recorded = []  # type: ignore[attr-defined]
        crawler.largest = 0  # type: ignore[attr-defined]

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RecordingPipeline:
        return cls(crawler)

    def _ids(self) -> Any:
        ext = CheckpointExtension.of(self.crawler)
        return None if ext is None else ext.item_ids

    def process_item(self, item: Any) -> Any:
        try:
            key = item_id(item)
        except UnknownItemError as exc:
            key = f"unknown: {exc}"
        self.crawler.recorded.append((*_describe(item), key))  # type: ignore[attr-defined]
        ids = self._ids()
        if ids is not None:
            self.crawler.largest = max(self.crawler.largest, len(ids.live))  # type: ignore[attr-defined]
        return item

    def close_spider(self) -> None:
        ids = self._ids()
        self.crawler.left = None if ids is None else len(ids.live)  # type: ignore[attr-defined]


RECORDING = {"ITEM_PIPELINES": {RecordingPipeline: 500}}


def _crawl(make_crawler: MakeCrawler, site: Site, **settings: Any) -> Iterator[Any]:
    crawler = make_crawler(KindsSpider, **{**RECORDING, **settings})
    yield crawler.crawl(base=site.url)
    return crawler


@pytest_twisted.inlineCallbacks
def test_every_item_has_an_id_and_two_runs_give_the_same_ids(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    first = yield from _crawl(make_crawler, site, CHECKPOINT_STAGE_NAME="one")
    second = yield from _crawl(make_crawler, site, CHECKPOINT_STAGE_NAME="two")
    items = 4 * N_PAGES + 2 + 2  # four per page, two of start(), two of the dont_filter pair
    for crawler in (first, second):
        keys = [key for _, _, key in crawler.recorded]
        assert len(keys) == items
        assert not [key for key in keys if key.startswith("unknown")]
        assert len(set(keys)) == items, "two items share an id"
        assert crawler.left == 0, "ids left behind after the items were processed"
        assert 0 < crawler.largest <= items
    assert sorted(first.recorded) == sorted(second.recorded)
    kinds = {kind for kind, _, _ in first.recorded}
    assert kinds == {"dict", "PageItem", "PageData", "PageNote"}


@pytest_twisted.inlineCallbacks
def test_an_id_is_the_unit_of_the_request_and_the_items_place_in_its_output(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    crawler = yield from _crawl(make_crawler, site)
    by_item = {(kind, text): key for kind, text, key in crawler.recorded}
    # start(): "0:<n>", by place among start()'s items.
    assert by_item[_describe({"start": 0})] == "0:0"
    assert by_item[_describe(PageData(-1))] == "0:1"
    # A page: its unit (the fingerprint's code), then 0, 1, 2, 3 in the callback's order.
    fingerprint = crawler.request_fingerprinter.fingerprint  # type: ignore[union-attr]
    unit = f"{key_code(fingerprint(scrapy.Request(f'{site.url}/p/3'))):x}"
    assert [by_item[_describe(x)] for x in ({"page": 3}, PageItem(page=3), PageData(3), PageNote(3))] \
        == [f"{unit}:0", f"{unit}:1", f"{unit}:2", f"{unit}:3"]
    # The two dont_filter requests of one page are units of their own: ids apart.
    again = [by_item[_describe({"again": n})] for n in range(2)]
    assert again[0] != again[1]
    assert all(key.endswith(":0") and not key.startswith(unit) for key in again)


@pytest_twisted.inlineCallbacks
def test_a_resumed_crawl_gives_the_remaining_items_the_ids_of_an_uninterrupted_one(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    whole = yield from _crawl(make_crawler, site, CHECKPOINT_STAGE_NAME="whole")
    expected = {(kind, text): key for kind, text, key in whole.recorded}
    stopped = yield from _crawl(make_crawler, site, CHECKPOINT_STAGE_NAME="parts",
                                CLOSESPIDER_ITEMCOUNT=10, CONCURRENT_REQUESTS=1)
    resumed = yield from _crawl(make_crawler, site, CHECKPOINT_STAGE_NAME="parts")
    for crawler in (stopped, resumed):
        for kind, text, key in crawler.recorded:
            assert expected[kind, text] == key
    seen = {(kind, text) for crawler in (stopped, resumed) for kind, text, _ in crawler.recorded}
    assert seen == set(expected)


def test_item_id_of_an_item_no_crawl_yielded_raises_a_lookup_error() -> None:
    with pytest.raises(UnknownItemError, match="does not know this dict item") as info:
        item_id({"page": 1})
    assert isinstance(info.value, LookupError)


@pytest_twisted.inlineCallbacks
def test_without_the_item_pipeline_item_id_raises_and_items_flow_as_usual(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    crawler = yield from _crawl(make_crawler, site, ITEM_PIPELINES={
        RecordingPipeline: 500, CheckpointItemPipeline: None})
    assert len(crawler.recorded) == 4 * N_PAGES + 4
    assert all(key.startswith("unknown: scrapy_checkpoint.item_id() does not know")
               for _, _, key in crawler.recorded)


class SortingPipeline:
    """Drops the items of pages that are multiples of 5, fails on page 7's."""

    def process_item(self, item: Any) -> Any:
        page = ItemAdapter(item).get("page")
        if isinstance(page, int) and page % 5 == 0:
            raise DropItem(f"page {page}")
        if page == 7:
            raise ValueError("page 7")
        return item


class PagesSpider(scrapy.Spider):
    name = "tree"

    def __init__(self, base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/p/0")

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        yield {"page": page} if page % 2 else PageItem(page=page)
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


@pytest_twisted.inlineCallbacks
def test_items_are_counted_per_stage_by_outcome_and_type_over_every_run(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    settings = {"ITEM_PIPELINES": {SortingPipeline: 300}, "CONCURRENT_REQUESTS": 1}
    first = make_crawler(PagesSpider, CLOSESPIDER_ITEMCOUNT=6, **settings)
    yield first.crawl(base=site.url)
    assert first.stats is not None
    assert first.stats.get_value("finish_reason") == "closespider_itemcount"
    second = make_crawler(PagesSpider, **settings)
    yield second.crawl(base=site.url)
    assert second.stats is not None
    stats = second.stats.get_stats()
    dropped = [p for p in range(N_PAGES) if p % 5 == 0]
    scraped = [p for p in range(N_PAGES) if p % 5 and p != 7]
    expected = {"scraped": len(scraped), "dropped": len(dropped), "errors": 1,
                "types": {"PageItem": sum(p % 2 == 0 for p in scraped),
                          "dict": sum(p % 2 == 1 for p in scraped)}}
    assert {key: stats[f"checkpoint/items/{key}"] for key in ("scraped", "dropped", "errors")} \
        == {key: expected[key] for key in ("scraped", "dropped", "errors")}
    assert {name: stats[f"checkpoint/items/type/{name}"] for name in ("PageItem", "dict")} \
        == expected["types"]
    assert read_stage(FileStore(tmp_path / "checkpoints"), "tree").items == expected

    def show(*args: str, command: tuple[str, ...] = ("show", "tree")) -> str:
        return subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir",
                               str(tmp_path / "checkpoints"), *command, *args],
                              capture_output=True, text=True, check=True,
                              env={**python_env(), "COLUMNS": "200"}).stdout

    assert json.loads(show("--json"))["items"] == expected
    assert (f"{len(scraped)} scraped, {len(dropped)} dropped, 1 errors (all runs); scraped by "
            f"type: PageItem {expected['types']['PageItem']}, dict {expected['types']['dict']}"
            in show())
    assert (f"items {len(scraped)} scraped, {len(dropped)} dropped, 1 errors (all runs)"
            in show(command=("report",)))


class ReplacingPipeline:
    """Hands on a copy of every item: the object the spider yielded leaves the pipelines."""

    def process_item(self, item: Any) -> Any:
        return dict(ItemAdapter(item).asdict())


@pytest_twisted.inlineCallbacks
def test_no_id_stays_behind_whatever_the_pipelines_do_with_the_items(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    crawler = make_crawler(PagesSpider, ITEM_PIPELINES={
        RecordingPipeline: 100, SortingPipeline: 300, ReplacingPipeline: 400})
    yield crawler.crawl(base=site.url)
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    assert (stats["checkpoint/items/scraped"], stats["checkpoint/items/dropped"],
            stats["checkpoint/items/errors"]) == (N_PAGES - 5, 4, 1)
    assert stats["checkpoint/items/type/dict"] == N_PAGES - 5  # the copies are dicts
    assert len(crawler.recorded) == N_PAGES
    assert crawler.left == 0


@pytest_twisted.inlineCallbacks
def test_the_explicit_form_gives_ids_with_the_pipeline_listed_in_item_pipelines(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    crawler = make_crawler(KindsSpider, ADDONS={}, CHECKPOINT_ENABLED=True, ITEM_PIPELINES={
        "scrapy_checkpoint.CheckpointItemPipeline": 0, RecordingPipeline: 500})
    yield crawler.crawl(base=site.url)
    keys = [key for _, _, key in crawler.recorded]
    assert len(keys) == len(set(keys)) == 4 * N_PAGES + 4
    assert not [key for key in keys if key.startswith("unknown")]
