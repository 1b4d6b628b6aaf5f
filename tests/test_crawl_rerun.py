"""Running a finished crawl again: real ``scrapy crawl`` processes, real kills.

A completed stage run again fetches nothing and leaves every output as it is, also
when the crawl was killed after Scrapy logged ``Spider closed (finished)``, or
before its stage was marked completed (every item once, as in one uninterrupted
crawl of the site: one item per page). ``CHECKPOINT_ON_COMPLETE = "incremental"``
fetches again what is due: everything with a zero refresh time, nothing with a long one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import PYTHON
from .crawl import PROJECT, Outputs, crawl, crawl_killed_at_gate, run, sigkill
from .site import Site

N_PAGES = 120

#: The line feeds (exactly-once across kills) and a JSON array feed.
LINE_FEEDS = ("items.jl", "items.csv", "own.jl")
FEED_FILES = (*LINE_FEEDS, "items.json")


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.002)
    yield s
    s.close()


def _feeds(outputs: Outputs) -> list[str]:
    """A JSON feed, besides the default ones of ``Outputs``."""
    return ["-o", str(outputs.directory / "items.json")]


def _bytes(outputs: Outputs, names: tuple[str, ...] = FEED_FILES) -> dict[str, bytes]:
    return {name: (outputs.directory / name).read_bytes() for name in names}


def _status(outputs: Outputs) -> Status:
    return read_stage(FileStore(outputs.directory / "checkpoints"), "site").state.status


def _assert_every_item_once(outputs: Outputs) -> None:
    everything = list(range(N_PAGES))
    assert sorted(outputs.jsonlines("items.jl")) == everything
    assert sorted(outputs.jsonlines("own.jl")) == everything
    assert sorted(outputs.csv_pages()) == everything


def test_a_completed_stage_run_again_fetches_nothing_and_leaves_every_feed_byte_identical(
    tmp_path: Path, site: Site
) -> None:
    outputs = Outputs(tmp_path)
    first = crawl(site, outputs, *_feeds(outputs))
    assert first.returncode == 0, first.log[-3000:]
    _assert_every_item_once(outputs)
    written = _bytes(outputs)

    again = crawl(site, outputs, *_feeds(outputs))
    assert again.returncode == 0, again.log[-3000:]
    assert again.hits == {}
    assert _bytes(outputs) == written  # no CSV header, no "[]" appended
    lines = [line for line in again.log.splitlines() if "already completed" in line]
    assert len(lines) == 1, again.log[-3000:]
    assert "-s CHECKPOINT_RESET=True" in lines[0]
    assert f"scrapy-checkpoint --dir {tmp_path / 'checkpoints'} reset site" in lines[0]
    assert "(checkpoint_completed)" in again.log
    # Nothing alarming on this normal path: Scrapy logged the pipeline's NotConfigured
    # message as "WARNING: Disabled <class '...CheckpointItemPipeline'>: the crawl has no
    # open checkpoint".
    assert "Disabled" not in again.log, again.log[-3000:]
    assert _status(outputs) is Status.COMPLETED


def test_an_overwritten_feed_of_a_completed_stage_is_not_emptied(tmp_path: Path,
                                                                  site: Site) -> None:
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}",
           "-O", str(tmp_path / "over.jl"), "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    assert run(site, cmd, tmp_path, cwd=PROJECT).returncode == 0
    written = (tmp_path / "over.jl").read_bytes()
    assert sorted(json.loads(line)["page"] for line in written.splitlines()) == list(
        range(N_PAGES))
    again = run(site, cmd, tmp_path, cwd=PROJECT)
    assert again.returncode == 0, again.log[-3000:]
    assert again.hits == {}
    assert (tmp_path / "over.jl").read_bytes() == written


def test_a_crawl_killed_after_spider_closed_finished_is_not_crawled_again(
    tmp_path: Path, site: Site
) -> None:
    outputs = Outputs(tmp_path)
    killed = crawl_killed_at_gate(site, outputs, "after_finished", *_feeds(outputs))
    assert killed.returncode == -9
    assert "Spider closed (finished)" in killed.log
    _assert_every_item_once(outputs)
    written = _bytes(outputs)

    again = crawl(site, outputs, *_feeds(outputs))
    assert again.returncode == 0, again.log[-3000:]
    assert again.hits == {}
    assert _bytes(outputs) == written
    assert _status(outputs) is Status.COMPLETED


@pytest.mark.parametrize("cadence", [
    ("-s", "CHECKPOINT_SAVE_EVERY=1"),  # every request committed when it is done
    # Nothing due by count or time: what is done waits for the commit when the crawl is idle.
    ("-s", "CHECKPOINT_SAVE_EVERY=100000", "-s", "CHECKPOINT_SAVE_INTERVAL=600"),
])
def test_a_crawl_killed_before_its_stage_was_marked_completed_keeps_every_item_once(
    tmp_path: Path, site: Site, cadence: tuple[str, ...]
) -> None:
    """Killed with every request done but the stage not marked completed: the next run
    resumes, finds nothing to fetch (the idle crawl committed every done request before
    closing) and ends at once with every item once."""
    outputs = Outputs(tmp_path)
    killed = crawl_killed_at_gate(site, outputs, "before_completion", *_feeds(outputs), *cadence)
    assert killed.returncode == -9
    assert "Spider closed" not in killed.log
    assert _status(outputs) is Status.RUNNING  # what the journal holds: not completed
    written = _bytes(outputs, LINE_FEEDS)

    again = crawl(site, outputs, *_feeds(outputs), *cadence)
    assert again.returncode == 0, again.log[-3000:]
    assert "Detected incomplete checkpoint for site" in again.log
    _assert_every_item_once(outputs)
    assert _status(outputs) is Status.COMPLETED
    assert again.hits == {}
    assert _bytes(outputs, LINE_FEEDS) == written
    # The JSON array: closed once by the run that resumed it, no second document appended.
    pages = [item["page"] for item in json.loads((outputs.directory / "items.json").read_bytes())]
    assert sorted(pages) == list(range(N_PAGES))
    assert "ERROR" not in again.log, again.log[-3000:]

    third = crawl(site, outputs, *_feeds(outputs))
    assert third.returncode == 0, third.log[-3000:]
    assert third.hits == {}
    _assert_every_item_once(outputs)


INCREMENTAL = ("-s", "CHECKPOINT_ON_COMPLETE=incremental")


def test_incremental_with_a_zero_refresh_time_fetches_everything_again(
    tmp_path: Path, site: Site
) -> None:
    outputs = Outputs(tmp_path)
    assert crawl(site, outputs).returncode == 0
    again = crawl(site, outputs, *INCREMENTAL, "-s", "CHECKPOINT_REFRESH_AFTER=0s")
    assert again.returncode == 0, again.log[-3000:]
    assert again.hits == dict.fromkeys(range(N_PAGES), 1)
    assert f"{N_PAGES} of its {N_PAGES} request(s) were done 0s or longer ago" in again.log
    twice = sorted(list(range(N_PAGES)) * 2)  # -o and CHECKPOINT_OUTPUT append the new pass
    assert sorted(outputs.jsonlines("items.jl")) == twice
    assert sorted(outputs.jsonlines("own.jl")) == twice
    assert sorted(outputs.csv_pages()) == twice
    assert _status(outputs) is Status.COMPLETED


def test_incremental_with_a_long_refresh_time_fetches_nothing(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    assert crawl(site, outputs).returncode == 0
    written = _bytes(outputs, LINE_FEEDS)
    again = crawl(site, outputs, *INCREMENTAL, "-s", "CHECKPOINT_REFRESH_AFTER=7d")
    assert again.returncode == 0, again.log[-3000:]
    assert again.hits == {}
    assert _bytes(outputs, LINE_FEEDS) == written
    assert "none of its 120 request(s) was done 7d or longer ago" in again.log


def test_an_incremental_pass_overwrites_a_dash_capital_o_feed_with_its_own_items(
    tmp_path: Path, site: Site
) -> None:
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}",
           "-O", str(tmp_path / "over.jl"), "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}",
           *INCREMENTAL, "-s", "CHECKPOINT_REFRESH_AFTER=0s"]
    assert run(site, cmd, tmp_path, cwd=PROJECT).returncode == 0
    again = run(site, cmd, tmp_path, cwd=PROJECT)
    assert again.returncode == 0, again.log[-3000:]
    assert again.hits == dict.fromkeys(range(N_PAGES), 1)
    pages = [json.loads(line)["page"] for line in (tmp_path / "over.jl").read_text().splitlines()]
    assert sorted(pages) == list(range(N_PAGES))


def test_a_killed_incremental_pass_resumes_and_ends_with_every_refetched_item_once(
    tmp_path: Path, site: Site
) -> None:
    outputs = Outputs(tmp_path)
    assert crawl(site, outputs).returncode == 0
    refresh = (*INCREMENTAL, "-s", "CHECKPOINT_REFRESH_AFTER=0s")
    killed = crawl(site, outputs, *refresh, interrupt=sigkill, interrupt_after_hits=40)
    assert killed.returncode == -9
    resumed = crawl(site, outputs, *refresh)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert "Detected incomplete checkpoint for site" in resumed.log
    assert set(killed.hits) | set(resumed.hits) == set(range(N_PAGES))
    twice = sorted(list(range(N_PAGES)) * 2)
    assert sorted(outputs.jsonlines("items.jl")) == twice
    assert sorted(outputs.jsonlines("own.jl")) == twice
    assert _status(outputs) is Status.COMPLETED


def test_a_new_stage_appending_to_a_feed_with_earlier_content_says_so(
    tmp_path: Path, site: Site
) -> None:
    """The checkpoint directory is gone (deleted, or another directory given), the feed
    still holds the earlier run's items: the new stage appends after them, as ``-o``
    does, and says at start that they may be there twice and what to do."""
    import shutil

    outputs = Outputs(tmp_path)
    first = crawl(site, outputs)
    assert first.returncode == 0, first.log[-3000:]
    shutil.rmtree(tmp_path / "checkpoints")
    again = crawl(site, outputs)
    assert again.returncode == 0, again.log[-3000:]
    line = next(line for line in again.log.splitlines() if "already holds" in line)
    assert "items.jl already holds" in line or "own.jl already holds" in line
    assert "that stage site did not write" in line
    assert "move the file aside (or use -O) and run again" in line
    assert sorted(outputs.jsonlines("items.jl")) == sorted(list(range(N_PAGES)) * 2)
