"""Fidelity: realistic spiders end with the add-on, killed or not, as plain Scrapy ends them.

Each spider of ``project/`` (a CrawlSpider with rules, a SitemapSpider on a sitemap
index, a login through a form with a CSRF token, several logged-in sessions with their
own cookie jars, an item built over two pages and passed in ``cb_kwargs``) crawls the
shop site of ``shop.py`` with a jsonlines feed and a SQLite item pipeline; so do spiders
of other shapes (``spiders/variants.py``: redirects, meta refreshes, retries, errbacks,
items in ``meta``, ``DEPTH_LIMIT``; a CrawlSpider setting priorities and download slots;
async callbacks with dataclass items, some dropped; items of ``start()``; pagination by a
cursor kept in ``spider.state``, ``spiders/cursor.py``; objects and subclasses of dict
and tuple in ``cb_kwargs``, ``spiders/carried.py``). The plain
Scrapy run is the reference. With the add-on:

- a run with no kill makes the same requests and leaves the same feed items and table
  rows, each as a multiset;
- runs killed with SIGKILL :data:`KILLS` times at random requests (seeded:
  ``FIDELITY_SEED``, default 10; the failure message names the seed and the kill points)
  and then the same command run to the end fetch every page of the reference and leave
  the same feed items as a multiset, and the same table rows as a set (pipelines see an
  item at least once after a kill; see :func:`crawl_killed_and_compare`).

A spider that cannot end as plain Scrapy ends is a bug of the add-on: mark its test
``xfail(strict=True)`` with the kind, and unmark it with the fix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, read_stage

from ..conftest import PYTHON, python_env
from .shop import ShopSite

PROJECT = Path(__file__).resolve().parent / "project"
SEED = int(os.environ.get("FIDELITY_SEED", "10"))
KILLS = 3
#: The add-on, committing every 2 finished requests (the default 10 would leave the small
#: crawls of this suite with few commits to resume from).
ADDON = ["-s", 'ADDONS={"scrapy_checkpoint.Addon": 100}', "-s", "CHECKPOINT_SAVE_EVERY=2"]

SPIDERS = [
    "catalog",
    "sitemap",
    "login",
    "sessions",
    "two_step",
    "rules",
    "async_mix",
    "start_items",
    "cursor",
    "kw_objects",
    "kw_containers",
]
#: Spiders whose requests are more than their units (a redirect, a retry: two requests, one
#: unit), so a killed run may end before the request it was to be killed at.
REDIRECTED = ["detours"]
#: Crawled with no kill only: with a ``DUPEFILTER_CLASS`` of the user's own, a resumed run
#: starts that dupefilter empty (see test_a_resumed_run_says_its_own_dupefilter_starts_empty).
UNKILLED_ONLY = ["dupes"]


@dataclass
class Crawl:
    returncode: int
    hits: int  # requests the site received during the run
    requests: Counter[str]  # the same by path (with query), e.g. {"/product/3": 1}
    log: str


@dataclass
class Outputs:
    """What the crawls of one directory left: the feed's items and the table's rows."""

    items: Counter[str]
    rows: Counter[str]


def read_outputs(directory: Path) -> Outputs:
    feed = directory / "items.jl"
    data = feed.read_text() if feed.exists() else ""
    assert data == "" or data.endswith("\n"), "the feed ends with a partial line"
    items = Counter(json.dumps(json.loads(line), sort_keys=True) for line in data.splitlines())
    rows: Counter[str] = Counter()
    if (directory / "items.db").exists():
        with sqlite3.connect(directory / "items.db") as db:
            rows.update(data for (data,) in db.execute("SELECT data FROM items"))
    return Outputs(items, rows)


def crawl(site: ShopSite, spider: str, directory: Path, *extra: str, kill_after: int | None = None,
          committed: int = 0, ready: Callable[[], bool] | None = None) -> Crawl:
    """Run ``scrapy crawl SPIDER`` of the project to the end, or SIGKILL it while the site
    holds its ``kill_after``-th request of this run (so it is surely still running), once
    the stage has committed at least ``committed`` requests done and ``ready()`` (if given)
    is true (polled, however long that takes: a busy machine may have committed or written
    nothing yet when the request is held; the crawl's other requests go on meanwhile)."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, "-m", "scrapy", "crawl", spider, "-a", f"base={site.url}",
           "-o", str(directory / "items.jl"), "-s", f"FIDELITY_DB={directory / 'items.db'}", *extra]
    start, before = site.total_hits, site.requests()
    log_path = directory / "crawl.log"
    with log_path.open("ab") as log:
        if kill_after is not None:
            site.hold_at(start + kill_after)
        try:
            proc = subprocess.Popen(cmd, cwd=PROJECT, env=python_env(), stdout=log,
                                    stderr=subprocess.STDOUT)
            if kill_after is not None:
                while not site.wait_for(start + kill_after, timeout=0.1) and proc.poll() is None:
                    pass  # waits on the site's request count, checking that the crawl still runs
                deadline = time.monotonic() + 600  # a guard against a hang
                while ((done_requests(directory, spider) < committed
                        or (ready is not None and not ready()))
                       and proc.poll() is None and time.monotonic() < deadline):
                    time.sleep(0.05)  # polls the stage's committed progress, read from disk
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=1200)
        finally:
            site.release()
    return Crawl(proc.returncode, site.total_hits - start, site.requests() - before,
                 log_path.read_text())


@pytest.fixture(scope="module")
def site() -> Iterator[ShopSite]:
    s = ShopSite()
    yield s
    s.close()


References = dict[str, tuple[Crawl, Outputs]]


@pytest.fixture(scope="module")
def references(site: ShopSite, tmp_path_factory: pytest.TempPathFactory) -> References:
    """The plain Scrapy run of a spider, made once per module: ``references[spider]``."""
    class Runs(dict[str, tuple[Crawl, Outputs]]):
        def __missing__(self, spider: str) -> tuple[Crawl, Outputs]:
            directory = tmp_path_factory.mktemp(f"plain-{spider}")
            run = crawl(site, spider, directory)
            assert run.returncode == 0, run.log[-3000:]
            outputs = read_outputs(directory)
            assert outputs.items, f"the plain run of {spider} scraped nothing"
            assert outputs.rows == outputs.items, "the table holds the feed's items"
            self[spider] = (run, outputs)
            return self[spider]

    return Runs()


def diff(label: str, got: Counter[str], expected: Counter[str]) -> str:
    missing, extra = expected - got, got - expected
    return (f"{label}: {sum(missing.values())} missing, {sum(extra.values())} extra "
            f"(of {sum(expected.values())} expected)\n"
            f"missing: {sorted(missing.elements())[:5]}\nextra: {sorted(extra.elements())[:5]}")


def done_requests(directory: Path, spider: str) -> int:
    """Requests the stage in ``directory`` has committed done (fetched, failed or not)."""
    try:
        view = read_stage(FileStore(directory / "checkpoints"), spider)
    except FileNotFoundError:
        return 0
    progress = view.state.progress
    return progress.processed_items - progress.skipped_items


def assert_completed(spider: str, run: Crawl) -> None:
    assert run.returncode == 0, run.log[-3000:]
    assert f"[{spider}] Completed." in run.log, run.log[-3000:]
    assert "Traceback" not in run.log, run.log[-3000:]


@pytest.mark.parametrize("spider", [*SPIDERS, *REDIRECTED, *UNKILLED_ONLY])
def test_unkilled_crawls_with_the_addon_end_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, references: References, spider: str
) -> None:
    _, expected = references[spider]
    run = crawl(site, spider, tmp_path, *ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}")
    assert_completed(spider, run)
    reference = references[spider][0]
    assert run.requests == reference.requests, diff("requests", run.requests, reference.requests)
    got = read_outputs(tmp_path)
    assert got.items == expected.items, diff("feed", got.items, expected.items)
    # With no kill a pipeline sees every item once: the table is the reference's, row by row.
    assert got.rows == expected.rows, diff("table", got.rows, expected.rows)


@pytest.mark.slow
@pytest.mark.parametrize("spider", SPIDERS)
def test_killed_crawls_end_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, references: References, spider: str,
    record_property: pytest.RecordProperty,
) -> None:
    repeated = crawl_killed_and_compare(site, references, spider, tmp_path)
    record_property("sqlite_repeated_rows", repeated)


@pytest.mark.slow
@pytest.mark.parametrize("spider", REDIRECTED)
def test_killed_crawls_with_redirects_and_retries_end_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, references: References, spider: str
) -> None:
    crawl_killed_and_compare(site, references, spider, tmp_path, every_kill=False)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["flush", "none"])
def test_killed_crawls_end_as_plain_scrapy_in_every_durability_mode(
    tmp_path: Path, site: ShopSite, references: References, durability: str
) -> None:
    # "fsync", the default, is the mode of the tests above.
    crawl_killed_and_compare(site, references, "catalog", tmp_path,
                             "-s", f"CHECKPOINT_DURABILITY={durability}")



@pytest.mark.slow
def test_killed_crawls_behind_a_login_that_expires_end_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, references: References
) -> None:
    # The reference is the plain uninterrupted login crawl: its session never expires.
    crawl_killed_and_compare(site, references, "login", tmp_path, "-a", "setup=1",
                             between_runs=site.forget)


def test_a_resumed_run_says_its_own_dupefilter_starts_empty(
    tmp_path: Path, site: ShopSite, references: References
) -> None:
    # The dupefilter's state is not kept (plain Scrapy keeps none without JOBDIR): a link
    # only it calls a duplicate of a page done before the kill is fetched again. Nothing is
    # lost, and the resumed run says so instead of ending as if the result were exact.
    _, expected = references["dupes"]
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    first = crawl(site, "dupes", tmp_path, *addon, kill_after=20)
    assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    last = crawl(site, "dupes", tmp_path, *addon)
    assert_completed("dupes", last)
    assert ("DUPEFILTER_CLASS fidelity_shop.spiders.dupes.PathDupeFilter starts this run empty"
            in last.log), last.log[-3000:]
    got = read_outputs(tmp_path)
    assert not expected.items - got.items, diff("feed", got.items, expected.items)


def test_a_crawl_killed_while_it_finishes_at_a_closespider_limit_ends_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, references: References
) -> None:
    # CLOSESPIDER_ITEMCOUNT = 12, one request at a time: the 12th item closes the spider,
    # and Scrapy finishes the request in flight then (the 13th page, whose item is the 13th).
    # Killed while the site holds that request, with the 12 others committed done, the
    # stage has reached its limit; the next run must still do that one request.
    reference, expected = references["limited"]
    assert (reference.hits, sum(expected.items.values())) == (13, 13)
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    cmd = [PYTHON, "-m", "scrapy", "crawl", "limited", "-a", f"base={site.url}",
           "-o", str(tmp_path / "items.jl"), "-s", f"FIDELITY_DB={tmp_path / 'items.db'}", *addon]
    site.hold_at(site.total_hits + 13)
    try:
        with (tmp_path / "crawl.log").open("ab") as log:
            proc = subprocess.Popen(cmd, cwd=PROJECT, env=python_env(), stdout=log,
                                    stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600  # a guard against a hang
            while done_requests(tmp_path, "limited") < 12 and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "crawl.log").read_text()[-3000:]
                time.sleep(0.05)  # polls the stage's committed progress, read from disk
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=1200)
    finally:
        site.release()
    first = (tmp_path / "crawl.log").read_text()
    assert "Closing spider (closespider_itemcount)" in first, first[-3000:]
    assert done_requests(tmp_path, "limited") == 12
    last = crawl(site, "limited", tmp_path, *addon)
    assert last.returncode == 0, last.log[-3000:]
    assert "reached CLOSESPIDER_ITEMCOUNT = 12 in earlier runs (12) and was stopped" in last.log
    assert sum(last.requests.values()) == 1, last.requests
    assert "Traceback" not in last.log, last.log[-3000:]
    got = read_outputs(tmp_path)
    assert got.items == expected.items, diff("feed", got.items, expected.items)


def test_spider_state_is_kept_when_a_feed_opens_while_a_callback_runs(
    tmp_path: Path, site: ShopSite
) -> None:
    # The home page's callback changes spider.state; its done record waits for a moment
    # with no callback running (the category page's callback waits). The product's item
    # opens the feed meanwhile: the file's record is made durable then, but the done
    # records waiting with their state must not be committed without it, or the kill
    # below loses the home page's change (it is not done again).
    feed = tmp_path / "items.jl"
    addon = ["-s", 'ADDONS={"scrapy_checkpoint.Addon": 100}', "-s", "CHECKPOINT_SAVE_EVERY=1000",
             "-s", "CHECKPOINT_SAVE_INTERVAL=600", "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    cmd = [PYTHON, "-m", "scrapy", "crawl", "waiting", "-a", f"base={site.url}",
           "-o", str(feed), *addon]
    with (tmp_path / "crawl.log").open("ab") as log:
        proc = subprocess.Popen([*cmd, "-a", "wait=1"], cwd=PROJECT, env=python_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600  # a guard against a hang
        while not feed.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "crawl.log").read_text()[-3000:]
            time.sleep(0.05)  # polls for the feed file, made when the first item is written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=1200)
    assert feed.exists(), (tmp_path / "crawl.log").read_text()[-3000:]
    last = crawl(site, "waiting", tmp_path, *addon)
    assert_completed("waiting", last)
    assert "Final spider.state: {'home': 1}" in last.log, last.log[-3000:]
    assert read_outputs(tmp_path).items == Counter(['{"product": "0"}'])


def crawl_killed_and_compare(site: ShopSite, references: References, spider: str, directory: Path,
                             *extra: str, between_runs: Callable[[], None] | None = None,
                             every_kill: bool = True) -> int:
    """Crawl ``spider`` with the add-on, killed :data:`KILLS` times, then to the end; assert
    the outputs are the plain crawl's; returns how many rows the table holds more than once.

    ``between_runs()`` is called after each killed run. ``every_kill=False``: a run may end
    before the request it was to be killed at (fewer kills are not a failure)."""
    reference, expected = references[spider]
    rng = random.Random(f"{SEED}-{spider}{''.join(extra)}")
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}", *extra]
    kills: list[int] = []
    requests: Counter[str] = Counter()
    while True:
        # Kill at a random one of the requests left to make: the plain crawl's requests but
        # the ones the stage has committed done (the rest are made again), keeping one for
        # each kill still to come. The site holds that request unanswered, so the crawl is
        # surely running when it is killed, however fast the machine.
        remaining = reference.hits - done_requests(directory, spider)
        kill_after = rng.randint(1, max(1, remaining - (KILLS - len(kills) - 1)))
        last = crawl(site, spider, directory, *addon,
                     kill_after=kill_after if len(kills) < KILLS else None)
        requests += last.requests
        if len(kills) == KILLS or last.returncode != -signal.SIGKILL:
            break  # the crawl ended by itself
        kills.append(kill_after)
        if between_runs is not None:
            between_runs()
    assert_completed(spider, last)
    context = f"{' '.join([spider, *extra])}, FIDELITY_SEED={SEED}, killed after {kills} requests of each run"
    assert set(requests) == set(reference.requests), f"{context}\n" + diff(
        "pages fetched", Counter(set(requests)), Counter(set(reference.requests)))
    got = read_outputs(directory)
    assert got.items == expected.items, f"{context}\n" + diff("feed", got.items, expected.items)
    # An item pipeline sees items at least once after a crash (the items of requests in
    # flight or not yet committed are scraped again by the next run; exactly-once into
    # databases is not promised yet): no row may be lost or wrong, repeats are allowed here
    # because there were kills (with no kill the table must match row by row, see above).
    missing = expected.rows - got.rows
    wrong = set(got.rows) - set(expected.rows)
    assert not missing, f"{context}: rows lost\n" + diff("table", got.rows, expected.rows)
    assert not wrong, f"{context}: wrong rows\n" + diff("table", got.rows, expected.rows)
    repeated = sum((got.rows - expected.rows).values())
    print(f"{context}: {repeated} repeated row(s) of {sum(expected.rows.values())} in the table")
    assert len(kills) == KILLS or not every_kill, (
        f"{context}: the run after them ended before its request {kill_after}, made fewer "
        f"requests than the plain crawl's {reference.hits} minus the ones committed done")
    return repeated


def test_an_item_of_start_in_the_feed_when_a_commit_falls_before_its_signal_ends_is_not_written_twice(
    tmp_path: Path, site: ShopSite
) -> None:
    # start() yields an item; the feed exporter writes it, but another (async) receiver of
    # its item_scraped still runs when the product's request is done and committed. The
    # commit keeps the feed's length with the item in it: it must also keep the item as
    # delivered, or the next run's start() yields it again and the feed holds it twice.
    # The site holds the other product's request, so the crawl runs until it is killed.
    feed = tmp_path / "items.jl"
    addon = ["-s", 'ADDONS={"scrapy_checkpoint.Addon": 100}', "-s", "CHECKPOINT_SAVE_EVERY=1",
             "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    cmd = [PYTHON, "-m", "scrapy", "crawl", "start_waiting", "-a", f"base={site.url}",
           "-o", str(feed), *addon]
    site.hold_at(site.total_hits + 2)
    try:
        with (tmp_path / "crawl.log").open("ab") as log:
            proc = subprocess.Popen([*cmd, "-a", "wait=1"], cwd=PROJECT, env=python_env(),
                                    stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 600
            while done_requests(tmp_path, "start_waiting") < 1 and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "crawl.log").read_text()[-3000:]
                time.sleep(0.05)  # polls the stage's committed progress, read from disk
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=1200)
    finally:
        site.release()
    assert feed.read_text().count('{"start": 0}') == 1, feed.read_text()
    assert done_requests(tmp_path, "start_waiting") == 1, (tmp_path / "crawl.log").read_text()[-3000:]
    last = crawl(site, "start_waiting", tmp_path, *addon)
    assert_completed("start_waiting", last)
    assert read_outputs(tmp_path).items == Counter(['{"start": 0}', '{"product": "0"}',
                                                    '{"product": "1"}'])


def test_a_resume_with_other_spider_arguments_says_the_result_mixes_both(
    tmp_path: Path, site: ShopSite
) -> None:
    # Killed with -a categories=2, resumed with -a categories=4: the pending requests are
    # the first run's and start() yields the new ones; no plain Scrapy run gives that
    # result, and the resume says so. Resumed with the arguments it was started with, it
    # says nothing.
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    # The first run is killed once it has committed a request done: the stage has started
    # (a stage with no request recorded takes a run's arguments as its first, silently).
    first = crawl(site, "two_step", tmp_path, *addon, "-a", "categories=2", kill_after=4,
                  committed=1)
    assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    same = crawl(site, "two_step", tmp_path, *addon, "-a", "categories=2", kill_after=4)
    assert same.returncode == -signal.SIGKILL, same.log[-3000:]
    assert "spider arguments differ" not in same.log, same.log[-3000:]
    other = crawl(site, "two_step", tmp_path, *addon, "-a", "categories=4")
    assert_completed("two_step", other)
    warning = next(line for line in other.log.splitlines() if "spider arguments differ" in line)
    assert "(categories changed)" in warning, warning
    assert "'4'" not in warning  # values are not logged (they may be credentials)
    assert "CHECKPOINT_RESET = True" in warning


def test_a_run_with_another_feed_file_says_the_items_of_earlier_runs_are_not_in_it(
    tmp_path: Path, site: ShopSite
) -> None:
    # Killed with -o items.jl, resumed with -o other.jl: other.jl gets only the items of
    # the requests left; completed, run again with -o third.jl: nothing is fetched and
    # third.jl is not written. Each run says where the items are instead.
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    feed = tmp_path / "items.jl"  # killed once an item is in it (and the stage has started)
    first = crawl(site, "two_step", tmp_path, *addon, kill_after=20, committed=1,
                  ready=lambda: feed.exists() and feed.stat().st_size > 0)
    assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    assert feed.read_text(), "no item was written before the kill"

    def run_with(feed: str) -> str:
        cmd = [PYTHON, "-m", "scrapy", "crawl", "two_step", "-a", f"base={site.url}", *addon,
               "-o", str(tmp_path / feed)]
        done = subprocess.run(cmd, check=False, cwd=PROJECT, env=python_env(), capture_output=True,
                              text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    second = run_with("other.jl")
    assert "[two_step] Completed." in second, second[-3000:]
    assert (f"The checkpoint records output {tmp_path / 'items.jl'}, which this run's FEEDS and "
            "CHECKPOINT_OUTPUT do not name: it is left as it is. The items it holds of requests "
            "that earlier runs finished are not scraped again, so this run's outputs will not "
            "have them.") in second, second[-3000:]
    third = run_with("third.jl")
    assert (f"Stage two_step is completed, and its items are in the outputs of its runs "
            f"({tmp_path / 'items.jl'}, {tmp_path / 'other.jl'}), not in "
            f"{tmp_path / 'third.jl'}, which this run names") in third, third[-3000:]
    assert not (tmp_path / "third.jl").exists()


def test_a_resumed_callback_missing_what_a_done_login_set_on_the_spider_says_what_to_do(
    tmp_path: Path, site: ShopSite, references: References
) -> None:
    # The login's callback keeps the session on the spider (self.session). Killed after
    # the login is done, the next run does not log in again: the resumed order pages'
    # callback fails on the missing attribute, and the run says why and what to do. With
    # the login requests marked checkpoint_setup, every run logs in and the result is the
    # plain crawl's.
    _, expected = references["token_login"]
    one = ["-s", "CONCURRENT_REQUESTS=1"]
    unmarked = tmp_path / "unmarked"
    addon = [*ADDON, *one, "-s", f"CHECKPOINT_DIR={unmarked / 'checkpoints'}"]
    first = crawl(site, "token_login", unmarked, *addon, kill_after=7)
    assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    last = crawl(site, "token_login", unmarked, *addon)
    assert "'TokenLoginSpider' object has no attribute 'session'" in last.log, last.log[-3000:]
    assert ("a callback failed because the spider has no attribute 'session': if the callback "
            "of a request that an earlier run finished set it") in last.log, last.log[-3000:]
    assert "checkpoint_setup" in last.log
    marked = tmp_path / "marked"
    addon = [*ADDON, *one, "-s", f"CHECKPOINT_DIR={marked / 'checkpoints'}", "-a", "setup=1"]
    first = crawl(site, "token_login", marked, *addon, kill_after=7)
    assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    last = crawl(site, "token_login", marked, *addon)
    assert_completed("token_login", last)
    assert "no attribute" not in last.log
    got = read_outputs(marked)
    assert got.items == expected.items, diff("feed", got.items, expected.items)


def test_a_resume_after_an_unmarked_login_expired_says_so_and_is_not_completed(
    tmp_path: Path, site: ShopSite
) -> None:
    # The sessions spider logs in with FormRequest.from_response, not marked as setup
    # requests: a resumed run does not log in again. With the sessions forgotten by the
    # server while the crawl was stopped, the resumed requests are redirected to /login.
    # Plain Scrapy would have scraped them logged in; the resumed run cannot, and must say so
    # rather than end "Completed" with login pages parsed as orders.
    addon = (*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}")
    first = crawl(site, "sessions", tmp_path, *addon, kill_after=12)
    assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    site.forget()
    second = crawl(site, "sessions", tmp_path, *addon)
    assert second.returncode == 0, second.log[-3000:]
    assert "[sessions] Completed." not in second.log, second.log[-3000:]
    assert "[sessions] Incomplete" in second.log, second.log[-3000:]
    assert "redirected to the login page that an earlier run logged in at" in second.log, (
        second.log[-3000:])
    assert "meta['checkpoint_setup'] = True" in second.log, second.log[-3000:]
    items = read_outputs(tmp_path).items
    login_pages = [item for item in items if json.loads(item)["path"] == "/login"]
    assert not login_pages, f"login pages scraped as orders: {login_pages[:3]}"


def test_containers_in_cb_kwargs_come_back_with_their_type_after_a_kill(
    tmp_path: Path, site: ShopSite, references: References
) -> None:
    # kw_containers passes a defaultdict, an OrderedDict, a Counter, a named tuple and an
    # IntEnum member to each product's callback, which uses what each class adds. They were
    # journaled as their base types: resumed, the callbacks failed (KeyError, AttributeError)
    # and the crawl ended with 16 of 36 items lost. The first run is killed once two category
    # pages are committed done (their product requests are then journaled, at most four of
    # them fetched: the site holds the fifth request until the kill).
    _, expected = references["kw_containers"]
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    crawl_killed_once_done(site, "kw_containers", tmp_path, 2, *addon)
    assert done_requests(tmp_path, "kw_containers") >= 2
    last = crawl(site, "kw_containers", tmp_path, *addon)
    assert_completed("kw_containers", last)
    assert "could not be journaled" not in last.log, last.log[-3000:]
    got = read_outputs(tmp_path)
    assert got.items == expected.items, diff("feed", got.items, expected.items)


@pytest.mark.parametrize("kill_after", [None, 6], ids=["unkilled", "killed"])
def test_items_a_feed_cannot_hold_are_counted_and_the_crawl_is_not_said_completed(
    tmp_path: Path, site: ShopSite, kill_after: int | None
) -> None:
    # Every third item of `unexportable` holds a complex number: the JSON lines exporter
    # raises, and plain Scrapy leaves those 4 of 12 items out of the feed with an error per
    # item. The add-on leaves the same feed, but it said "[unexportable] Completed. Progress:
    # 100.0% (12/12) | Success: 100.0%". Now it says how many items are not in the feeds,
    # counted over the stage's runs (a killed run's count goes with its units not done).
    plain = crawl(site, "unexportable", tmp_path / "plain")
    assert plain.returncode == 0, plain.log[-3000:]
    expected = read_outputs(tmp_path / "plain")
    assert sum(expected.items.values()) == 8, plain.log[-3000:]
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    if kill_after is not None:
        first = crawl(site, "unexportable", tmp_path, *addon, kill_after=kill_after)
        assert first.returncode == -signal.SIGKILL, first.log[-3000:]
    last = crawl(site, "unexportable", tmp_path, *addon)
    assert last.returncode == 0, last.log[-3000:]
    assert "[unexportable] Completed." not in last.log, last.log[-3000:]
    assert ("[unexportable] Every unit is done, but 4 scraped item(s) could not be written to "
            "the feeds" in last.log), last.log[-3000:]
    assert "TypeError: Object of type complex is not JSON serializable" in last.log
    got = read_outputs(tmp_path)
    assert got.items == expected.items, diff("feed", got.items, expected.items)


def crawl_killed_once_done(site: ShopSite, spider: str, directory: Path, done: int, *extra: str,
                           hold: int = 5) -> None:
    """Run ``scrapy crawl SPIDER`` with the site holding its ``hold``-th request of this run,
    and SIGKILL it once its stage has committed ``done`` requests done (read from disk)."""
    cmd = [PYTHON, "-m", "scrapy", "crawl", spider, "-a", f"base={site.url}",
           "-o", str(directory / "items.jl"), "-s", f"FIDELITY_DB={directory / 'items.db'}", *extra]
    site.hold_at(site.total_hits + hold)
    try:
        with (directory / "crawl.log").open("ab") as log:
            proc = subprocess.Popen(cmd, cwd=PROJECT, env=python_env(), stdout=log,
                                    stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while done_requests(directory, spider) < done and time.monotonic() < deadline:
                assert proc.poll() is None, (directory / "crawl.log").read_text()[-3000:]
                time.sleep(0.05)  # polls the stage's committed progress, read from disk
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=1200)
    finally:
        site.release()
    assert done_requests(directory, spider) >= done, (directory / "crawl.log").read_text()[-3000:]


def test_a_resumed_crawl_whose_pipeline_drops_duplicates_seen_in_memory_is_not_said_completed(
    tmp_path: Path, site: ShopSite, references: References
) -> None:
    # dedupe_items reaches each product twice; its DuplicatesPipeline (Scrapy's documented
    # one) drops the second item by the ids it keeps in a set. Plain Scrapy: 36 items. A
    # resumed run's pipeline starts without the ids of earlier runs, so it lets duplicates
    # through (51 and 53 items after two kills), and the crawl ended '[dedupe_items]
    # Completed. Progress: 100.0%'. Now the resumed run names the pipeline's memory.
    _, expected = references["dedupe_items"]
    assert sum(expected.items.values()) == 36
    fresh = crawl(site, "dedupe_items", tmp_path / "fresh", *ADDON,
                  "-s", f"CHECKPOINT_DIR={tmp_path / 'fresh' / 'checkpoints'}")
    assert_completed("dedupe_items", fresh)  # nothing resumed: nothing to say
    assert read_outputs(tmp_path / "fresh").items == expected.items
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    crawl_killed_once_done(site, "dedupe_items", tmp_path, 2, *addon)
    last = crawl(site, "dedupe_items", tmp_path, *addon)
    assert last.returncode == 0, last.log[-3000:]
    assert "[dedupe_items] Completed." not in last.log, last.log[-3000:]
    assert ("[dedupe_items] Every unit is done, but this run resumed a crawl, and item "
            "pipelines kept what they learned from the items in memory: "
            "DuplicatesPipeline.ids_seen (") in last.log, last.log[-3000:]


def test_a_pipeline_keeping_its_duplicates_in_spider_state_ends_as_plain_scrapy_after_a_kill(
    tmp_path: Path, site: ShopSite
) -> None:
    # The remedy the warning above gives: the same pipeline with its ids in spider.state
    # (plain Scrapy has spider.state with JOBDIR only: the reference uses one).
    plain = crawl(site, "dedupe_items", tmp_path / "plain", "-a", "in_state=1",
                  "-s", f"JOBDIR={tmp_path / 'plain' / 'job'}")
    assert plain.returncode == 0, plain.log[-3000:]
    expected = read_outputs(tmp_path / "plain")
    assert sum(expected.items.values()) == 36, plain.log[-3000:]
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}", "-a", "in_state=1"]
    crawl_killed_once_done(site, "dedupe_items", tmp_path, 2, *addon)
    last = crawl(site, "dedupe_items", tmp_path, *addon)
    assert_completed("dedupe_items", last)
    got = read_outputs(tmp_path)
    assert got.items == expected.items, diff("feed", got.items, expected.items)
