"""The Redis store's own promises: atomic, idempotent group commits; outages; clear errors.

Everything else the file store proves runs against Redis too (the ``store_location``
fixture parametrises those tests).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from scrapy_checkpoint import CheckpointError, EnhancedCheckpoint, Status, read_stage
from scrapy_checkpoint.clock import utcnow
from scrapy_checkpoint.errors import CheckpointLockedError
from scrapy_checkpoint.state import Owner
from scrapy_checkpoint.stores.redis import RedisStore, compress, decompress

from .conftest import PYTHON, SCRIPTS, python_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CuttingProxy:
    """A TCP proxy to Redis that can drop the connection after forwarding a command,
    before Redis's reply reaches the client: the client cannot tell if it ran."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_after: bytes | None = None
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            cut = threading.Event()  # set: this connection's replies are dropped
            answered = threading.Event()  # set: Redis answered the cut command (it ran it)
            for args in ((client, upstream, True, cut, answered),
                         (upstream, client, False, cut, answered)):
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool,
              cut: threading.Event, answered: threading.Event) -> None:
        tail = b""  # the end of the previous chunk: a command name may span two reads
        try:
            while data := src.recv(65536):
                if not from_client:
                    if cut.is_set():
                        answered.set()
                        return  # the reply to the cut command never reaches the client
                    dst.sendall(data)
                    continue
                marker = self.cut_after
                if marker is not None and marker in tail + data:
                    # Counted and muted before Redis can answer: the reply is dropped, and the
                    # test sees the cut as soon as its client sees the error.
                    self.cut_after = None
                    self.cuts += 1
                    cut.set()
                    dst.sendall(data)
                    # Cut once Redis has run the command (its reply came back), however long
                    # that takes: the client never gets the reply.
                    answered.wait(600)
                    for sock in (src, dst):
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                dst.sendall(data)
                tail = data[-16:]
        except OSError:
            pass
        finally:
            src.close()

    def close(self) -> None:
        self._server.close()


def test_a_group_whose_reply_was_lost_is_applied_exactly_once(redis_backend: str) -> None:
    store = RedisStore(redis_backend)
    port = store.client.connection_pool.connection_kwargs["port"]
    proxy = CuttingProxy(port)
    try:
        proxied = redis_backend.replace(f":{port}/", f":{proxy.port}/")
        # Commits only every 10 updates (never by time: a slow machine must not shift them).
        cp = EnhancedCheckpoint(proxied, "s", log_every=0, save_every=10, save_interval=3600)
        cp.start(total_items=30)
        for i in range(10):
            cp.update(processed=1, successful=1, index=i)
        proxy.cut_after = b"EVALSHA"  # the next group's append loses its reply
        for i in range(10, 20):
            cp.update(processed=1, successful=1, index=i)
        assert proxy.cuts == 1
        for i in range(20, 30):  # the next append retries the buffered group first
            cp.update(processed=1, successful=1, index=i)
        cp.complete()
        cp.close()
    finally:
        proxy.close()
    reader = RedisStore(redis_backend)
    state = read_stage(reader, "s").state
    reader.close()
    store.close()
    assert state.progress.processed_items == 30  # not 40: the retried group counted once
    assert state.done_units == 30
    assert state.status is Status.COMPLETED


def test_an_unreachable_redis_at_start_is_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    with pytest.raises(CheckpointError, match=rf"Cannot reach Redis at {url}.*CHECKPOINT_BACKEND"):
        EnhancedCheckpoint(url, "s")


def test_large_blobs_are_compressed_and_read_back() -> None:
    small, large = b"x" * 100, os.urandom(64) * 4000
    assert compress(small) == small
    assert compress(large) != large
    assert decompress(compress(large)) == large


class PrivateRedis:
    """A redis-server of the test's own, on a free port, with an fsynced append-only file:
    it can be stopped and started again with its data."""

    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        directory.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = _free_port()
            self.cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--dir", str(directory), "--appendonly", "yes" if persistent else "no",
                        "--appendfsync", "always", "--save", ""]
            self.url = f"redis://127.0.0.1:{self.port}/0"
            try:
                self.start()
                return
            except AssertionError:
                if attempt == 2:
                    raise

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 600  # a guard: a busy machine may start it slowly
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                client.ping()
                client.close()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)  # polls the server until it answers
        client.close()
        raise AssertionError(f"redis-server did not start (exit status {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=600)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None and os.environ.get("CI") != "true",
    reason="redis-server is not installed (these tests start their own)")


@needs_redis_server
def test_a_stage_survives_a_redis_restart_mid_run(tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path / "redis")
    server = private
    url = private.url
    log = tmp_path / "work.log"
    job = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "tracker_job.py"), url, "stage3", "3000", str(log), "8", "5",
         "fsync"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
    try:
        assert job.stdout is not None
        for n, _ in enumerate(job.stdout):
            if n == 500:
                server.restart()  # Redis goes away mid-run and comes back with its data
                break
        _, err = job.communicate(timeout=1200)
        assert job.returncode == 0, err.decode()[-3000:]
    finally:
        server.stop()
    server.start()
    try:
        reader = RedisStore(url)
        state = read_stage(reader, "stage3").state
        reader.close()
    finally:
        server.stop()
    done = [int(x) for x in log.read_text().split()]
    assert sorted(set(done)) == list(range(3000))
    assert state.status is Status.COMPLETED
    assert state.progress.processed_items == 3000
    assert state.done_units == 3000


@needs_redis_server
def test_a_crawl_survives_a_redis_restart_mid_crawl(tmp_path: Path) -> None:
    """A real `scrapy crawl` with the Redis store; Redis is restarted under it. The crawl
    keeps going, buffers its journal while Redis is away, and ends with every item once."""
    from .crawl import Outputs, crawl
    from .site import Site

    n_pages = 300
    private = PrivateRedis(tmp_path / "redis")
    site = Site(n_pages, delay=0.005)
    outputs = Outputs(tmp_path / "out", private.url)
    outputs.directory.mkdir()
    try:
        restarted = threading.Event()

        def restart_midway() -> None:
            if site.wait_for_hits(100):
                private.stop()  # Redis goes away while the crawl goes on for 40 pages ...
                site.wait_for_hits(site.total_hits + 40)
                site.gate.clear()  # (held: the crawl cannot end before Redis is back)
                try:
                    private.start()  # ... and comes back with its data
                finally:
                    site.gate.set()
                restarted.set()

        threading.Thread(target=restart_midway, daemon=True).start()
        run = crawl(site, outputs)
        assert restarted.is_set()
        assert run.returncode == 0, run.log[-3000:]
        state = read_stage(RedisStore(private.url), "site").state
    finally:
        site.close()
        private.stop()
    assert "Redis unreachable" in run.log or "state not written" in run.log, "no outage seen"
    for name in ("items.jl", "own.jl"):
        assert sorted(outputs.jsonlines(name)) == list(range(n_pages)), name
    assert state.status is Status.COMPLETED
    assert state.done_units == n_pages


def test_state_writes_never_fail_while_groups_are_appended(redis_backend: str) -> None:
    """A stage committing without pause (a group per update) while its state is written
    over and over on another thread: every state write lands, none is refused."""
    cp = EnhancedCheckpoint(redis_backend, "busy", save_every=1)
    cp.start()
    store = cp.store
    stop = threading.Event()
    errors: list[BaseException] = []
    writes = 0

    def write_states() -> None:
        nonlocal writes
        while not stop.is_set():
            try:
                store.write_state("busy", cp.state.model_dump_json().encode())
            except BaseException as exc:  # the test reports any failure
                errors.append(exc)
                return
            writes += 1

    writer = threading.Thread(target=write_states)
    writer.start()
    try:
        for i in range(3000):
            cp.update(processed=1, successful=1, index=i)
    finally:
        stop.set()
        writer.join()
    cp.complete()
    cp.close()
    assert not errors, errors[0]
    assert writes > 0
    assert read_stage(RedisStore(redis_backend), "busy").state.progress.processed_items == 3000


def _dead_pid() -> int:
    proc = subprocess.Popen([PYTHON, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the kernel reuses it)


def test_a_stale_owner_record_never_lets_a_third_process_take_a_live_holders_stage(
    redis_backend: str,
) -> None:
    """A holder took the expired lock of a crashed owner but its owner record is the crashed
    one's (the record and the lock were two steps): a third process must read the holder
    from the lock, see it alive, and be refused, not take the stage over."""
    store = RedisStore(redis_backend)
    try:
        host = socket.gethostname()
        crashed = Owner(pid=_dead_pid(), host=host, started_at=utcnow())
        store.client.set(store.key("s", "owner"), crashed.model_dump_json())
        live = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(600)"])
        try:
            store.client.set(store.key("s", "lock"), f"{host}:{live.pid}:held", px=60_000)
            with pytest.raises(CheckpointLockedError) as err:
                store.lock("s", Owner.current())
            assert err.value.pid == live.pid
            assert store.client.get(store.key("s", "lock")) == f"{host}:{live.pid}:held".encode()
            assert store.live_owner("s") is not None
            assert store.live_owner("s").pid == live.pid  # type: ignore[union-attr]
        finally:
            live.kill()
            live.wait()
        # The holder is gone now: its lease is taken over at once, with this owner's record.
        lock = store.lock("s", Owner.current())
        try:
            recorded = store.live_owner("s")
            assert recorded is not None
            assert recorded.pid == os.getpid()
        finally:
            lock.release()
    finally:
        store.close()


@needs_redis_server
def test_a_redis_restarted_empty_stops_the_job_and_the_next_run_does_not_start_from_zero(
    tmp_path: Path,
) -> None:
    """Redis without persistence restarted under a running tracker: the job stops with one
    paragraph saying Redis lost the stage; the next run refuses to start it from zero
    silently (nothing redone), and starts over only when told to."""
    private = PrivateRedis(tmp_path / "redis", persistent=False)
    url = private.url
    log = tmp_path / "work.log"
    args = [PYTHON, str(SCRIPTS / "tracker_job.py"), url, "stage3", "3000", str(log), "8", "5",
            "fsync"]
    try:
        job = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=python_env())
        assert job.stdout is not None
        for n, _ in enumerate(job.stdout):
            if n == 500:
                # The job is stopped meanwhile: it cannot run to its end before Redis is
                # back, however long the restart takes on a busy machine.
                job.send_signal(signal.SIGSTOP)
                try:
                    private.restart()  # comes back empty
                finally:
                    job.send_signal(signal.SIGCONT)
                break
        _, err = job.communicate(timeout=1200)
        assert job.returncode != 0, "the job went on with its checkpoint gone"
        text = err.decode()
        assert "Traceback" not in text, text
        assert "no longer holds stage 'stage3': its keys are gone" in text
        done_first = len(log.read_text().split())
        assert done_first < 3000

        again = subprocess.run(args, capture_output=True, env=python_env(), timeout=1200,
                               check=False)
        assert again.returncode != 0
        assert "lost the checkpoint of stage 'stage3'" in again.stderr.decode()
        assert "not started from zero silently" in again.stderr.decode()
        assert len(log.read_text().split()) == done_first, "the next run started from zero"
        reader = RedisStore(url)
        try:
            assert "stage3" in reader.stages()  # list and show see it, and can reset it
            view = read_stage(reader, "stage3")
            assert any("lost the checkpoint" in p for p in view.problems)
            reader.remove("stage3")  # what `scrapy-checkpoint reset stage3` does
        finally:
            reader.close()
        over = subprocess.run(args, capture_output=True, env=python_env(), timeout=1200,
                              check=False)
        assert over.returncode == 0, over.stderr.decode()[-3000:]
    finally:
        private.stop()


@needs_redis_server
def test_a_crawl_whose_redis_restarts_empty_stops_and_is_not_redone_silently(
    tmp_path: Path,
) -> None:
    """A real `scrapy crawl` on a Redis without persistence, restarted empty mid-crawl: the
    crawl stops with close reason checkpoint_error; the same command run again refuses to
    crawl the stage from zero (no feed line written twice) until it is reset."""
    from .crawl import Outputs, crawl
    from .site import Site

    private = PrivateRedis(tmp_path / "redis", persistent=False)
    site = Site(300, delay=0.005)
    outputs = Outputs(tmp_path / "out", private.url)
    outputs.directory.mkdir()
    try:
        def restart_midway() -> None:
            if site.wait_for_hits(100):
                private.restart()

        threading.Thread(target=restart_midway, daemon=True).start()
        first = crawl(site, outputs)
        assert "'finish_reason': 'checkpoint_error'" in first.log, first.log[-3000:]
        assert "no longer holds stage 'site': its keys are gone" in first.log
        written = outputs.jsonlines("items.jl")
        assert len(written) == len(set(written)) < 300
        again = crawl(site, outputs)
        assert again.returncode == 1, again.log[-3000:]
        assert "The crawl cannot start. Redis at" in again.log
        assert "lost the checkpoint of stage 'site'" in again.log
        assert again.hits == {}
        assert outputs.jsonlines("items.jl") == written
    finally:
        site.close()
        private.stop()


def test_the_requeue_advised_at_completion_reaches_the_stage_in_its_prefix(
    redis_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hint of a stage completed with failed units, run as printed: the Redis URL the
    store shows leaves out the key prefix, so the command looked in the default prefix and
    said 'No checkpoint for stage'."""
    caplog.set_level("INFO", logger="scrapy_checkpoint")
    cp = EnhancedCheckpoint(redis_backend, "s", log_every=0)
    cp.start(total_items=2)
    cp.update(processed=1, successful=1, index=0)
    cp.update(processed=1, failed=1, index=1)
    cp.complete()
    cp.close()
    command = next(part for part in caplog.text.split("`") if " requeue s --failed" in part)
    assert "prefix=" in command
    env = {k: v for k, v in python_env().items() if k not in ("CHECKPOINT_DIR", "CHECKPOINT_BACKEND")}
    argv = shlex.split(command)
    cli = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", *argv[1:]], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert cli.returncode == 0, cli.stderr
    assert "Requeued 1 failed unit(s) of s" in cli.stdout
