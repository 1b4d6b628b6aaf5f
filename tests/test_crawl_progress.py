"""A crawl's progress against the estimate of its final size, with real crawls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scrapy_checkpoint import read_stage
from scrapy_checkpoint.crawl import progress as progress_module
from scrapy_checkpoint.crawl.progress import CrawlProgress
from scrapy_checkpoint.stores import open_store

from .crawl import Outputs, crawl, sigint, sigkill
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


def _stage(attached: dict[str, Any], done: int, pending: int, total: int | None) -> Any:
    """What CrawlProgress reads of a checkpoint: its live counts and attached data."""
    info = SimpleNamespace(progress=SimpleNamespace(total_items=total))
    live = SimpleNamespace(attached=attached, done=range(done), pending=range(pending),
                           lost_total=0, processed=done, info=info)
    return SimpleNamespace(live=live)


def test_the_profile_is_journaled_at_most_every_interval_and_with_the_last_commit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits within PROFILE_INTERVAL of the one that carried the profile leave it out;
    closing() (the crawl closing) puts the counts of now into the next commit."""
    monkeypatch.setattr(progress_module, "PROFILE_INTERVAL", 3600.0)
    cp = _stage({}, 0, 0, None)
    progress = CrawlProgress(cp, depth_limit=0)
    carried = []
    for page in range(5):
        progress.add(page, "parse")
        progress.finish(page, "parse")
        cp.live.done, cp.live.processed = range(page + 1), page + 1
        attached: dict[str, Any] = {}
        progress.commit(attached)
        carried.append(progress_module.DEPTHS_ATTACHED in attached)
    assert carried == [True, False, False, False, False]
    progress.closing(None)
    attached = {}
    progress.commit(attached)
    assert attached[progress_module.DEPTHS_ATTACHED]["done"] == {str(d): 1 for d in range(5)}


def test_a_resumed_crawl_estimates_as_it_did_before_it_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile, by depth and by callback, with where its recent ratios start, is kept
    with the committed units: restored from it, the first estimate is the one before."""
    monkeypatch.setattr(progress_module, "MODEL_INTERVAL", 0.0)  # the model at every commit
    monkeypatch.setattr(progress_module, "PROFILE_INTERVAL", 0.0)  # the profile with each one
    attached: dict[str, Any] = {}
    cp = _stage(attached, 0, 0, None)
    progress = CrawlProgress(cp, depth_limit=0)
    progress.add(0, "parse_listing")
    done = pending = 0
    pending += 1
    for page in range(30):  # listing pages, each with the next one and 20 details
        progress.add(page + 1, "parse_listing", "parse_listing")
        for _ in range(20):
            progress.add(page + 1, "parse_detail", "parse_listing")
        progress.finish(page, "parse_listing")
        pending += 20
        done += 1
        for _ in range(20):
            progress.finish(page + 1, "parse_detail")
        pending -= 20
        done += 20
        cp.live.done, cp.live.pending, cp.live.processed = range(done), range(pending), done
        total = progress.commit(attached)
        cp.live.info.progress.total_items = total
    before = progress.estimate()
    # The listing pages are a chain: the ETA counts on its median run, shorter than the
    # total shown (committed with it, for show --json and the state file).
    bounds = attached[progress_module.ESTIMATE_ATTACHED]
    assert done + pending < bounds["eta_total"] < total
    assert before.eta_total == bounds["eta_total"]
    resumed = CrawlProgress(_stage(json.loads(json.dumps(attached)), done, pending, total),
                            depth_limit=0)
    assert resumed.profile.estimate(done, pending, 0) == progress.profile.estimate(
        done, pending, 0)
    after = resumed.estimate(now=0.0)
    assert after == before
    assert after.wide
    assert after.source == "model"



def test_a_resume_takes_the_pending_units_from_their_records_not_from_late_counts() -> None:
    """The profile is journaled at most once a second: the one restored may still count as
    pending a listing page done in the crawl's last second, and miss the next one found
    then. Resumed, the pending units are those of the requests journaled (their depth,
    callback and URL): the estimate is the uninterrupted crawl's, not one with a second
    chain of listing pages expected beside the real one."""
    def listing(progress: CrawlProgress, pages: range, last: int = 20) -> None:
        for page in pages:  # the listing page at depth `page`: the next one, 20 details
            progress.add(page + 1, "parse_listing", "parse_listing")
            for _ in range(20):
                progress.add(page + 1, "parse_detail", "parse_listing")
            progress.finish(page, "parse_listing")
            for _ in range(20 if page + 1 < pages.stop else last):
                progress.finish(page + 1, "parse_detail")

    attached: dict[str, Any] = {}
    cp = _stage(attached, 0, 0, None)
    progress = CrawlProgress(cp, depth_limit=0)
    progress.add(0, "parse_listing")
    listing(progress, range(30))
    journaled = json.loads(json.dumps(progress.profile.to_json()))  # a second before the end
    listing(progress, range(30, 32), last=15)  # then the listing at depth 30's page and details
    done, pending = 1 + 31 * 21 + 15, 1 + 5
    assert not CrawlProgress(_stage({}, 0, 0, None), 0).lags()
    cp.live.done, cp.live.pending, cp.live.processed = range(done), range(pending), done
    before = progress.profile.estimate(done, pending, 0)
    assert before.median_high is not None  # the listing pages: a chain still going
    stage = _stage({progress_module.DEPTHS_ATTACHED: journaled}, done, pending, None)
    resumed = CrawlProgress(stage, depth_limit=0)
    assert resumed.lags()
    late = CrawlProgress(_stage({progress_module.DEPTHS_ATTACHED: journaled}, done, pending,
                                None), depth_limit=0)  # (resumed without the records)
    records = [{"url": "http://h/list/p33", "callback": "parse_listing", "meta": {"depth": 32}},
               *({"url": f"http://h/item/{i}", "callback": "parse_detail", "meta": {"depth": 32}}
                 for i in range(5))]
    resumed.resumed(records)
    profile = resumed.profile
    assert {(d, name): n for name, kind in profile.kinds.items() for d in kind.added
            if (n := kind.added[d] - kind.done.get(d, 0))} == {
        (32, "parse_listing"): 1, (32, "parse_detail"): 5}
    after = profile.estimate(done, pending, 0)
    assert abs(after.total - before.total) <= 0.03 * before.total, (before, after)
    assert after.median_high is not None
    assert abs(after.median_high - before.median_high) <= 0.03 * before.median_high
    # The crawl goes on: without the records, the listing page done in the last second
    # stays pending in the counts for ever (with what it was to find: no longer a second
    # chain beside the real one, since a chain's levels count once for its kind).
    for run in (progress, resumed, late):
        for _ in range(5):
            run.finish(32, "parse_detail")
        listing(run, range(32, 40))
    done, pending = done + 5 + 8 * 21, 1
    before = progress.profile.estimate(done, pending, 0)
    after = resumed.profile.estimate(done, pending, 0)
    assert abs(after.total - before.total) <= 0.03 * before.total, (before, after)
    assert late.profile.estimate(done, pending, 0).total > before.total

def test_the_model_runs_at_most_every_interval_and_never_below_the_units_known() -> None:
    """Between two runs of the model the estimate is the last one's, with the counts of
    now: units found in between raise it only when they go past it."""
    cp = _stage({}, 0, 0, None)
    progress = CrawlProgress(cp, depth_limit=0)
    progress.shown.lean = 0.0  # the model's totals as they are: not leaning to the high end
    progress.add(0, "parse")
    for depth in range(1, 4):  # each page finds 3 new ones
        for _ in range(3 ** depth):
            progress.add(depth, "parse", "parse")
        for _ in range(3 ** (depth - 1)):
            progress.finish(depth - 1, "parse")
    done, pending = 1 + 3 + 9, 27
    cp.live.done, cp.live.pending, cp.live.processed = range(done), range(pending), done
    first = progress.estimate(now=100.0)
    assert first.source == "model"
    assert first.total > done + pending  # the 27 pending pages find more
    cp.live.pending = range(first.total)  # far more found than the model expected
    soon = progress.estimate(now=100.0 + progress_module.MODEL_INTERVAL / 2)
    assert soon.low == done + first.total
    assert soon.total >= done + first.total  # never below the units known
    cp.live.pending = range(pending + 1)
    again = progress.estimate(now=100.0 + progress_module.MODEL_INTERVAL / 2)
    assert again.total == max(first.total, done + pending + 1)  # the model of a moment ago
    later = progress.estimate(now=100.0 + progress_module.MODEL_INTERVAL)
    assert later == progress.profile.estimate(done, pending + 1, 0)  # run again


def test_the_line_at_a_pause_marks_an_uncertain_estimate_as_the_cli_does(
        tmp_path: Path, site: Site) -> None:
    """Ctrl-C while the estimate is uncertain: the 'Paused' line said 'Progress: 17.4%
    (66/379)', exact-looking, beside 'list' and 'show' saying '66/~379 (~17.4%)'."""
    outputs = Outputs(tmp_path)
    run = crawl(site, outputs, "-s", "CHECKPOINT_SAVE_EVERY=10", interrupt=sigint,
                interrupt_after_hits=60)
    assert run.returncode == 0, run.log[-3000:]
    view = read_stage(open_store(outputs.location), "site")
    assert view.state.status.value == "paused"
    m = view.metrics()
    assert m.estimated, view.estimate  # the case at hand: the estimate still uncertain
    line = next(line for line in run.log.splitlines() if "[site] Paused; run again" in line)
    assert f"Progress: ~{m.percent:.1f}% ({m.processed}/~{m.total})" in line, line
