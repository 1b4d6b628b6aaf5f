"""Items at the edges: a unit's callback run twice in one run, an errback's items and the
callback's of the same request, a unit requeued after its errback ran, PostgreSQL URLs and
messages, a NUL character in a SQLPipeline row (real scrapy processes)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from scrapy_checkpoint.cli import main as cli_main

from .conftest import PYTHON
from .crawl import run
from .site import Site

#: A pipeline making a round trip to the test site per item, so that commits happen while
#: a callback's items are in the pipelines (the spiders below start with it).
ROUND_TRIP = '''
import scrapy
from scrapy.utils.defer import maybe_deferred_to_future


class RoundTripPipeline:
    def __init__(self, crawler):
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    async def process_item(self, item):
        request = scrapy.Request(f"{self.crawler.spider.base}/item/{item['n']}")
        await maybe_deferred_to_future(self.crawler.engine.download(request))
        return item
'''

AGAIN = ROUND_TRIP + '''

class Again(scrapy.Spider):
    name = "again"
    custom_settings = {"ITEM_PIPELINES": {RoundTripPipeline: 300}, "CONCURRENT_ITEMS": 1}
    rounds = 0

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        yield scrapy.Request(f"{self.base}/p/0", dont_filter=True)

    def parse(self, response):
        self.rounds += 1
        for n in range(12):
            yield {"round": self.rounds, "n": n}
        if self.rounds == 1:
            yield response.request  # poll the same page once more (the same request)
'''


def _runspider(spider: Path, site: Site, tmp_path: Path, *extra: str) -> list[str]:
    """``scrapy runspider`` of ``spider`` on ``site`` with the add-on, its checkpoints in
    ``tmp_path / "cp"``, and ``extra`` arguments."""
    return [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
            "-s", "ADDONS={\"scrapy_checkpoint.Addon\": 100}",
            "-s", f"CHECKPOINT_DIR={tmp_path / 'cp'}", "-s", "LOG_LEVEL=INFO", *extra]


def test_a_unit_whose_callback_runs_twice_in_one_run_keeps_every_item(tmp_path: Path) -> None:
    site = Site(1, delay=0.01)
    try:
        spider = tmp_path / "again.py"
        spider.write_text(AGAIN)
        cmd = _runspider(spider, site, tmp_path, "-o", f"{tmp_path / 'items.jl'}",
                         "-s", "CHECKPOINT_SAVE_INTERVAL=0.1")
        result = run(site, cmd, tmp_path, cwd=tmp_path)
    finally:
        site.close()
    assert result.returncode == 0, result.log[-3000:]
    items = [json.loads(line) for line in (tmp_path / "items.jl").read_text().splitlines()]
    # Plain Scrapy (CHECKPOINT_ENABLED=False) writes all 24.
    assert "items_already_delivered" not in result.log
    assert len(items) == 24, sorted((i["round"], i["n"]) for i in items)


ERRBACK = '''
import scrapy


class Errb(scrapy.Spider):
    name = "errb"
    custom_settings = {"RETRY_TIMES": 0,
                       "ITEM_PIPELINES": {"scrapy_checkpoint.pipelines.SQLPipeline": 800}}

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        yield scrapy.Request(f"{self.base}/p/0", errback=self.failed)

    def parse(self, response):
        yield {"url": response.url, "title": response.css("title::text").get()}

    def failed(self, failure):
        yield {"url": failure.request.url, "error": repr(failure.value)}
'''


def test_a_requeued_unit_that_failed_into_its_errback_writes_its_real_item(
        tmp_path: Path) -> None:
    site = Site(1, fail=frozenset({0}))
    try:
        spider = tmp_path / "errb.py"
        spider.write_text(ERRBACK)
        db = tmp_path / "items.db"
        cmd = _runspider(spider, site, tmp_path, "-s", f"CHECKPOINT_SQL_URL=sqlite:///{db}")
        first = run(site, cmd, tmp_path, cwd=tmp_path)
        assert first.returncode == 0, first.log[-3000:]
        with contextlib.suppress(SystemExit):
            cli_main(["--dir", str(tmp_path / "cp"), "requeue", "errb", "--failed"],
                     standalone_mode=False)
        site.fail.clear()  # the page answers now
        second = run(site, cmd, tmp_path, cwd=tmp_path)
        assert second.returncode == 0, second.log[-3000:]
        assert "'item_scraped_count': 1" in second.log
    finally:
        site.close()
    rows = [json.loads(data) for (data,) in
            sqlite3.connect(db).execute("SELECT data FROM items").fetchall()]
    assert any(row.get("title") == "Page 0" for row in rows), rows


PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def test_a_postgresql_url_with_a_space_in_a_parameter_connects() -> None:
    from scrapy_checkpoint.stores import open_store

    store = open_store(PG + "?options=-c%20statement_timeout%3D0")  # '+' reaches libpq
    store.close()


@pytest.mark.parametrize("password", ["s3cr%zzet", "p@ssword"])
def test_no_part_of_a_postgresql_password_in_a_connection_error(password: str) -> None:
    from scrapy_checkpoint.errors import CheckpointError
    from scrapy_checkpoint.stores import open_store

    with pytest.raises(CheckpointError) as info:
        open_store(f"postgresql://user:{password}@127.0.0.1:5432/postgres")
    assert password.rsplit("@", maxsplit=1)[-1] not in str(info.value)


def test_an_item_with_a_nul_character_does_not_stop_sqlpipeline_on_postgresql() -> None:
    import sqlalchemy as sa
    from scrapy.utils.serialize import ScrapyJSONEncoder

    from scrapy_checkpoint.crawl.sql_table import SQLRows

    rows = SQLRows.connect(PG, "nul_items", ScrapyJSONEncoder().encode)
    try:
        rows.write([{"stage": "s", "item_id": "a:0", "data": {"title": "x\x00y"}}])
    finally:
        with rows.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS nul_items"))
        rows.close()


ERRBACK_THEN_CALLBACK = ROUND_TRIP + '''

class Flaky(scrapy.Spider):
    name = "flaky"
    custom_settings = {"RETRY_TIMES": 0, "CONCURRENT_ITEMS": 1,
                       "ITEM_PIPELINES": {RoundTripPipeline: 300}}

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        yield scrapy.Request(f"{self.base}/p/0", errback=self.failed)

    def parse(self, response):
        for n in range(20):
            yield {"kind": "page", "n": n}

    def failed(self, failure):
        for n in range(20):
            yield {"kind": "error", "n": n}
'''


def test_items_an_errback_yielded_before_a_kill_do_not_drop_the_callbacks_items(
        tmp_path: Path) -> None:
    """The errback's items (the page failed) are never kept as delivered: killed in the
    middle of them, then run again with the page answering, the callback's items (which
    count from 0 too) are all written."""
    from scrapy_checkpoint import read_stage
    from scrapy_checkpoint.crawl.deliveries import DELIVERED_ATTACHED
    from scrapy_checkpoint.stores import open_store

    from .crawl import sigkill

    site = Site(1, fail=frozenset({0}), delay=0.01)
    try:
        spider = tmp_path / "flaky.py"
        spider.write_text(ERRBACK_THEN_CALLBACK)
        cmd = _runspider(spider, site, tmp_path, "-o", f"{tmp_path / 'items.jl'}",
                         "-s", "CHECKPOINT_SAVE_INTERVAL=0.1")
        # The page, then one round trip per errback item: killed after the 10th item.
        first = run(site, cmd, tmp_path, cwd=tmp_path, interrupt=sigkill,
                    interrupt_after_hits=11)
        assert first.returncode == -9, first.log[-2000:]
        view = read_stage(open_store(tmp_path / "cp"), "flaky")
        assert not view.attached.get(DELIVERED_ATTACHED)  # an errback's items: never kept
        site.fail.clear()  # the page answers now: its callback runs
        second = run(site, cmd, tmp_path, cwd=tmp_path)
        assert second.returncode == 0, second.log[-3000:]
    finally:
        site.close()
    items = [json.loads(line) for line in (tmp_path / "items.jl").read_text().splitlines()]
    pages = sorted(i["n"] for i in items if i["kind"] == "page")
    assert pages == list(range(20)), pages
    assert not [i for i in items if i["kind"] == "error"]  # the killed run's: not written
