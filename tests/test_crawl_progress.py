"""A crawl's progress against the estimate of its final size, with real crawls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import read_stage
from scrapy_checkpoint.stores import open_store

from .crawl import Outputs, crawl, sigkill
from .site import Site

N_PAGES = 600


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.002)
    yield s
    s.close()


def test_a_restarted_crawl_takes_its_last_completed_size_as_its_estimate(
        tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    first = crawl(site, outputs)
    assert first.returncode == 0, first.log[-3000:]
    # A commit every 10 requests: the killed run has committed its estimate, however slow.
    again = crawl(site, outputs, "-s", "CHECKPOINT_ON_COMPLETE=restart",
                  "-s", "CHECKPOINT_SAVE_EVERY=10", interrupt=sigkill, interrupt_after_hits=100)
    assert again.returncode == -9
    view = read_stage(open_store(outputs.location), "site")
    assert view.estimate is not None
    assert view.estimate["source"] == "history"
    assert view.state.progress.total_items == N_PAGES  # not the pages found so far
    assert view.state.pending_units + view.state.done_units < N_PAGES


def test_the_progress_bar_replaces_the_lines_and_ends_at_the_whole_crawl(
        tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    run = crawl(site, outputs, "-s", "CHECKPOINT_PROGRESS_BAR=True",
                "-s", "CHECKPOINT_LOG_INTERVAL=0.2")
    assert run.returncode == 0, run.log[-3000:]
    assert f"100.0% {N_PAGES}/{N_PAGES}" in run.log
    assert "[site] Progress:" not in run.log  # (the completion line still says it)
    assert "Logging error" not in run.log
    assert sorted(outputs.jsonlines("items.jl")) == list(range(N_PAGES))
