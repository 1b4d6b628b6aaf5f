"""The Redis store when its keys are emptied or replaced behind it: a state write after the
stage's keys vanished, keys holding another Redis type, the tracker's last commit failing."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from scrapy_checkpoint import CheckpointError, EnhancedCheckpoint
from scrapy_checkpoint.cli import run as cli_run
from scrapy_checkpoint.errors import CheckpointLostError, CheckpointWriteError, CorruptCheckpointError

from .conftest import PYTHON, python_env
from .test_redis_store import PrivateRedis, needs_redis_server


def _client_and_prefix(url: str) -> tuple[redis.Redis, str]:
    return redis.Redis.from_url(url.partition("?")[0]), url.partition("prefix=")[2]


def _failed_job(script: Path) -> str:
    """Run ``script``; it must end with status 1 and no traceback. Returns its stderr."""
    done = subprocess.run([PYTHON, str(script)], capture_output=True, env=python_env(),
                          timeout=900, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err, err
    return err


def _drop_stage_keys(url: str, stage: str) -> None:
    """What a Redis restarted without its data does to a stage: every key gone."""
    client, prefix = _client_and_prefix(url)
    keys = list(client.scan_iter(f"{prefix}:{stage}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_a_state_write_after_the_stages_keys_vanished_does_not_bring_them_back(
    redis_backend: str,
) -> None:
    """Redis emptied under a running stage, and the next thing the stage writes is its state
    (a timer's refresh between two commits): that write must not recreate a state and a
    meta with no journal, which the next run would take for a stage to resume from nothing
    (redoing every finished unit). The job stops saying Redis lost the stage, and the next
    run refuses to start it from zero."""
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0)
    cp.start(total_items=20)
    for i in range(10):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    _drop_stage_keys(redis_backend, "s")
    with pytest.raises(CheckpointLostError, match="no longer holds stage 's'"):
        cp.save(force=True)  # nothing to commit: the state write alone
    cp.abandon()
    client, prefix = _client_and_prefix(redis_backend)
    try:
        assert not client.exists(f"{prefix}:s:state", f"{prefix}:s:meta")
        assert client.exists(f"{prefix}:s:gone")
    finally:
        client.close()
    again = EnhancedCheckpoint(redis_backend, "s", log_every=0)
    try:
        with pytest.raises(CheckpointError, match="lost the checkpoint of stage 's'"):
            again.start(total_items=20)
    finally:
        again.close()


def test_a_tracker_whose_last_commit_fails_ends_with_one_paragraph(
    redis_backend: str, tmp_path: Path,
) -> None:
    """The stage's keys vanish after the last update: completing the stage at the end of the
    block cannot be recorded. The program ends with the error's paragraph, not a
    traceback through the program and this package."""
    script = tmp_path / "job.py"
    script.write_text(f"""
import asyncio, redis
from scrapy_checkpoint import AsyncCheckpointTracker

async def main():
    async with AsyncCheckpointTracker({redis_backend!r}, "s", progress_bar=False) as t:
        t.start(total_items=5)
        for i in range(5):
            t.update(processed=1, successful=1, index=i)
        await t.save(force=True)
        client = redis.Redis.from_url({redis_backend.partition("?")[0]!r})
        client.delete(*client.scan_iter({redis_backend.partition("prefix=")[2] + ":s:*"!r}))

asyncio.run(main())
""")
    err = _failed_job(script)
    assert "Error: Redis at" in err
    assert "no longer holds stage 's'" in err


@pytest.mark.parametrize("part", ["journal", "meta", "snapshot", "state", "lock", "gone"])
def test_a_key_of_another_redis_type_is_one_clear_error(
    redis_backend: str, part: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """A stage key holding another Redis type (written by another program, or a shared
    prefix): show and the next run say which key and what to do, instead of redis-py's
    WRONGTYPE traceback; nothing is changed."""
    with EnhancedCheckpoint(redis_backend, "s", log_every=0) as cp:
        cp.start(total_items=3)
        for i in range(3):
            cp.update(processed=1, successful=1, index=i)
        cp.complete()
    client, prefix = _client_and_prefix(redis_backend)
    key = f"{prefix}:s:{part}"
    try:
        client.delete(key)
        if part == "journal":
            client.set(key, b"garbage")
        else:
            client.rpush(key, b"garbage")
        code = cli_run(["--backend", redis_backend, "show", "s", "--json"])
        out, err = capsys.readouterr()
        assert code == 3, err
        assert out == ""
        assert "Traceback" not in err
        assert "another type than this package writes" in err
        assert key in err
        with pytest.raises(CorruptCheckpointError, match="another type than this package"):
            EnhancedCheckpoint(redis_backend, "s", log_every=0).open()
        assert client.type(key) == (b"string" if part == "journal" else b"list")  # as it was
    finally:
        client.close()


def test_a_journal_evicted_from_redis_is_damage_not_a_fresh_start(
    redis_backend: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """The journal key of an interrupted stage is gone (evicted under a maxmemory-policy
    other than noeviction, or deleted by hand) while its meta says how many groups were
    appended: the units those groups finished are not known. Reading or resuming the stage
    says so; it is not resumed as if they had never been done (which redid them)."""
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=20)
    for i in range(8):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.abandon()  # as if the process had died: the groups stay in the journal
    client, prefix = _client_and_prefix(redis_backend)
    try:
        assert client.llen(f"{prefix}:s:journal") >= 8
        client.delete(f"{prefix}:s:journal")
    finally:
        client.close()
    assert cli_run(["--backend", redis_backend, "show", "s"]) == 3
    err = capsys.readouterr().err
    assert "lacks" in err
    assert "deleted or evicted" in err
    again = EnhancedCheckpoint(redis_backend, "s", log_every=0)
    with pytest.raises(CorruptCheckpointError, match="deleted or evicted"):
        again.open()


@pytest.mark.parametrize("evicted", [("snapshot", "meta"), ("snapshot", "meta", "state")])
def test_a_snapshot_evicted_with_its_meta_is_damage_not_a_resume_from_the_journals_tail(
    redis_backend: str, evicted: tuple[str, ...], capsys: pytest.CaptureFixture[str],
) -> None:
    """After a compaction the journal holds only the groups after the snapshot. With the
    snapshot and the meta hash (which counted the groups the snapshot covers) evicted or
    deleted, the next run took the journal's tail for the whole stage: it resumed with a
    few of the 3000 units done and redid the rest unsaid. Now the stage is damage (reading
    and resuming say so, exit status 3), and nothing is changed."""
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0, save_every=1, compact_min_bytes=4096)
    cp.start(total_items=3000)
    for i in range(3000):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.drain_io()
    cp.abandon()  # as if the process had died
    client, prefix = _client_and_prefix(redis_backend)
    try:
        assert int(client.hget(f"{prefix}:s:meta", "base") or 0) > 0, "no compaction happened"
        for part in evicted:
            client.delete(f"{prefix}:s:{part}")
        journal = client.llen(f"{prefix}:s:journal")
    finally:
        client.close()
    assert cli_run(["--backend", redis_backend, "show", "s"]) == 3
    err = capsys.readouterr().err
    assert "does not begin with the stage's creation" in err
    assert "Traceback" not in err
    again = EnhancedCheckpoint(redis_backend, "s", log_every=0)
    with pytest.raises(CorruptCheckpointError, match="deleted or evicted"):
        again.open()
    client, prefix = _client_and_prefix(redis_backend)
    try:
        assert client.llen(f"{prefix}:s:journal") == journal, "the journal was changed"
    finally:
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if needs_redis_server.args[0]:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path / "redis", persistent=False)
    try:
        yield server
    finally:
        server.stop()


def test_a_command_the_acl_denies_inside_a_script_is_one_clear_error(
    private_redis: PrivateRedis,
) -> None:
    """A user that may run the scripts but not a command they run (SET, EXPIRE): Redis's
    reply does not name the command; the error says which commands the scripts need,
    as a CheckpointError that is still redis-py's NoPermissionError."""
    client = redis.Redis(port=private_redis.port)
    client.execute_command("ACL", "SETUSER", "noset", "on", ">pw", "~*", "&*", "+@all", "-set")
    client.close()
    url = private_redis.url.replace("redis://", "redis://noset:pw@")
    with pytest.raises(CheckpointError, match="scripts run") as caught:
        EnhancedCheckpoint(url, "s", log_every=0).open()
    assert isinstance(caught.value, redis.exceptions.NoPermissionError)
    assert "+@write" in str(caught.value)
    assert ":pw@" not in str(caught.value)


def test_a_redis_gone_for_good_before_the_end_is_not_a_recorded_completion(
    private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    """Redis stops after the last update and before the block ends: the groups of the end
    of the run (its completion) wait in the process and never reach Redis. The job does
    not end as if the stage were recorded completed: it exits 1 with one paragraph saying
    what was not recorded and that the next run does those units again."""
    script = tmp_path / "job.py"
    script.write_text(f"""
import asyncio, redis
from scrapy_checkpoint import AsyncCheckpointTracker

async def main():
    async with AsyncCheckpointTracker({private_redis.url!r}, "s", progress_bar=False) as t:
        t.start(total_items=5)
        for i in range(5):
            t.update(processed=1, successful=1, index=i)
        await t.save(force=True)
        redis.Redis(port={private_redis.port}).shutdown(nosave=True)

asyncio.run(main())
""")
    err = _failed_job(script)
    assert "Cannot record the end of stage 's'" in err
    assert "never reached it" in err


def test_a_redis_that_evicts_keys_is_warned_of_at_open(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis with maxmemory and an evicting policy may drop a checkpoint's keys (they all
    have an expiry, so volatile-* policies too): opening a stage there says so, once per
    store, with the setting to change."""
    client = redis.Redis(port=private_redis.port)
    client.config_set("maxmemory", "50mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    with caplog.at_level("WARNING", logger="scrapy_checkpoint"), \
            EnhancedCheckpoint(private_redis.url, "s", log_every=0) as cp:
        cp.start(total_items=1)
        cp.update(processed=1, successful=1, index=0)
        cp.complete()
    warned = [r.getMessage() for r in caplog.records if "evicts keys" in r.getMessage()]
    assert len(warned) == 1
    assert "maxmemory-policy allkeys-lru" in warned[0]
    assert "noeviction" in warned[0]


def _crawl_hit_midway(private: PrivateRedis, tmp_path: Path, fault: Callable[[redis.Redis], object],
                      repair: Callable[[redis.Redis], object] = lambda client: None) -> str:
    """A real `scrapy crawl` of 300 pages whose Redis gets ``fault`` after 100 pages: it must
    stop with close reason checkpoint_error, no traceback and fewer pages written; after
    ``repair`` the same command resumes and ends with every page once. Returns the first
    crawl's log."""
    from .crawl import Outputs, crawl
    from .site import Site

    site = Site(300, delay=0.005)
    outputs = Outputs(tmp_path / "out", private.url)
    outputs.directory.mkdir()
    client = redis.Redis(port=private.port)
    try:
        def midway() -> None:
            if site.wait_for_hits(100):
                fault(client)

        threading.Thread(target=midway, daemon=True).start()
        first = crawl(site, outputs)
        assert "'finish_reason': 'checkpoint_error'" in first.log, first.log[-3000:]
        assert "Traceback" not in first.log, first.log[-3000:]
        assert len(outputs.jsonlines("items.jl")) < 300
        repair(client)
        again = crawl(site, outputs)
        assert again.returncode == 0, again.log[-3000:]
        assert "Completed" in again.log
    finally:
        client.close()
        site.close()
    for name in ("items.jl", "own.jl"):
        assert sorted(outputs.jsonlines(name)) == list(range(300)), name
    return first.log


def test_a_crawl_whose_redis_fills_up_stops_with_one_paragraph_and_resumes(
    private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    """Redis reaches its maxmemory (noeviction) mid-crawl: every write is refused with OOM.
    The crawl stops with one paragraph saying Redis is full and what to do, not a
    traceback per request while it went on to 'finished' with the journal groups it could
    not write dropped; once Redis has room again the same command resumes."""
    log = _crawl_hit_midway(
        private_redis, tmp_path,
        lambda client: client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 1000),
        lambda client: client.config_set("maxmemory", 0))
    assert "Redis refused to write the checkpoint (command not allowed when used memory" in log
    assert "raise its maxmemory" in log


def test_a_crawl_whose_lock_key_is_deleted_stops_with_one_paragraph_and_resumes(
    private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    """The stage's lock key is deleted behind a running crawl: its next journal group is
    refused (another process may own the stage). The crawl stops with one paragraph saying
    its lock was lost, not with the close's traceback of the same refusal, and the same
    command resumes."""
    log = _crawl_hit_midway(private_redis, tmp_path,
                            lambda client: client.delete("scrapy_checkpoint:site:lock"))
    assert "This run lost its lock on stage 'site' in Redis at" in log


def test_a_resume_whose_request_records_were_deleted_counts_them_lost_without_a_traceback(
    private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    """A crawl killed with requests pending, then the stage's hash of request records deleted
    behind it: the resumed crawl cannot rebuild those requests. Each comes out of the queue
    as one warning and a unit counted lost, not a traceback from Scrapy's scheduler loop
    per request, and the crawl ends 'Incomplete' saying how many, never 'Completed'."""
    from .crawl import Outputs, crawl, sigkill
    from .site import Site

    site = Site(300, delay=0.005)
    outputs = Outputs(tmp_path / "out", private_redis.url)
    outputs.directory.mkdir()
    client = redis.Redis(port=private_redis.port)
    try:
        first = crawl(site, outputs, interrupt=sigkill, interrupt_after_hits=100)
        assert first.returncode == -9, first.log[-3000:]
        assert client.delete("scrapy_checkpoint:site:requests") == 1
        again = crawl(site, outputs)
    finally:
        client.close()
        site.close()
    assert again.returncode == 0, again.log[-3000:]
    assert "Traceback" not in again.log, again.log[-3000:]
    assert again.log.count("A journaled request cannot be read") == 1
    assert "Incomplete: the work of" in again.log
    assert "lost (unrestorable:" in again.log
    assert "Completed" not in again.log


def test_a_full_redis_still_lists_and_shows_its_stages_and_refuses_a_reset_plainly(
    private_redis: PrivateRedis, capsys: pytest.CaptureFixture[str],
) -> None:
    """A Redis at its maxmemory (noeviction) refuses every write and every MULTI, reads
    included. Reading the stages (list, show) must still work, as that is how the user
    looks at what a stopped job recorded; a reset is refused with one paragraph saying
    Redis is full, not redis-py's error for the first command of a pipeline."""
    cp = EnhancedCheckpoint(private_redis.url, "s", log_every=0)
    cp.start(total_items=20)
    for i in range(10):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.abandon()
    client = redis.Redis(port=private_redis.port)
    client.config_set("maxmemory", 1)
    client.close()
    capsys.readouterr()
    assert cli_run(["--backend", private_redis.url, "list"]) == 0, capsys.readouterr().err
    assert "10/20 (50.0%)" in capsys.readouterr().out
    assert cli_run(["--backend", private_redis.url, "show", "s"]) == 0, capsys.readouterr().err
    assert "Processed          10 (successful 10" in capsys.readouterr().out
    assert cli_run(["--backend", private_redis.url, "reset", "s"]) == 1
    err = capsys.readouterr().err
    assert "Redis is full: raise its maxmemory" in err
    assert "Stage 's' not reset." in err


@pytest.mark.parametrize("pid", ["99999999999999999999999", "0", "-1"])
def test_a_lock_naming_a_pid_no_process_can_have_is_a_stale_lock(
    redis_backend: str, pid: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """The lock of an interrupted stage names this host and a pid no process can have (a
    value put there by hand or by another program). Before, a pid past the C long made show
    and the next run fail with an OverflowError traceback, and 0 or -1 (os.kill's process
    group and every process) read as a live holder: the stage was refused until the key
    expired. Now it is a holder that is gone: show reads the stage, and the next run takes
    the stage over and resumes it."""
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0)
    cp.start(total_items=6)
    for i in range(3):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.abandon()  # as after a kill -9: nothing more written, the lock left
    client, prefix = _client_and_prefix(redis_backend)
    try:
        client.set(f"{prefix}:s:lock", f"{socket.gethostname()}:{pid}:0123abcd", px=600_000)
        assert cli_run(["--backend", redis_backend, "show", "s"]) == 0
        assert "Traceback" not in capsys.readouterr().err
        with EnhancedCheckpoint(redis_backend, "s", log_every=0) as again:
            again.start(total_items=6)
            assert [i for i in range(6) if not again.should_skip(i)] == [3, 4, 5]
    finally:
        client.close()


def test_a_worker_record_written_over_with_garbage_is_rewritten_by_its_worker(
    redis_backend: str,
) -> None:
    """A shared stage's worker record that does not decode (written over by something else):
    the worker's heartbeat and its leaving rewrite it, and work is never given to it. Before,
    the Lua scripts failed on it ('Expected object key string'), every heartbeat was a
    warning, the worker could not record that it left, and the stage was never seen
    completed by its workers' records."""
    from scrapy_checkpoint.shared import open_shared
    from scrapy_checkpoint.stores import open_store

    store = open_store(redis_backend)
    try:
        worker = open_shared(store, "site", worker="w1")
        worker.beat("running")
        taker = open_shared(store, "site", worker="w2")
        taker.beat("idle")
        for name in ("w1", "w2"):
            store.client.hset(store.key("site", "workers"), name, b"{garbage")
        assert worker.claim(7)
        assert worker.give("w2", [(7, {"url": "http://127.0.0.1/7"})]) == []
        worker.beat("finished")
        assert not worker.adopted
        records = {w.id: w.status for w in open_shared(store, "site", worker="-").workers()}
        assert records == {"w1": "finished"}  # w2's record stays unreadable: ignored
    finally:
        store.close()


def test_a_meta_count_written_over_mid_run_stops_the_job_with_one_paragraph(
    redis_backend: str,
) -> None:
    """The meta hash's seq turned into text while the stage runs (another program writing the
    stage's keys): the next group append stops the job with one CheckpointWriteError saying
    what happened and what to do. Before, the append script failed with Lua's 'attempt to
    compare number with nil', a redis-py ResponseError: a crawl logged a traceback per
    finished request, went on to 'finished', and ended saying its groups 'could not reach
    Redis'."""
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=6)
    for i in range(3):
        cp.update(processed=1, successful=1, index=i)
    client, prefix = _client_and_prefix(redis_backend)
    try:
        client.hset(f"{prefix}:s:meta", "seq", "abc")
        with pytest.raises(CheckpointWriteError, match="was written over while the stage ran: "
                                                       "its seq is not a number") as caught:
            cp.update(processed=1, successful=1, index=3)
        assert f"{prefix}:s:meta" in str(caught.value)
        assert "reset s" in str(caught.value)
        assert client.llen(f"{prefix}:s:journal") == 3 + 1  # the start's group and three
    finally:
        cp.abandon()
        client.close()


def test_a_journal_deleted_while_the_stage_runs_is_recorded_again_by_its_next_snapshot(
    redis_backend: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """The journal key deleted (or evicted) while its writer runs: the writer's state still
    has those groups, and its next snapshot (here the one a clean close writes) covers
    every group it appended, so nothing recorded is lost. Before, the snapshot covered only
    the groups left in the list: the stage had run to its end, but every later start and
    show refused it ('lacks 6 of the 10 group(s) recorded'), and a reset redid all of it."""
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    for i in range(5):
        cp.update(processed=1, successful=1, index=i)
    client, prefix = _client_and_prefix(redis_backend)
    try:
        client.delete(f"{prefix}:s:journal")
        for i in range(5, 8):
            cp.update(processed=1, successful=1, index=i)
        cp.close()
        assert cli_run(["--backend", redis_backend, "show", "s"]) == 0, capsys.readouterr().err
        with EnhancedCheckpoint(redis_backend, "s", log_every=0) as again:
            again.start(total_items=10)
            assert [i for i in range(10) if not again.should_skip(i)] == [8, 9]
    finally:
        client.close()
