"""``spider.state``: restored before ``start()``, journaled only at moments when no callback
runs (so with the requests whose callbacks changed it), JSON only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.utils.defer import deferred_from_coro

from scrapy_checkpoint import EnhancedCheckpoint, FileStore, read_stage
from scrapy_checkpoint.crawl.spider_state import (
    SpiderStateError,
    SpiderStateKeeper,
    check_json,
    encode_state,
)
from scrapy_checkpoint.view import StageView

from ...site import Site
from ..conftest import MakeCrawler

N_PAGES = 20


class CountingSpider(scrapy.Spider):
    """Counts the pages of the site in ``self.state``; records what ``start()`` found there.

    ``stop_after``: after that many pages in this run, stop as Ctrl-C does."""

    name = "tree"

    def __init__(self, base: str, stop_after: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base, self.stop_after, self.seen = base, stop_after, 0
        self.found_at_start: dict[str, Any] | None = None

    async def start(self) -> AsyncIterator[Any]:
        self.found_at_start = dict(self.state)
        yield scrapy.Request(f"{self.base}/p/0")

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        self.state["pages"] = self.state.get("pages", 0) + 1
        self.seen += 1
        if self.seen == self.stop_after:
            deferred_from_coro(self.crawler.stop_async())
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)


def _stage(tmp_path: Path) -> StageView:
    return read_stage(FileStore(tmp_path / "checkpoints"), "tree")


@pytest_twisted.inlineCallbacks
def test_state_is_restored_before_start_and_counts_each_page_once(
    make_crawler: MakeCrawler, site: Site, tmp_path: Path
) -> Iterator[Any]:
    first = make_crawler(CountingSpider, CHECKPOINT_SAVE_EVERY=1)
    yield first.crawl(base=site.url, stop_after=6)
    view = _stage(tmp_path)
    assert view.state.done_units >= 6
    assert view.user_state == {"pages": view.state.done_units}
    assert first.spider.found_at_start == {}

    second = make_crawler(CountingSpider, CHECKPOINT_SAVE_EVERY=1)
    yield second.crawl(base=site.url)
    assert second.spider.found_at_start == {"pages": view.state.done_units}
    assert second.spider.state == {"pages": N_PAGES}
    assert _stage(tmp_path).user_state == {"pages": N_PAGES}


@pytest.mark.parametrize(("value", "where"), [
    ({"a": {1, 2}}, "spider.state['a'] is a set"),
    ({"a": [1, (2, 3)]}, "spider.state['a'][1] is a tuple"),
    ({"a": {"b": object()}}, "spider.state['a']['b'] is a object"),
    ({"a": {3: "x"}}, "spider.state['a'] has the key 3 (int), but JSON keys are strings"),
])
def test_a_value_json_cannot_hold_is_named_by_its_key(value: Any, where: str) -> None:
    with pytest.raises(SpiderStateError) as info:
        check_json(value)
    assert str(info.value).startswith(where)


def test_json_values_encode_compactly() -> None:
    assert encode_state({"a": [1, 2.5, None, True, "é"], "b": {}}) == \
        '{"a":[1,2.5,null,true,"é"],"b":{}}'
    with pytest.raises(SpiderStateError, match=r"spider\.state is a list, not a dict"):
        encode_state([])


class _Spider:
    state: Any


def test_the_gate_waits_for_a_moment_without_callbacks_only_while_state_is_kept(
    tmp_path: Path,
) -> None:
    idle = [False]
    with EnhancedCheckpoint(tmp_path, "s") as cp:
        cp.start()
        keeper = SpiderStateKeeper(cp, lambda: idle[0])
        spider = _Spider()
        keeper.attach(spider)
        assert spider.state == {}
        assert keeper.ready()  # nothing kept: never waits
        spider.state["n"] = 1
        assert not keeper.ready()
        assert keeper.fields() is None  # a callback runs: its change is not taken
        idle[0] = True
        assert keeper.ready()
        assert keeper.fields() == {"us": {"n": 1}}
        assert keeper.fields() is None  # unchanged since
        spider.state["bad"] = {1}
        with pytest.raises(SpiderStateError):
            keeper.fields()
        assert keeper.ready()  # broken: the crawl stops, nothing waits for it


def test_due_commits_wait_for_the_gate_and_status_changes_do_not(tmp_path: Path) -> None:
    open_gate = [False]
    cp = EnhancedCheckpoint(tmp_path, "s", save_every=1)
    cp.start()
    cp.set_commit_gate(lambda: open_gate[0])
    cp.add_commit_hook(lambda: {"us": {"done": cp.live.processed}})
    for i in range(3):
        cp.update(processed=1, successful=1, index=i)
    cp.drain_io()
    assert read_stage(FileStore(tmp_path), "s").state.done_units == 0  # all waiting
    open_gate[0] = True
    cp.update(processed=1, successful=1, index=3)
    view = read_stage(FileStore(tmp_path), "s")
    assert (view.state.done_units, view.user_state) == (4, {"done": 4})
    open_gate[0] = False
    cp.update(processed=1, successful=1, index=4)
    cp.pause()  # a status change commits whatever the gate says
    cp.close()
    view = read_stage(FileStore(tmp_path), "s")
    assert (view.state.done_units, view.user_state) == (5, {"done": 5})


def test_user_state_and_totals_are_carried_by_snapshots(tmp_path: Path) -> None:
    with EnhancedCheckpoint(tmp_path, "s") as cp:
        cp.start()
        cp.add_commit_hook(lambda: {"us": {"k": [1]}, "sx": {"item_scraped_count": 3}})
        cp.update(processed=1, index=0)
    # close() wrote a snapshot and started a new segment: the values come from it.
    assert FileStore(tmp_path).load("s").snapshot is not None
    view = read_stage(FileStore(tmp_path), "s")
    assert (view.user_state, view.totals) == ({"k": [1]}, {"item_scraped_count": 3})
