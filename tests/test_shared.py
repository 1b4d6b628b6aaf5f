"""Several workers on one stage (CHECKPOINT_SHARED): real `scrapy crawl` processes, on real
Redis and real PostgreSQL."""

from __future__ import annotations

import json
import random
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from scrapy_checkpoint.checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.cli import main as cli_main
from scrapy_checkpoint.manager import UnifiedCheckpointManager
from scrapy_checkpoint.shared import SharedStage, open_shared, sub_stage_name
from scrapy_checkpoint.state import Status
from scrapy_checkpoint.stores import open_store
from scrapy_checkpoint.stores.redis import RedisStore
from scrapy_checkpoint.view import read_stage

from .conftest import PYTHON, REDIS_URL, drop_redis_prefix, python_env, require_redis
from .crawl import PROJECT, Outputs
from .site import Site

N_PAGES = 400
LEASE = 3  # seconds: how soon a worker on another host would be seen dead


def _prefix(backend: str) -> str:
    """The test's own name in its store URL (Redis key prefix or PostgreSQL schema)."""
    return backend.rsplit("prefix=", 1)[-1].rsplit("schema=", 1)[-1]


@pytest.fixture
def shared_backend(shared_location: str):  # type: ignore[no-untyped-def]
    """A Redis or PostgreSQL store URL of the test's own (see ``SHARED_STORES``)."""
    yield shared_location
    if not shared_location.startswith("redis"):
        drop_redis_prefix(_prefix(shared_location))  # scrapy-redis's keys, when it ran


class Worker:
    """One ``scrapy crawl site`` worker of the shared stage, writing into its own directory."""

    def __init__(self, site: Site, backend: str, directory: Path, *extra: str,
                 host: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.outputs = Outputs(directory, backend)
        self.log_path = directory / f"crawl-{uuid.uuid4().hex[:6]}.log"
        # host: the worker's process answers socket.gethostname() with it, as a worker on
        # another machine would (its process cannot be checked from here, only its lease).
        scrapy = (["-c", f"import socket, sys; socket.gethostname = lambda: {host!r}; "
                   "sys.argv[0] = 'scrapy'; from scrapy.cmdline import execute; execute()"]
                  if host else ["-m", "scrapy"])
        cmd = [PYTHON, *scrapy, "crawl", "site", "-a", f"base={site.url}",
               *self.outputs.args, "-s", "CHECKPOINT_SHARED=True",
               "-s", f"CHECKPOINT_LEASE_SECONDS={LEASE}", *extra]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=PROJECT, env=python_env(), stdout=log,
                                         stderr=subprocess.STDOUT)

    def wait(self) -> int:
        return self.proc.wait(timeout=1200)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stat(self, name: str) -> int:
        """A ``checkpoint/`` stat from the final stats dump in the log (0 if absent)."""
        for line in self.log.splitlines():
            if f"'checkpoint/{name}':" in line:
                return int(line.split(":", 1)[1].strip().rstrip(",}"))
        return 0


def scrapy_redis_args(backend: str) -> list[str]:
    """Settings of workers that share scrapy-redis's scheduler, queue and dupefilter (under
    the test's key prefix)."""
    require_redis()
    prefix = _prefix(backend)
    return ["-s", "SCHEDULER=scrapy_redis.scheduler.Scheduler",
            "-s", "DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter",
            "-s", f"REDIS_URL={REDIS_URL.split('?', 1)[0]}", "-s", "SCHEDULER_PERSIST=True",
            "-s", f"SCHEDULER_QUEUE_KEY={prefix}:%(spider)s:requests",
            "-s", f"SCHEDULER_DUPEFILTER_KEY={prefix}:%(spider)s:dupefilter"]


def _assert_union_exact(workers: list[Worker]) -> None:
    for name in ("items.jl", "own.jl"):
        pages = sorted(p for w in workers for p in w.outputs.jsonlines(name))
        assert pages == list(range(N_PAGES)), f"{name}: lost or duplicated items in the union"
    csv_pages = sorted(p for w in workers for p in w.outputs.csv_pages())
    assert csv_pages == list(range(N_PAGES)), "items.csv: lost or duplicated items in the union"


def _two_workers_to_the_end(tmp_path: Path, backend: str, *extra: str) -> tuple[Worker, Worker]:
    """Two workers crawl the site to the end: every page fetched once, every item once in the
    union of their outputs. The site answers nothing until both have joined the stage, so
    both take part however slowly either starts (how the pages split between them is the
    machine's schedule)."""
    site = Site(N_PAGES, delay=0.01)
    site.gate.clear()
    a = b = None
    try:
        a = Worker(site, backend, tmp_path / "a", *extra)
        b = Worker(site, backend, tmp_path / "b", *extra)
        _wait_for_workers(backend, 2, a, b)
        site.gate.set()
        assert a.wait() == 0, a.log[-3000:]
        assert b.wait() == 0, b.log[-3000:]
        hits = site.page_hits()
    finally:
        site.gate.set()
        _kill_left(*(w for w in (a, b) if w is not None))
        site.close()
    _assert_union_exact([a, b])
    assert hits == dict.fromkeys(range(N_PAGES), 1), "a page was fetched twice, or never"
    return a, b


def _wait_for_workers(backend: str, n: int, *workers: Worker) -> None:
    """Wait until the stage records ``n`` workers (each has joined it), with a guard of
    600 s against a hang; fails if one of ``workers`` ends first."""
    shared = _shared(backend)
    try:
        deadline = time.monotonic() + 600
        while len(shared.workers()) < n:
            for w in workers:
                assert w.proc.poll() is None, w.log[-3000:]
            assert time.monotonic() < deadline, "the workers never joined the stage"
            time.sleep(0.02)  # polls the store for the condition
    finally:
        shared.store.close()


def _kill_left(*workers: Worker) -> None:
    """Kill the workers a failed test left running (before its Redis keys are dropped)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()


def _shared(backend: str) -> SharedStage:
    return open_shared(open_store(backend), "site", worker="test")


def _queued(backend: str) -> int:
    """How many payloads the stage keeps for scrapy-redis's queue."""
    shared = _shared(backend)
    if isinstance(shared.store, RedisStore):
        return int(shared.store.client.hlen(shared.store.key("site", "queued")))
    row = shared.store.db.query_one("SELECT count(*) FROM {s}.shared_queued WHERE stage = 'site'")
    return int(row[0]) if row else 0


def _cli(backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--backend", backend, *args],
                          check=False, capture_output=True, text=True, env=python_env(),
                          timeout=600)


def test_two_scrapy_redis_workers_share_its_queue_and_each_page_is_crawled_once(
    tmp_path: Path, shared_backend: str
) -> None:
    _two_workers_to_the_end(tmp_path, shared_backend, *scrapy_redis_args(shared_backend))
    workers = _shared(shared_backend).workers()
    assert [w.status for w in workers] == ["finished", "finished"]
    assert sum(w.done for w in workers) == N_PAGES
    assert _queued(shared_backend) == 0
    # Run again with ON_COMPLETE=restart: the completed stage starts over, scrapy-redis's
    # dupefilter emptied with it.
    site = Site(N_PAGES)
    try:
        again = Worker(site, shared_backend, tmp_path / "again", *scrapy_redis_args(shared_backend),
                       "-s", "CHECKPOINT_ON_COMPLETE=restart")
        assert again.wait() == 0, again.log[-3000:]
    finally:
        site.close()
    assert sorted(again.outputs.jsonlines("items.jl")) == list(range(N_PAGES))


def test_without_scheduler_persist_scrapy_redis_workers_are_refused(
    tmp_path: Path, shared_backend: str
) -> None:
    site = Site(10)
    try:
        args = scrapy_redis_args(shared_backend)
        i = args.index("SCHEDULER_PERSIST=True")
        del args[i - 1:i + 1]  # the "-s" and its value
        worker = Worker(site, shared_backend, tmp_path / "a", *args)
        assert worker.wait() != 0
    finally:
        site.close()
    assert "needs SCHEDULER_PERSIST = True" in worker.log


def test_two_workers_share_one_stage_and_each_page_is_crawled_once(
    tmp_path: Path, shared_backend: str
) -> None:
    a, b = _two_workers_to_the_end(tmp_path, shared_backend)
    # One worker got the start page; the other was given part of its frontier.
    assert a.stat("given") + b.stat("given") == a.stat("received") + b.stat("received") > 0
    workers = _shared(shared_backend).workers()
    assert [w.status for w in workers] == ["finished", "finished"]
    store = open_store(shared_backend)
    for w in workers:
        view = read_stage(store, sub_stage_name("site", w.id))
        assert view.state.status is Status.COMPLETED
        assert view.state.pending_units == 0
    assert sum(w.done for w in workers) == N_PAGES

    listed = _cli(shared_backend, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)["shared"]["site"]
    assert sorted(w["id"] for w in shown) == sorted(w.id for w in workers)
    show = _cli(shared_backend, "show", "site")
    assert show.returncode == 0, show.stderr
    assert "Shared stage site: completed, 400 done, 0 pending in 2 worker" in show.stdout

    # Run again: a completed shared stage does nothing (the default)...
    site = Site(N_PAGES)
    try:
        again = Worker(site, shared_backend, tmp_path / "c")
        assert again.wait() == 0, again.log[-3000:]
    finally:
        site.close()
    assert "already completed: nothing to fetch" in again.log
    assert "-s CHECKPOINT_RESET=True" in again.log
    # A worker's part alone cannot be reset (its claims would stay)...
    part = _cli(shared_backend, "reset", sub_stage_name("site", workers[0].id))
    assert part.returncode == 2
    assert "reset the shared stage as a whole ('site')" in part.stderr
    # ...`reset` of the shared stage removes it all, once no worker is alive.
    reset = _cli(shared_backend, "reset", "site")
    assert reset.returncode == 0, reset.stderr
    assert _shared(shared_backend).workers() == []
    assert open_store(shared_backend).stages() == []  # the workers' sub-stages went with it
    if shared_backend.startswith("postgres"):  # and their owners rows: no table grows per run
        row = _shared(shared_backend).store.db.query_one(
            "SELECT count(*) FROM {s}.owners WHERE stage LIKE 'site.w.%%'")
        assert row == (0,)


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "victim", "scheduler"), [
    (31, "a", "scrapy"), (32, "b", "scrapy"), (33, "a", "scrapy"),
    (34, "a", "scrapy-redis"), (35, "b", "scrapy-redis"), (36, "a", "scrapy-redis"),
])
def test_two_workers_one_killed_the_survivor_finishes_exactly_once(
    tmp_path: Path, shared_backend: str, seed: int, victim: str, scheduler: str
) -> None:
    rng = random.Random(seed)
    site = Site(N_PAGES, delay=0.01)
    site.gate.clear()  # nothing is answered until both workers joined: the victim has joined
    extra = scrapy_redis_args(shared_backend) if scheduler == "scrapy-redis" else []
    try:
        a = Worker(site, shared_backend, tmp_path / "a", *extra)
        b = Worker(site, shared_backend, tmp_path / "b", *extra)
        killed, survivor = (a, b) if victim == "a" else (b, a)
        _wait_for_workers(shared_backend, 2, a, b)
        site.gate.set()
        assert site.wait_for_hits(rng.randint(60, N_PAGES // 2))
        killed.proc.kill()
        assert killed.wait() == -9
        assert survivor.wait() == 0, survivor.log[-3000:]
        hits = site.page_hits()
    finally:
        site.close()
    _assert_union_exact([a, b])
    assert set(hits) == set(range(N_PAGES)), "a page was never fetched"
    assert "adopted worker" in survivor.log
    workers = {w.status: w for w in _shared(shared_backend).workers()}
    assert sorted(workers) == ["adopted", "finished"]
    assert not any(w.alive for w in workers.values())
    store = open_store(shared_backend)
    dead = read_stage(store, sub_stage_name("site", workers["adopted"].id)).state
    assert dead.status is Status.COMPLETED
    assert dead.pending_units == 0
    assert dead.metadata["adopted_by"] == workers["finished"].id


def test_a_worker_adopted_on_another_host_is_cut_back_by_a_later_run_here(
    tmp_path: Path, shared_backend: str
) -> None:
    """A worker killed here and adopted by a worker on another host leaves lines of requests
    it had not committed in its files (the adopter cannot reach them, and runs those requests
    again). The next worker started on this host cuts them back, also when the stage has
    completed by then: before, it said the stage was completed and left the files as they
    were, and the union of the outputs held those items twice for good."""
    site = Site(N_PAGES, delay=0.01)
    try:
        a = Worker(site, shared_backend, tmp_path / "a")
        assert site.wait_for_hits(60, proc=a.proc)
        a.proc.kill()
        assert a.wait() == -9
        # A line written after its last commit (its request not recorded done): page 0,
        # which the adopter writes too, since it was done here before the kill.
        with (tmp_path / "a" / "items.jl").open("a") as f:
            f.write('{"page": 0}\n')
        b = Worker(site, shared_backend, tmp_path / "b", host="elsewhere.invalid")
        assert b.wait() == 0, b.log[-3000:]
        assert "adopted worker" in b.log
        adopted = [w for w in _shared(shared_backend).workers() if w.status == "adopted"]
        assert [w.outputs_cut for w in adopted] == [False]  # another host: not cut there
        again = Worker(site, shared_backend, tmp_path / "a")
        assert again.wait() == 0, again.log[-3000:]
        assert "already completed" in again.log
    finally:
        site.close()
    _assert_union_exact([a, b])
    assert [w.outputs_cut for w in _shared(shared_backend).workers()
            if w.status == "adopted"] == [True]


def test_a_shared_stage_whose_redis_keys_vanished_is_refused_until_reset(
    tmp_path: Path, redis_backend: str
) -> None:
    """Redis emptied under a worker (restarted without its data, or flushed): the worker stops
    saying the next run will not start the stage from zero silently. Before, the next worker
    joined the stage as new (the claims and worker records were gone with the sub-stage) and
    crawled every page again, writing the items the first one had written a second time, and
    ended 'Completed'. Now it refuses with the marker's paragraph, show says damaged, and a
    reset of the shared stage starts it over."""
    site = Site(N_PAGES, delay=0.01)
    try:
        a = Worker(site, redis_backend, tmp_path / "a")
        assert site.wait_for_hits(60, proc=a.proc)
        drop_redis_prefix(_prefix(redis_backend))  # every key of the stage, as FLUSHDB
        assert a.wait() == 1, a.log[-3000:]  # stopped by the checkpoint: exit status 1
        assert "no longer holds stage 'site.w." in a.log
        refused = Worker(site, redis_backend, tmp_path / "b")
        assert refused.wait() == 1, refused.log[-3000:]
        assert "lost the checkpoint of stage 'site'" in refused.log
        assert "Traceback" not in refused.log
        assert refused.outputs.jsonlines("items.jl") == []
        shown = _cli(redis_backend, "show", "site")
        assert shown.returncode == 3, shown.stdout + shown.stderr
        assert "Shared stage site: damaged" in shown.stdout
        assert _cli(redis_backend, "reset", "site", "--force").returncode == 0
        c = Worker(site, redis_backend, tmp_path / "c")
        assert c.wait() == 0, c.log[-3000:]
    finally:
        site.close()
    _assert_union_exact([c])


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "scheduler"), [(41, "scrapy"), (42, "scrapy"),
                                                 (43, "scrapy-redis"), (44, "scrapy-redis")])
def test_workers_killed_and_replaced_many_times_lose_and_repeat_nothing(
    tmp_path: Path, shared_backend: str, seed: int, scheduler: str
) -> None:
    """Two workers (plain Scrapy scheduler, or scrapy-redis's shared one); five times a random
    one is SIGKILLed at a random moment and a new worker takes its place (as a supervisor
    would). The union of every worker's outputs holds every item exactly once."""
    rng = random.Random(seed)
    n_pages = 800
    site = Site(n_pages, delay=0.01)
    workers: list[Worker] = []
    extra = scrapy_redis_args(shared_backend) if scheduler == "scrapy-redis" else []
    try:
        live = [Worker(site, shared_backend, tmp_path / f"w{i}", *extra) for i in range(2)]
        workers += live
        for kill in range(5):
            if not site.wait_for_hits(site.total_hits + rng.randint(30, 100),
                                       proc=live[0].proc):
                break  # the crawl ended first
            victim = rng.choice(live)
            victim.proc.kill()
            victim.wait()
            live.remove(victim)
            fresh = Worker(site, shared_backend, tmp_path / f"r{kill}", *extra)
            live.append(fresh)
            workers.append(fresh)
        for w in live:
            assert w.wait() == 0, w.log[-3000:]
        hits = site.page_hits()
    finally:
        _kill_left(*workers)
        site.close()
    for name in ("items.jl", "own.jl"):
        pages = sorted(p for w in workers for p in w.outputs.jsonlines(name))
        assert pages == list(range(n_pages)), f"{name}: lost or duplicated items in the union"
    assert sorted(p for w in workers for p in w.outputs.csv_pages()) == list(range(n_pages))
    assert set(hits) == set(range(n_pages)), "a page was never fetched"
    records = _shared(shared_backend).workers()
    assert not any(w.alive for w in records)
    assert {w.status for w in records} <= {"adopted", "finished"}


def test_two_live_workers_on_one_host_cannot_share_an_output_file(
    tmp_path: Path, shared_backend: str
) -> None:
    site = Site(60)
    site.gate.clear()  # hold the first worker's requests
    started: list[Worker] = []
    try:
        first = Worker(site, shared_backend, tmp_path / "same")
        started.append(first)
        shared = _shared(shared_backend)
        deadline = time.monotonic() + 600  # a guard against a hang
        while not any(w.outputs for w in shared.workers()):  # it has opened its outputs
            assert first.proc.poll() is None, first.log[-3000:]
            assert time.monotonic() < deadline, "the first worker never opened its outputs"
            time.sleep(0.02)  # polls the store for the condition
        second = Worker(site, shared_backend, tmp_path / "same")
        started.append(second)
        assert second.wait() != 0, "the second worker started on the first one's files"
        site.gate.set()
        assert first.wait() == 0, first.log[-3000:]
    finally:
        site.gate.set()
        _kill_left(*started)
        site.close()
    assert "too: give every worker on a host its own output file" in second.log
    assert sorted(first.outputs.jsonlines("items.jl")) == list(range(60))


def test_units_given_to_a_worker_that_dies_come_back_to_the_giver(
    tmp_path: Path, shared_backend: str
) -> None:
    """The giver adopts the worker it gave units to: the units it gave away (and still has
    in its own dupefilter and queue) are crawled, once."""
    site = Site(N_PAGES, delay=0.1)
    started: list[Worker] = []
    try:
        giver = Worker(site, shared_backend, tmp_path / "giver")
        started.append(giver)
        assert site.wait_for_hits(20)
        taker = Worker(site, shared_backend, tmp_path / "taker")
        started.append(taker)
        shared = _shared(shared_backend)
        deadline = time.monotonic() + 600  # a guard against a hang
        while True:  # until the taker has journaled units it was given
            record = [w for w in shared.workers() if w.pid == taker.proc.pid]
            if record and record[0].pending >= 8:
                break
            assert taker.proc.poll() is None, taker.log[-3000:]
            assert time.monotonic() < deadline, "the taker was never given work"
            time.sleep(0.02)  # polls the store for the condition
        taker.proc.kill()
        taker.wait()
        assert giver.wait() == 0, giver.log[-3000:]
        hits = site.page_hits()
    finally:
        _kill_left(*started)
        site.close()
    _assert_union_exact([giver, taker])
    assert set(hits) == set(range(N_PAGES))
    assert giver.stat("given") > 0
    assert giver.stat("workers_adopted") == 1
    # The adopted sub-stage is closed as handed over, not "resumed" and "Completed" there.
    assert "is closed as handed over" in giver.log
    assert "Detected incomplete checkpoint for site.w." not in giver.log
    completed = [line for line in giver.log.splitlines() if "] Completed. Progress" in line]
    assert len(completed) == 1, completed  # its own sub-stage's line only


def test_giving_work_keeps_the_takers_record_readable(shared_backend: str) -> None:
    """Giving marks the taker running by editing its record in the store; the record must
    stay a valid worker record (Redis's cjson would turn ``"outputs": []`` into ``{}``)."""
    store = open_store(shared_backend)
    giver = open_shared(store, "site", worker="giver")
    taker = open_shared(store, "site", worker="taker")
    for stage in (giver, taker):
        stage.status = "idle" if stage is taker else "running"
        stage.beat()
    assert giver.claim(7)
    assert giver.give("taker", [(7, {"url": "http://127.0.0.1/7"})]) == [7]
    records = {w.id: w for w in giver.workers()}
    assert set(records) == {"giver", "taker"}
    assert records["taker"].status == "running"
    assert records["taker"].outputs == []
    assert taker.inbox() == [(7, {"url": "http://127.0.0.1/7"})]
    # Only an idle worker is given work: a leaving one is not.
    taker.beat("leaving")
    assert giver.claim(8)
    assert giver.give("taker", [(8, {"url": "http://127.0.0.1/8"})]) == []
    store.close()


def test_a_worker_given_work_is_never_recorded_idle_before_it_schedules_it(
    shared_backend: str,
) -> None:
    """The taker's heartbeat thread does not know of a gift until its next tick drains the
    inbox: a beat saying 'idle' in between must not overwrite the 'running' the give script
    recorded, or the giver takes the taker for idle, leaves the stage finished, and the
    given units are lost if the taker then dies."""
    store = open_store(shared_backend)
    giver = open_shared(store, "site", worker="giver")
    taker = open_shared(store, "site", worker="taker")
    giver.beat()
    taker.beat("idle")
    assert giver.claim(9)
    assert giver.give("taker", [(9, {"url": "http://127.0.0.1/9"})]) == [9]
    assert taker.status == "idle"  # this process has not seen the gift yet
    taker.beat()  # what its heartbeat thread writes now
    assert {w.id: w.status for w in giver.workers()}["taker"] == "running"
    taker.trim_inbox(1)  # scheduled and journaled by the taker: idle again once it says so
    taker.beat("idle")
    assert {w.id: w.status for w in giver.workers()}["taker"] == "idle"
    store.close()


def test_a_shared_stage_whose_worker_lost_work_is_shown_incomplete(shared_backend: str) -> None:
    """`show` of a shared stage sums its workers' sub-stages: one worker that lost work makes
    the whole stage incomplete, with the count and the reason, never 'completed'."""
    store = open_store(shared_backend)
    for worker, lost in (("a", 0), ("b", 2)):
        cp = EnhancedCheckpoint(stage=sub_stage_name("site", worker), store=store)
        cp.start()
        cp.add_unit(1, {"url": "http://127.0.0.1/1"})
        cp.finish_unit(1, processed=1, successful=1)
        if lost:
            cp.record_lost("unjournaled", lost)
        cp.complete()
        cp.close()
        open_shared(store, "site", worker=worker).beat("finished")
    manager = UnifiedCheckpointManager(backend=shared_backend)
    summary = manager.shared_summary("site", manager.shared_stages()["site"])
    assert summary["status"] == "incomplete"
    assert summary["lost"] == {"unjournaled": 2}
    shown = CliRunner().invoke(cli_main, ["--backend", shared_backend, "show", "site"])
    assert "Shared stage site: incomplete" in shown.output
    assert "Lost: 2 unit(s) whose work cannot be done (unjournaled: 2)" in shown.output
    as_json = json.loads(CliRunner().invoke(
        cli_main, ["--backend", shared_backend, "show", "site", "--json"]).output)
    assert (as_json["status"], as_json["lost"]) == ("incomplete", {"unjournaled": 2})
    store.close()
