"""SQLPipeline in-process: rows keyed by item id, in SQLite and PostgreSQL; its errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
import sqlalchemy as sa

from scrapy_checkpoint import ConfigError

from ...conftest import ROOT
from ...site import Site
from ..conftest import MakeCrawler

N_PAGES = 20
SQL = {"ITEM_PIPELINES": {"scrapy_checkpoint.pipelines.SQLPipeline": 800}}


class PagesSpider(scrapy.Spider):
    """Two items per page: the page, and a note with a date and a decimal."""

    name = "tree"

    def __init__(self, base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base

    async def start(self) -> AsyncIterator[Any]:
        yield scrapy.Request(f"{self.base}/p/0")

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        yield {"page": page, "title": response.css("title::text").get()}
        yield {"note": page, "tags": {"a"}}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


def _select(url: str, table: str, columns: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(f"SELECT {columns} FROM {table}"))]
    finally:
        engine.dispose()


def _rows(url: str, table: str = "items") -> list[tuple[str, str, Any]]:
    """SQLPipeline's rows: stage, item id, the item's fields."""
    return [(stage, key, json.loads(data) if isinstance(data, str) else data)
            for stage, key, data in _select(url, table, "stage, item_id, data")]


def _assert_each_item_once(url: str, table: str = "items") -> None:
    rows = _rows(url, table)
    assert len(rows) == 2 * N_PAGES
    assert len({key for _, key, _ in rows}) == 2 * N_PAGES
    assert {stage for stage, _, _ in rows} == {"tree"}
    pages = sorted(data["page"] for _, _, data in rows if "page" in data)
    assert pages == list(range(N_PAGES))
    assert all(data["tags"] == ["a"] for _, _, data in rows if "note" in data)


@pytest_twisted.inlineCallbacks
def test_sqlite_holds_every_item_once_after_the_stage_is_crawled_twice(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'items.db'}"
    first = make_crawler(PagesSpider, CHECKPOINT_SQL_URL=url, CHECKPOINT_SQL_TABLE="pages",
                         CHECKPOINT_SQL_BATCH_SIZE=3, **SQL)
    yield first.crawl(base=site.url)
    _assert_each_item_once(url, "pages")
    # Started over: every item comes again, with the same ids, and changes nothing.
    again = make_crawler(PagesSpider, CHECKPOINT_SQL_URL=url, CHECKPOINT_SQL_TABLE="pages",
                         CHECKPOINT_RESET=True, **SQL)
    yield again.crawl(base=site.url)
    assert again.stats is not None
    assert again.stats.get_value("item_scraped_count") == 2 * N_PAGES
    _assert_each_item_once(url, "pages")


@pytest_twisted.inlineCallbacks
def test_postgresql_holds_every_item_once_after_the_stage_is_crawled_twice(
    make_crawler: MakeCrawler, site: Site, postgres_database: str
) -> Iterator[Any]:
    for reset in (False, True):
        crawler = make_crawler(PagesSpider, CHECKPOINT_SQL_URL=postgres_database,
                               CHECKPOINT_RESET=reset, **SQL)
        yield crawler.crawl(base=site.url)
        _assert_each_item_once(postgres_database)


@pytest_twisted.inlineCallbacks
def test_a_crawl_without_a_database_url_stops_at_start_saying_which_setting(
    make_crawler: MakeCrawler, site: Site
) -> Iterator[Any]:
    crawler = make_crawler(PagesSpider, **SQL)
    with pytest.raises(ConfigError, match="SQLPipeline needs CHECKPOINT_SQL_URL"):
        yield crawler.crawl(base=site.url)
    assert site.total_hits == 0


@pytest_twisted.inlineCallbacks
def test_an_unreachable_database_stops_the_crawl_at_start_without_showing_the_password(
    make_crawler: MakeCrawler, site: Site, caplog: pytest.LogCaptureFixture
) -> Iterator[Any]:
    url = "postgresql+psycopg://app:s3cret@127.0.0.1:1/items"
    crawler = make_crawler(PagesSpider, CHECKPOINT_SQL_URL=url, **SQL)
    with pytest.raises(ConfigError, match="SQLPipeline cannot open table 'items' in "
                                          r"postgresql\+psycopg://app:\*\*\*@127.0.0.1:1/items") \
            as info:
        yield crawler.crawl(base=site.url)
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in caplog.text
    assert "\n" not in str(info.value)
    assert site.total_hits == 0


class TitlesSpider(PagesSpider):
    """One item per page: its number and title."""

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.url.rsplit("/", 1)[1])
        yield {"page": page, "title": response.css("title::text").get()}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


def _docs_example(heading: str) -> str:
    """The first Python block under ``heading`` in docs/items.md."""
    text = (ROOT / "docs" / "items.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest_twisted.inlineCallbacks
def test_the_pipeline_example_of_the_items_page_keeps_one_row_per_item(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    namespace: dict[str, Any] = {}
    exec(_docs_example("## Your own pipeline, keyed by `item_id`"), namespace)
    db = tmp_path / "pages.db"
    for reset in (False, True):  # every item handed to the pipeline twice
        crawler = make_crawler(TitlesSpider, ITEMS_DB=str(db), CHECKPOINT_RESET=reset,
                               ITEM_PIPELINES={namespace["ItemIdSQLitePipeline"]: 300})
        yield crawler.crawl(base=site.url)
    rows = _select(f"sqlite:///{db}", "pages", "item_id, page")
    assert sorted(page for _, page in rows) == list(range(N_PAGES))


@pytest_twisted.inlineCallbacks
def test_a_crawl_with_the_checkpoint_off_refuses_the_sql_pipeline(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    crawler = make_crawler(PagesSpider, CHECKPOINT_ENABLED=False,
                           CHECKPOINT_SQL_URL=f"sqlite:///{tmp_path / 'items.db'}", **SQL)
    with pytest.raises(ConfigError, match="SQLPipeline needs the checkpoint"):
        yield crawler.crawl(base=site.url)
    assert site.total_hits == 0


@pytest_twisted.inlineCallbacks
def test_the_explicit_form_without_the_item_pipeline_refuses_the_sql_pipeline(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    """Without CheckpointItemPipeline there are no item ids to key the rows by: every item
    would fail; the crawl does not start."""
    crawler = make_crawler(PagesSpider, ADDONS={}, CHECKPOINT_ENABLED=True,
                           CHECKPOINT_SQL_URL=f"sqlite:///{tmp_path / 'items.db'}", **SQL)
    with pytest.raises(ConfigError, match="which CheckpointItemPipeline turns on"):
        yield crawler.crawl(base=site.url)
    assert site.total_hits == 0
