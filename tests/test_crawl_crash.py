"""Crash-safe crawls, proven with real ``scrapy crawl`` processes killed at random moments.

After any number of SIGKILLs the final outputs (a jsonlines feed, a CSV feed and
the plugin's own output) hold every page's item exactly once with no partial
line, every page was fetched, and a page the checkpoint had recorded done was
never fetched again.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from scrapy_checkpoint import FileStore, Status, read_stage
from scrapy_checkpoint.stores import open_store

from .crawl import Outputs, crawl, double_sigint, sigint, sigkill, sigterm
from .site import Site

N_PAGES = 400
CONCURRENCY = 8  # CONCURRENT_REQUESTS in the test project
SAVE_EVERY = 10


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.004)
    yield s
    s.close()


def _done_pages(outputs: Outputs, site: Site) -> set[int]:
    """Pages the checkpoint on disk records as done."""
    view = read_stage(open_store(outputs.location), "site")
    fingerprint = RequestFingerprinter().fingerprint
    return {p for p in range(N_PAGES) if view.is_done(fingerprint(Request(f"{site.url}/p/{p}")))}


def _assert_exact(outputs: Outputs) -> None:
    for name in ("items.jl", "own.jl"):
        pages = outputs.jsonlines(name)
        assert sorted(pages) == list(range(N_PAGES)), f"{name}: lost or duplicated items"
    assert sorted(outputs.csv_pages()) == list(range(N_PAGES)), "items.csv: lost or duplicated items"


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "store"), [(11, "file"), (12, "file"), (13, "file"),
                                             (14, "redis"), (15, "postgresql"),
                                             (16, "postgresql")])
def test_kill_during_crawl_loses_no_item_and_refetches_only_in_flight_pages(
    tmp_path: Path, site: Site, seed: int, store: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(seed)
    backend = (request.getfixturevalue(f"{store}_backend") if store in ("redis", "postgresql")
               else None)
    outputs = Outputs(tmp_path, backend)
    all_hits: dict[int, int] = {}
    done_before: set[int] = set()
    kills = 0
    while True:
        final = kills >= 5
        run = crawl(site, outputs, interrupt=None if final else sigkill,
                    interrupt_after_hits=rng.randint(5, N_PAGES // 6))
        for page, n in run.hits.items():
            all_hits[page] = all_hits.get(page, 0) + n
        refetched = sorted(set(run.hits) & done_before)
        assert not refetched, f"pages recorded done were fetched again: {refetched[:10]}"
        done_now = _done_pages(outputs, site)
        assert done_before <= done_now
        if final:
            assert run.returncode == 0, run.log[-3000:]
            break
        assert run.returncode == -9
        kills += 1
        done_before = done_now

    assert set(all_hits) == set(range(N_PAGES)), "a page was never fetched"
    extra = sum(all_hits.values()) - N_PAGES
    assert extra <= kills * (2 * CONCURRENCY + SAVE_EVERY), f"{extra} extra fetches"
    _assert_exact(outputs)
    state = read_stage(open_store(outputs.location), "site").state
    assert state.status is Status.COMPLETED
    assert state.done_units == N_PAGES
    assert state.pending_units == 0
    assert state.recoveries == kills


@pytest.mark.parametrize("stop", [sigint, sigterm], ids=["sigint", "sigterm"])
def test_graceful_stop_pauses_and_the_same_command_resumes(tmp_path: Path, site: Site,
                                                          stop: object) -> None:
    outputs = Outputs(tmp_path)
    first = crawl(site, outputs, interrupt=stop, interrupt_after_hits=60)  # type: ignore[arg-type]
    assert first.returncode == 0, first.log[-3000:]
    state = read_stage(FileStore(tmp_path / "checkpoints"), "site").state
    assert state.status is Status.PAUSED
    assert state.pending_units > 0
    second = crawl(site, outputs)
    assert second.returncode == 0, second.log[-3000:]
    assert not set(first.hits) & set(second.hits), "a page fetched before the stop was fetched again"
    _assert_exact(outputs)
    assert read_stage(FileStore(tmp_path / "checkpoints"), "site").state.status is Status.COMPLETED


def test_double_sigint_forces_a_stop_that_resumes_exactly(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    first = crawl(site, outputs, interrupt=double_sigint, interrupt_after_hits=60)
    assert "forcing unclean shutdown" in first.log
    second = crawl(site, outputs)
    assert second.returncode == 0, second.log[-3000:]
    _assert_exact(outputs)


@pytest.mark.slow
def test_kill_with_redirects_and_retries_loses_no_item(tmp_path: Path) -> None:
    """Redirected and retried requests finish their unit once, across kills."""
    site = Site(N_PAGES, delay=0.004, redirect_every=5, flaky_every=7)
    try:
        rng = random.Random(21)
        outputs = Outputs(tmp_path)
        for _ in range(3):
            crawl(site, outputs, "-s", "RETRY_ENABLED=True", interrupt=sigkill,
                  interrupt_after_hits=rng.randint(20, N_PAGES // 4))
        final = crawl(site, outputs, "-s", "RETRY_ENABLED=True")
        assert final.returncode == 0, final.log[-3000:]
    finally:
        site.close()
    _assert_exact(outputs)
    state = read_stage(FileStore(tmp_path / "checkpoints"), "site").state
    assert state.status is Status.COMPLETED
    assert state.progress.failed_items == 0
    assert state.pending_units == 0
