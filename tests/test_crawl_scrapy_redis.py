"""scrapy-redis's scheduler with a stage that is not shared (the file checkpoint).

Real ``scrapy crawl`` processes with ``SCHEDULER = "scrapy_redis.scheduler.Scheduler"``
and its Redis dupefilter (keys under a fresh prefix), killed with SIGKILL or stopped
with Ctrl-C and run again: the feeds end with every page exactly once, as the same
crawl run uninterrupted, with ``SCHEDULER_PERSIST`` on or off. Each is compared item by item with the plain
Scrapy run (the plugin off) of the same crawl.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import REDIS_URL, drop_redis_prefix, require_redis
from .crawl import Outputs, crawl, sigint, sigkill
from .site import Site

N_PAGES = 120


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.002)
    yield s
    s.close()


@pytest.fixture
def keys() -> Iterator[str]:
    """A fresh prefix for scrapy-redis's queue and dupefilter keys, deleted afterwards."""
    require_redis()
    prefix = f"sctest-{uuid.uuid4().hex[:12]}"
    yield prefix
    drop_redis_prefix(prefix)


def scrapy_redis(prefix: str, *, persist: bool) -> list[str]:
    return ["-s", "SCHEDULER=scrapy_redis.scheduler.Scheduler",
            "-s", "DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter",
            "-s", f"REDIS_URL={REDIS_URL}", "-s", f"SCHEDULER_PERSIST={persist}",
            "-s", f"SCHEDULER_QUEUE_KEY={prefix}:%(spider)s:requests",
            "-s", f"SCHEDULER_DUPEFILTER_KEY={prefix}:%(spider)s:dupefilter"]


def plain_pages(tmp_path: Path, site: Site, prefix: str) -> list[int]:
    """The pages plain Scrapy (the plugin off) writes for the same crawl, uninterrupted."""
    plain = Outputs(tmp_path / "plain")
    plain.directory.mkdir()
    run = crawl(site, plain, *scrapy_redis(f"{prefix}-plain", persist=False),
                "-s", "CHECKPOINT_ENABLED=False")
    assert run.returncode == 0, run.log[-3000:]
    assert set(plain.jsonlines("items.jl")) == set(range(N_PAGES))
    return sorted(plain.jsonlines("items.jl"))


def assert_same_items(name: str, pages: list[int], plain: list[int]) -> None:
    """Every page plain Scrapy wrote, none lost, none written more often than plain Scrapy
    wrote it. (Plain Scrapy writes page 0 twice: the spider's start request for it has
    dont_filter, so the dupefilter lets a later link to it through.)"""
    assert set(pages) == set(plain), f"{name}: lost {sorted(set(plain) - set(pages))}"
    extra = Counter(pages) - Counter(plain)
    assert not extra, f"{name}: repeated {dict(extra)}"


def test_an_uninterrupted_crawl_ends_as_in_plain_scrapy(tmp_path: Path, site: Site,
                                                        keys: str) -> None:
    expected = plain_pages(tmp_path, site, keys)
    outputs = Outputs(tmp_path / "checkpointed")
    outputs.directory.mkdir()
    run = crawl(site, outputs, *scrapy_redis(keys, persist=False))
    assert run.returncode == 0, run.log[-3000:]
    assert set(run.hits) == set(range(N_PAGES))
    for name, pages in (("items.jl", outputs.jsonlines("items.jl")),
                        ("items.csv", outputs.csv_pages()),
                        ("own.jl", outputs.jsonlines("own.jl"))):
        assert_same_items(name, pages, expected)
    state = read_stage(FileStore(outputs.directory / "checkpoints"), "site").state
    assert state.status is Status.COMPLETED
    assert state.progress.processed_items == N_PAGES


@pytest.mark.parametrize("persist", [True, False], ids=["persist", "no-persist"])
@pytest.mark.parametrize("stop", [sigkill, sigint], ids=["sigkill", "sigint"])
def test_stopped_and_resumed_crawls_lose_and_repeat_nothing(
    tmp_path: Path, site: Site, keys: str, persist: bool, stop: object
) -> None:
    expected = plain_pages(tmp_path, site, keys)
    outputs = Outputs(tmp_path / "checkpointed")
    outputs.directory.mkdir()
    args = scrapy_redis(keys, persist=persist)
    store = FileStore(outputs.directory / "checkpoints")
    stopped = 0
    for _ in range(3):  # stopped after 25 more hits each time, while the crawl lasts
        crawl(site, outputs, *args, interrupt=stop,  # type: ignore[arg-type]
              interrupt_after_hits=25)
        if read_stage(store, "site").state.status is Status.COMPLETED:
            break
        stopped += 1
    assert stopped >= 2, "the crawl ended before it could be stopped twice"
    if stopped == 3:
        final = crawl(site, outputs, *args)
        assert final.returncode == 0, final.log[-3000:]
        assert read_stage(store, "site").state.status is Status.COMPLETED
    for name, pages in (("items.jl", outputs.jsonlines("items.jl")),
                        ("items.csv", outputs.csv_pages()),
                        ("own.jl", outputs.jsonlines("own.jl"))):
        assert_same_items(name, pages, expected)


def test_a_new_stage_on_a_queue_that_holds_requests_is_refused_until_reset(
    tmp_path: Path, site: Site, keys: str
) -> None:
    """Requests in scrapy-redis's queue when the stage has no record belong to another
    crawl (several crawls on one queue need a shared stage) or were left by a crawl without
    the checkpoint: the crawl stops rather than empty the queue."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.zadd(f"{keys}:site:requests", {b"a request of another crawl": 0})
    client.close()
    outputs = Outputs(tmp_path)
    args = scrapy_redis(keys, persist=True)
    refused = crawl(site, outputs, *args)
    assert refused.returncode == 1, refused.log[-3000:]
    assert f"scrapy-redis's queue {keys}:site:requests holds requests" in refused.log
    assert "CHECKPOINT_SHARED = True" in refused.log
    assert "Traceback" not in refused.log
    assert refused.hits == {}
    reset = crawl(site, outputs, *args, "-s", "CHECKPOINT_RESET=True")
    assert reset.returncode == 0, reset.log[-3000:]
    assert set(outputs.jsonlines("items.jl")) == set(range(N_PAGES))
