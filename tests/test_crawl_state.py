"""What a crawl carries across runs besides its frontier: ``spider.state``, Scrapy's counters
and ``CLOSESPIDER_*`` limits, proven with real ``scrapy crawl`` processes killed with SIGKILL
and compared with plain Scrapy runs of the same spider.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import read_stage
from scrapy_checkpoint.stores import open_store

from .conftest import PYTHON
from .crawl import PROJECT, CrawlRun, run, sigkill
from .site import Site

N_PAGES = 300
PLAIN = ("-s", "CHECKPOINT_ENABLED=False")


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.004)
    yield s
    s.close()


def scrapy_crawl(site: Site, directory: Path, spider: str, *args: str,
                 kill_after_hits: int | None = None) -> CrawlRun:
    """``scrapy crawl SPIDER`` of the test project, its feed ``items.jl`` and its checkpoint in
    ``directory``; SIGKILLed once the site answered ``kill_after_hits`` requests."""
    directory.mkdir(exist_ok=True)
    cmd = [PYTHON, "-m", "scrapy", "crawl", spider, "-a", f"base={site.url}",
           "-o", str(directory / "items.jl"), "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}",
           *args]
    return run(site, cmd, directory, cwd=PROJECT,
               interrupt=sigkill if kill_after_hits is not None else None,
               interrupt_after_hits=kill_after_hits)


def items(directory: Path) -> list[dict[str, Any]]:
    text = (directory / "items.jl").read_text()
    assert text == "" or text.endswith("\n"), "items.jl ends with a partial line"
    return [json.loads(line) for line in text.splitlines()]


# -- spider.state -------------------------------------------------------------------------


def counting(site: Site, directory: Path, *args: str,
             kill_after_hits: int | None = None) -> CrawlRun:
    return scrapy_crawl(site, directory, "counting", "-a",
                        f"state_out={directory / 'state.json'}", *args,
                        kill_after_hits=kill_after_hits)


def final_state(directory: Path) -> dict[str, Any]:
    """The state at close; the categories sorted (with 8 requests at a time their order is
    not the same on two plain runs either)."""
    closed: dict[str, Any] = json.loads((directory / "state.json").read_text())
    assert closed["reason"] == "finished"
    state: dict[str, Any] = closed["state"]
    return {**state, "categories": sorted(state["categories"])}


@pytest.mark.parametrize("pause", ["0", "0.005"], ids=["sync", "awaiting-callbacks"])
def test_spider_state_after_kills_equals_the_uninterrupted_plain_run(tmp_path: Path, site: Site,
                                                                       pause: str) -> None:
    """``awaiting-callbacks``: every callback awaits after changing the state, so commits fall
    due while callbacks are running."""
    # Plain Scrapy has spider.state only with JOBDIR.
    plain = counting(site, tmp_path / "plain", "-a", f"pause={pause}", *PLAIN,
                     "-s", f"JOBDIR={tmp_path / 'job'}")
    assert plain.returncode == 0, plain.log[-3000:]
    expected = final_state(tmp_path / "plain")
    assert expected["pages"] == N_PAGES
    expected_items = sorted(i["category"] for i in items(tmp_path / "plain"))
    assert expected_items == list(range(7))

    once = counting(site, tmp_path / "once", "-a", f"pause={pause}")
    assert once.returncode == 0, once.log[-3000:]
    assert final_state(tmp_path / "once") == expected
    assert sorted(i["category"] for i in items(tmp_path / "once")) == expected_items

    rng = random.Random(5)
    killed = tmp_path / "killed"
    for _ in range(4):
        run_ = counting(site, killed, "-a", f"pause={pause}",
                        kill_after_hits=rng.randint(10, N_PAGES // 4))
        assert run_.returncode == -9
        # The invariant itself: the journaled state counts exactly the pages done.
        view = read_stage(open_store(str(killed / "checkpoints")), "counting")
        journaled = view.user_state or {}
        assert journaled.get("pages", 0) == view.state.done_units, run_.log[-3000:]
    last = counting(site, killed, "-a", f"pause={pause}")
    assert last.returncode == 0, last.log[-3000:]
    assert re.search(r"Resuming from \d+ requests \(", last.log), last.log[-3000:]
    assert final_state(killed) == expected
    assert sorted(i["category"] for i in items(killed)) == expected_items


def test_spider_state_that_is_not_json_stops_the_crawl_naming_the_key(tmp_path: Path,
                                                                        site: Site) -> None:
    result = counting(site, tmp_path / "bad", "-a", "bad=1")
    assert "spider.state['seen'] is a set, which JSON cannot hold" in result.log
    assert "Traceback" not in result.log
    assert "Fix the spider, then run the same command again" in result.log
    # Nothing after the last good commit was kept: the next run resumes from there.
    view = read_stage(open_store(str(tmp_path / "bad" / "checkpoints")), "counting")
    assert (view.user_state or {}).get("pages", 0) == view.state.done_units


def test_a_run_of_a_completed_stage_gives_the_spider_its_final_state(tmp_path: Path,
                                                                      site: Site) -> None:
    # The run fetches nothing, but the spider's closed() (and pipelines) still read
    # self.state: it is the state the stage completed with, not a missing attribute.
    first = counting(site, tmp_path / "done")
    assert first.returncode == 0, first.log[-3000:]
    completed = json.loads((tmp_path / "done" / "state.json").read_text())["state"]
    (tmp_path / "done" / "state.json").unlink()
    again = counting(site, tmp_path / "done")
    assert again.returncode == 0, again.log[-3000:]
    assert "is already completed" in again.log
    assert "Traceback" not in again.log
    closed = json.loads((tmp_path / "done" / "state.json").read_text())
    assert closed == {"reason": "checkpoint_completed", "state": completed}


# -- CLOSESPIDER_* and stage totals ---------------------------------------------------------


ONE_AT_A_TIME = ("-s", "CONCURRENT_REQUESTS=1", "-s", "CONCURRENT_REQUESTS_PER_DOMAIN=1")


@pytest.mark.parametrize("kills", [(15, 20), (3, 30, 12)], ids=["2-kills", "3-kills"])
def test_closespider_itemcount_counts_the_stage_across_kills(tmp_path: Path, site: Site,
                                                             kills: tuple[int, ...]) -> None:
    """With one request at a time the plain run's items are the same on every run, so the
    resumed crawl must end with exactly those items (compared page by page)."""
    limit = ("-s", "CLOSESPIDER_ITEMCOUNT=60", *ONE_AT_A_TIME)
    plain = scrapy_crawl(site, tmp_path / "plain", "pages", *PLAIN, *limit)
    assert plain.returncode == 0, plain.log[-3000:]
    expected = sorted(i["page"] for i in items(tmp_path / "plain"))
    assert 60 <= len(expected) < N_PAGES

    killed = tmp_path / "killed"
    for hits in kills:
        assert scrapy_crawl(site, killed, "pages", *limit, kill_after_hits=hits).returncode == -9
    last = scrapy_crawl(site, killed, "pages", *limit)
    assert last.returncode == 0, last.log[-3000:]
    assert "(closespider_itemcount)" in last.log
    assert sorted(i["page"] for i in items(killed)) == expected

    # The stage totals count the stage, the run's own stats the run.
    view = read_stage(open_store(str(killed / "checkpoints")), "pages")
    assert view.totals["item_scraped_count"] == len(expected)
    assert f"'checkpoint/stage/item_scraped_count': {len(expected)}" in last.log
    assert f"'item_scraped_count': {len(expected)}," not in last.log

    # The limit was reached for the stage: the same command does nothing more.
    again = scrapy_crawl(site, killed, "pages", *limit)
    assert again.returncode == 0, again.log[-3000:]
    assert "already reached CLOSESPIDER_ITEMCOUNT = 60" in again.log
    assert not again.hits
    assert sorted(i["page"] for i in items(killed)) == expected


def test_stage_totals_add_up_the_runs_of_a_killed_crawl(tmp_path: Path, site: Site) -> None:
    for hits in (40, 90):
        assert scrapy_crawl(site, tmp_path, "pages", kill_after_hits=hits).returncode == -9
    last = scrapy_crawl(site, tmp_path, "pages")
    assert last.returncode == 0, last.log[-3000:]
    assert sorted(i["page"] for i in items(tmp_path)) == list(range(N_PAGES))
    totals = read_stage(open_store(str(tmp_path / "checkpoints")), "pages").totals
    assert totals["item_scraped_count"] == N_PAGES
    assert totals["response_received_count"] == N_PAGES
    assert totals["response_status_count/200"] == N_PAGES
    assert f"'checkpoint/stage/response_received_count': {N_PAGES}," in last.log
