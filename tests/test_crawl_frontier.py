"""The frontier on disk, with real ``scrapy crawl`` processes: queued requests live in the
journal, a resume downloads before it reads the frontier, priorities survive a kill, and
a wide crawl killed many times ends with every page's item exactly once."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import Status, read_stage
from scrapy_checkpoint.stores import open_store

from .crawl import Outputs, crawl, sigkill
from .site import Site

#: Breadth first (Scrapy's recipe): on a wide site the frontier grows to most of the site.
BREADTH_FIRST = ("-s", "DEPTH_PRIORITY=1",
                 "-s", "SCHEDULER_MEMORY_QUEUE=scrapy.squeues.FifoMemoryQueue")


@pytest.fixture
def leaves() -> Iterator[Site]:
    """Page 0 links to 300 leaves (which link back to page 0 only)."""
    s = Site(301, fanout=300)
    yield s
    s.close()


def test_resumed_requests_come_out_by_priority(tmp_path: Path, leaves: Site) -> None:
    outputs = Outputs(tmp_path)
    one_at_a_time = ("-a", "priority=1", "-s", "CONCURRENT_REQUESTS=1",
                     "-s", "CHECKPOINT_FRONTIER_MEMORY=0", "-s", "CHECKPOINT_SAVE_EVERY=1")
    first = crawl(leaves, outputs, *one_at_a_time, interrupt=sigkill, interrupt_after_hits=60)
    assert first.returncode == -9
    resumed_at = len(leaves.order)
    second = crawl(leaves, outputs, *one_at_a_time)
    assert second.returncode == 0, second.log[-3000:]
    fetched = [p for p in leaves.order[resumed_at:] if p != 0]
    assert len(fetched) > 200  # most leaves were still pending at the kill
    # The one in flight at the kill comes first again; then highest priority first, and
    # within a priority the last queued first (Scrapy's LIFO).
    order = [(page * 7 % 10, page) for page in fetched[1:]]
    assert order == sorted(order, reverse=True)
    assert sorted(outputs.jsonlines("items.jl")) == list(range(301))


def test_requests_come_out_in_the_order_plain_scrapy_sends_them(tmp_path: Path) -> None:
    """Start requests (first in first out, after the others of their priority), links
    (last in first out) and priorities: one request at a time, the add-on fetches the
    pages in the very order plain Scrapy does."""
    site = Site(400, fanout=4)
    try:
        orders = []
        for name, extra in (("plain", ("-s", "CHECKPOINT_ENABLED=False")), ("addon", ())):
            outputs = Outputs(tmp_path / name)
            (tmp_path / name).mkdir()
            begin = len(site.order)
            run = crawl(site, outputs, "-a", "starts=30", "-a", "priority=1",
                        "-s", "CONCURRENT_REQUESTS=1", "-s", "CHECKPOINT_FRONTIER_MEMORY=5",
                        *extra)
            assert run.returncode == 0, run.log[-3000:]
            orders.append(site.order[begin:])
        assert len(orders[0]) == 400
        assert orders[1] == orders[0]
    finally:
        site.close()


def test_a_resume_downloads_before_it_reads_the_frontier(tmp_path: Path) -> None:
    site = Site(6000, fanout=100)
    try:
        outputs = Outputs(tmp_path)
        memory = (*BREADTH_FIRST, "-s", "CHECKPOINT_FRONTIER_MEMORY=0",
                  "-s", "CHECKPOINT_SAVE_EVERY=10")
        first = crawl(site, outputs, *memory, interrupt=sigkill, interrupt_after_hits=200)
        assert first.returncode == -9
        pending = read_stage(open_store(outputs.location), "site").state.pending_units
        assert pending >= 2000
        probe = tmp_path / "probe.json"
        second = crawl(site, outputs, *memory, "-a", f"probe={probe}")
        assert second.returncode == 0, second.log[-3000:]
        at_first_response = json.loads(probe.read_text())
        # Every pending request is queued again, but by its unit's code: when the first
        # response arrives only the requests sent so far have been rebuilt.
        assert at_first_response["resumed"] >= pending - 50
        assert at_first_response["rebuilt"] <= 50
        assert sorted(outputs.jsonlines("items.jl")) == list(range(6000))
    finally:
        site.close()


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "store", "order"), [
    (21, "file", "breadth"), (22, "file", "depth"), (23, "redis", "breadth")])
def test_a_wide_crawl_killed_many_times_loses_and_repeats_nothing(
        tmp_path: Path, seed: int, store: str, order: str,
        request: pytest.FixtureRequest) -> None:
    """Breadth first, the frontier grows past ten thousand requests, most rebuilt from the
    journal; depth first (Scrapy's default LIFO), every request is rebuilt."""
    n_pages = 20000
    site = Site(n_pages, fanout=100)
    try:
        rng = random.Random(seed)
        backend = request.getfixturevalue("redis_backend") if store == "redis" else None
        outputs = Outputs(tmp_path, backend)
        extra = (*(BREADTH_FIRST if order == "breadth" else ()),
                 "-s", f"CHECKPOINT_FRONTIER_MEMORY={100 if order == 'breadth' else 0}",
                 "-s", "CONCURRENT_REQUESTS=16", "-s", "CONCURRENT_REQUESTS_PER_DOMAIN=16")
        largest = 0
        for kill in range(6):
            final = kill == 5
            run = crawl(site, outputs, *extra, interrupt=None if final else sigkill,
                        interrupt_after_hits=rng.randint(100, n_pages // 5))
            if final:
                assert run.returncode == 0, run.log[-3000:]
                break
            assert run.returncode == -9
            largest = max(largest, read_stage(open_store(outputs.location),
                                              "site").state.pending_units)
        if order == "breadth":
            assert largest >= 10000  # ten thousand pending requests and more at a kill
        for name in ("items.jl", "own.jl"):
            pages = outputs.jsonlines(name)
            assert sorted(pages) == list(range(n_pages)), f"{name}: lost or repeated items"
        assert sorted(outputs.csv_pages()) == list(range(n_pages))
        view = read_stage(open_store(outputs.location), "site")
        assert view.state.status is Status.COMPLETED
        assert view.state.pending_units == 0
    finally:
        site.close()
