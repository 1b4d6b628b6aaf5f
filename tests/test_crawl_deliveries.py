"""Items handed to the pipelines are not handed again after a crash (scrapy_checkpoint.crawl.deliveries).

Real ``scrapy runspider`` processes killed with SIGKILL: listing pages whose callbacks
yield many items, each going through a pipeline that takes a round trip to the test
site, so units stay in flight across many commits. After every kill, the items the
stage committed as delivered (every item of a done unit, the delivered ordinals of the
units in flight) must never reach the pipeline again; the feeds end with every item
exactly once.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from scrapy import Request
from scrapy.utils.request import fingerprint

from scrapy_checkpoint import read_stage
from scrapy_checkpoint.crawl.deliveries import DELIVERED_ATTACHED, START_DELIVERED_ATTACHED, from_ranges
from scrapy_checkpoint.journal.keys import key_code
from scrapy_checkpoint.stores import open_store

from .conftest import PYTHON, REDIS_URL
from .crawl import run, sigkill
from .site import Site

PAGES = 10
ITEMS = 12  # per page

SPIDER = '''
import json

import scrapy
from scrapy.utils.defer import maybe_deferred_to_future


class HandedPipeline:
    """Logs every item it is handed (flushed: a kill -9 keeps it), after a round trip."""

    def __init__(self, crawler):
        self.crawler = crawler
        self.log = open(crawler.settings["HANDED_LOG"], "a")

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    async def process_item(self, item):
        self.log.write(json.dumps([item["page"], item["n"]]) + "\\n")
        self.log.flush()
        request = scrapy.Request(f"{self.crawler.spider.base}/item/{item['page']}/{item['n']}")
        await maybe_deferred_to_future(self.crawler.engine.download(request))
        return item


class ListingSpider(scrapy.Spider):
    name = "listing"
    custom_settings = {"ITEM_PIPELINES": {HandedPipeline: 300}, "CONCURRENT_ITEMS": 1}

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        for page in range(PAGES):
            yield scrapy.Request(f"{self.base}/p/{page}")

    def parse(self, response):
        page = int(response.url.rsplit("/", 1)[1])
        for n in range(ITEMS):
            yield {"page": page, "n": n}
'''.replace("range(PAGES)", f"range({PAGES})").replace("range(ITEMS)", f"range({ITEMS})")

Item = tuple[int, int]


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(PAGES, delay=0.005)
    yield s
    s.close()


def _command(site: Site, directory: Path) -> list[str]:
    spider = directory / "listing.py"
    if not spider.exists():
        spider.write_text(SPIDER)
    return [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
            "-o", f"{directory / 'items.jl'}", "-o", f"{directory / 'items.csv'}",
            "-s", f"CHECKPOINT_OUTPUT={directory / 'own.jl'}",
            "-s", "ADDONS={\"scrapy_checkpoint.Addon\": 100}",
            "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}",
            "-s", f"HANDED_LOG={directory / 'handed.jl'}",
            "-s", "CHECKPOINT_SAVE_INTERVAL=0.1", "-s", "LOG_LEVEL=INFO"]


def _handed(directory: Path) -> list[Item]:
    path = directory / "handed.jl"
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()  # type: ignore[misc]
            if line.endswith("]")]


def _committed_as_delivered(directory: Path) -> tuple[set[Item], int]:
    """Items the stage holds as delivered: every item of a done page, and the delivered
    ordinals of pages in flight; and how many of the latter there are."""
    view = read_stage(open_store(directory / "checkpoints"), "listing")
    assert view._live is not None
    done = view._live.done
    codes = {key_code(fingerprint(Request(f"{base}/p/{page}"))): page
             for base in {_BASE} for page in range(PAGES)}
    delivered: set[Item] = set()
    for code, page in codes.items():
        if code in done:
            delivered.update((page, n) for n in range(ITEMS))
    partial = 0
    for key, ranges in (view.attached.get(DELIVERED_ATTACHED) or {}).items():
        page = codes[int(key, 16)]
        for n in from_ranges(ranges):
            delivered.add((page, n))
            partial += 1
    return delivered, partial


_BASE = ""


def _kill_once_partly_delivered(directory: Path) -> object:
    """SIGKILL once the stage has committed some items of a page still in flight (polls
    the stage's committed state: the condition, not a time)."""
    def interrupt(proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 600  # a guard against a hang
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if _committed_as_delivered(directory)[1]:
                    break
            except Exception:  # the stage may not exist yet, or be mid-write
                pass
            time.sleep(0.01)  # polls the committed state for the condition
        sigkill(proc)
    return interrupt


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11])
def test_items_committed_as_delivered_never_reach_the_pipelines_again(
        site: Site, tmp_path: Path, seed: int) -> None:
    global _BASE
    _BASE = site.url
    rng = random.Random(seed)
    expected = Counter((page, n) for page in range(PAGES) for n in range(ITEMS))
    cmd = _command(site, tmp_path)
    partly = last = 0
    for kill in range(5):
        before = len(_handed(tmp_path))
        delivered = _committed_as_delivered(tmp_path)[0] if kill else set()
        interrupt = _kill_once_partly_delivered(tmp_path) if kill == 0 else sigkill
        result = run(site, cmd, tmp_path, cwd=tmp_path, interrupt=interrupt,  # type: ignore[arg-type]
                     interrupt_after_hits=rng.randint(5, PAGES * ITEMS // 3))
        handed_now = _handed(tmp_path)[before:]
        again = [item for item in handed_now if item in delivered]
        assert not again, f"kill {kill}: items committed as delivered handed again: {again[:5]}"
        if result.returncode != -9:
            break
        last = _committed_as_delivered(tmp_path)[1]
        partly += last
    assert partly, "no kill left a page in flight with items committed as delivered"
    before = len(_handed(tmp_path))
    delivered = _committed_as_delivered(tmp_path)[0]
    view_totals_before = read_stage(open_store(tmp_path / "checkpoints"), "listing").totals
    final = run(site, cmd, tmp_path, cwd=tmp_path)
    assert final.returncode == 0, final.log[-3000:]
    assert not [item for item in _handed(tmp_path)[before:] if item in delivered]
    if "checkpoint_completed" not in final.log:
        scraped = view_totals_before.get("item_scraped_count", 0)
        assert f"earlier runs scraped {scraped} item(s)" in final.log
        if last:  # each dropped once, before the pipelines
            assert f"'checkpoint/items_already_delivered': {last}," in final.log
    assert set(_handed(tmp_path)) == set(expected)  # nothing lost
    view = read_stage(open_store(tmp_path / "checkpoints"), "listing")
    assert view.totals["item_scraped_count"] == len(expected)  # each counted once
    for name in ("items.jl", "own.jl"):  # every item once in the outputs
        lines = (tmp_path / name).read_text().splitlines()
        assert Counter((json.loads(line)["page"], json.loads(line)["n"]) for line in lines) \
            == expected, name
    assert len((tmp_path / "items.csv").read_text().splitlines()) == 1 + len(expected)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["checkpoint", "scrapy-redis"])
def test_a_shared_stage_killed_and_resumed_by_new_workers_writes_each_item_once(
        site: Site, tmp_path: Path, redis_backend: str, scheduler: str) -> None:
    """A unit adopted from a dead worker is redone whole: the new worker does not know what
    the dead one delivered, so the items of units in flight are kept only when done."""
    rng = random.Random(5)
    expected = Counter((page, n) for page in range(PAGES) for n in range(ITEMS))
    cmd = [*_command(site, tmp_path), "-s", f"CHECKPOINT_BACKEND={redis_backend}",
           "-s", "CHECKPOINT_SHARED=True"]
    if scheduler == "scrapy-redis":
        prefix = redis_backend.rsplit("prefix=", 1)[1]
        cmd += ["-s", "SCHEDULER=scrapy_redis.scheduler.Scheduler",
                "-s", "DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter",
                "-s", f"REDIS_URL={REDIS_URL}", "-s", "SCHEDULER_PERSIST=True",
                "-s", f"SCHEDULER_QUEUE_KEY={prefix}:requests",
                "-s", f"SCHEDULER_DUPEFILTER_KEY={prefix}:dupefilter"]
    for _ in range(3):
        result = run(site, cmd, tmp_path, cwd=tmp_path, interrupt=sigkill,
                     interrupt_after_hits=rng.randint(PAGES, PAGES * ITEMS // 2))
        if result.returncode != -9:
            break
    final = run(site, cmd, tmp_path, cwd=tmp_path)
    assert final.returncode == 0, final.log[-3000:]
    for name in ("items.jl", "own.jl"):
        lines = (tmp_path / name).read_text().splitlines()
        assert Counter((json.loads(line)["page"], json.loads(line)["n"]) for line in lines) \
            == expected, name
    assert set(_handed(tmp_path)) == set(expected)


START_ITEMS = 7

START_SPIDER = '''
import scrapy


class StartItemsSpider(scrapy.Spider):
    name = "start_items"

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        for n in range(START_ITEMS):
            yield {"start": n}
        yield scrapy.Request(f"{self.base}/p/0")

    def parse(self, response):
        yield {"page": response.url}
        yield from response.follow_all(response.css("a::attr(href)").getall())
'''.replace("range(START_ITEMS)", f"range({START_ITEMS})")


def _start_delivered(directory: Path) -> list[int]:
    view = read_stage(open_store(directory / "checkpoints"), "start_items")
    return list(from_ranges(view.attached.get(START_DELIVERED_ATTACHED)))


@pytest.mark.parametrize("feed", ["items.jl", "items.json", "items.xml", "items-%(batch_id)d.jl"])
def test_items_of_start_are_written_once_when_an_earlier_run_committed_them(
        tmp_path: Path, feed: str) -> None:
    # start() runs again from the top on every run: the items it yields that a killed run
    # committed are not written again, as an uninterrupted crawl writes each once.
    site = Site(PAGES * 4, delay=0.005)
    try:
        spider = tmp_path / "start_items.py"
        spider.write_text(START_SPIDER)
        cmd = [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
               "-o", str(tmp_path / feed), "-s", f"CHECKPOINT_OUTPUT={tmp_path / 'own.jl'}",
               "-s", "ADDONS={\"scrapy_checkpoint.Addon\": 100}",
               "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}", "-s", "CHECKPOINT_SAVE_EVERY=1",
               "-s", "CONCURRENT_REQUESTS=2", "-s", "LOG_LEVEL=INFO"]
        if "batch_id" in feed:  # files of 3 items: start()'s fill the first ones
            cmd += ["-s", "FEED_EXPORT_BATCH_ITEM_COUNT=3"]
        killed = run(site, cmd, tmp_path, cwd=tmp_path, interrupt=sigkill,
                     interrupt_after_hits=PAGES)
        assert killed.returncode == -9, killed.log[-3000:]
        delivered = _start_delivered(tmp_path)  # committed by the killed run
        final = run(site, cmd, tmp_path, cwd=tmp_path)
        assert final.returncode == 0, final.log[-3000:]
        assert "[start_items] Completed." in final.log, final.log[-3000:]
    finally:
        site.close()
    own = (tmp_path / "own.jl").read_text().splitlines()
    starts = Counter(json.loads(line)["start"] for line in own if '"start"' in line)
    assert starts == Counter(range(START_ITEMS))
    text = "".join(path.read_text() for path in sorted(tmp_path.glob(feed.replace("%(batch_id)d", "*"))))
    if feed.endswith(".json"):
        found = [item["start"] for item in json.loads(text) if "start" in item]
    elif feed.endswith(".xml"):
        found = [int(n) for n in re.findall(r"<start>(\d+)</start>", text)]
    else:
        found = [json.loads(line)["start"] for line in text.splitlines() if '"start"' in line]
    assert Counter(found) == Counter(range(START_ITEMS)), feed
    assert len([line for line in own if '"page"' in line]) == PAGES * 4
    # The kill came after the commit of start()'s items: the resume dropped them all.
    assert delivered == list(range(START_ITEMS))
    assert f"'checkpoint/items_already_delivered': {START_ITEMS}," in final.log
