"""A real PostgreSQL server restarted, or down for a while, under a running ``scrapy crawl``.

Each test starts a PostgreSQL cluster of its own (``initdb`` into a new directory, a free
port of 127.0.0.1, trust authentication), points the crawl's ``CHECKPOINT_BACKEND`` at it
and, once the stage in that server records units done (read from its journal, polled),
stops or restarts the server with ``pg_ctl`` (``-m fast``: the sessions are told to end;
``-m immediate``: the server dies without a clean shutdown and recovers from its WAL).

The crawl goes on and finishes on its own: its groups wait in the process while the
server is away, and the next group after it is back takes the lock again. Its feed is
then compared item by item with the feed of the same crawl run by plain Scrapy. A crawl
that reaches its end while the server is down waits for it and sends its last groups; a
crawl killed with SIGKILL while the server is down resumes, once the server is back, to
the same feed.

Without the server binaries (``initdb``, ``pg_ctl``) the tests skip, saying so; under
CI=true they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from scrapy_checkpoint import Status, read_stage
from scrapy_checkpoint.stores import open_store

from .conftest import unavailable
from .crawl import Outputs, by_page, crawl, jsonlines_items, once_per_page
from .site import Site

N_PAGES = 300
#: Units the crawl has recorded done (committed groups) before the server goes away.
DONE_BEFORE = 20
#: Pages the crawl fetches while the server is down.
PAGES_WHILE_DOWN = 20
#: Where the server's binaries are looked for when ``pg_config`` names none.
FALLBACK_BINDIR = Path("/usr/lib/postgresql/15/bin")
#: How long ``pg_ctl -w`` may wait for the server to start or stop (its default, 60 s, is
#: short for a busy machine): a guard against a hang, not a speed the test needs.
PG_CTL_WAIT = "600"


def _bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: ``pg_config --bindir``, else
    :data:`FALLBACK_BINDIR`; None when neither has them."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))
    candidates.append(FALLBACK_BINDIR)
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A throwaway PostgreSQL cluster in ``base`` (data in ``base/data``, its socket and
    log in ``base``), its server commands run through ``prefix`` (``runuser -u postgres
    --`` when the tests run as root: initdb refuses root)."""

    def __init__(self, bindir: Path, base: Path, prefix: list[str]) -> None:
        self.bindir, self.base, self.prefix = bindir, base, prefix
        self.data, self.log = base / "data", base / "server.log"
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.prefix, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, cwd=self.base, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}"
                                 f"{done.stderr}\nserver log:\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def _options(self) -> str:
        return f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"

    def start(self) -> None:
        """Start the server (the first time on a free port) and wait until it answers."""
        if self.port:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
                      "start", "-w", "-t", PG_CTL_WAIT)
            return
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o",
                          self._options(), "start", "-w", "-t", PG_CTL_WAIT)
                return
            except AssertionError:
                if attempt == 2:
                    raise

    @property
    def running(self) -> bool:
        """The server's pid file is there (started, not stopped)."""
        return (self.data / "postmaster.pid").exists()

    def stop(self, mode: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "stop", "-m", mode, "-w", "-t", PG_CTL_WAIT)

    def restart(self, mode: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
                  "restart", "-m", mode, "-w", "-t", PG_CTL_WAIT)

    def wait_for_done(self, units: int, proc: subprocess.Popen[bytes]) -> int:
        """Poll the stage ``site`` in the server (its journal, read as ``scrapy-checkpoint
        show`` reads it) until it records ``units`` units done; return how many it does.
        Fails if the crawl ends first or after 600 s (a guard against a hang)."""
        store = open_store(self.url)
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    done = read_stage(store, "site").state.done_units
                except FileNotFoundError:  # no group committed yet
                    done = 0
                if done >= units:
                    return done
                time.sleep(0.01)  # polls the database for the condition
        finally:
            store.close()
        raise AssertionError(f"the crawl recorded fewer than {units} units done "
                             f"(crawl exit code {proc.poll()})")


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A private PostgreSQL server, started for the test, stopped (``-m immediate``) and
    its directory removed after it."""
    bindir = _bindir()
    if bindir is None:
        unavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) in `pg_config --bindir` or "
                    f"{FALLBACK_BINDIR}; install postgresql-15 to run the server restart tests")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres OS user
        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if runuser is None or owner is None:
            unavailable("running as root, and no `postgres` OS user or no runuser to start a "
                        "PostgreSQL server as (initdb refuses root)")
        prefix = [runuser, "-u", "postgres", "--"]
    # Not pytest's tmp_path: the postgres OS user must reach the directory.
    base = Path(tempfile.mkdtemp(prefix="sctest-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    cluster = Cluster(bindir, base, prefix)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running:
            cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.004)
    yield s
    s.close()


@pytest.fixture(scope="module")
def plain_items(site: Site, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """The items of the same crawl run once by plain Scrapy, each page once."""
    outputs = Outputs(tmp_path_factory.mktemp("plain"))
    run = crawl(site, outputs, "-s", "CHECKPOINT_ENABLED=False")
    assert run.returncode == 0, run.log[-3000:]
    items = once_per_page(jsonlines_items(outputs.directory / "items.jl"))
    assert [int(item["page"]) for item in items] == list(range(N_PAGES))
    return items


def _assert_same_items(outputs: Outputs, plain_items: list[dict[str, str]]) -> None:
    """Every feed of the crawl holds the plain run's items, each once."""
    items = jsonlines_items(outputs.directory / "items.jl")
    assert by_page(items) == plain_items, "items.jl differs from the plain run's items"
    assert sorted(outputs.jsonlines("own.jl")) == list(range(N_PAGES)), "own.jl: lost or twice"
    assert sorted(outputs.csv_pages()) == list(range(N_PAGES)), "items.csv: lost or twice"
    store = open_store(outputs.location)
    state = read_stage(store, "site").state
    assert (state.status, state.done_units, state.pending_units) == (
        Status.COMPLETED, N_PAGES, 0)
    row, _ = store.read_state("site")  # the stages row itself (what SQL users read)
    assert row is not None
    assert (row.status, row.done_units) == (Status.COMPLETED, N_PAGES), "a stale stages row"
    store.close()


def _done_pages(cluster: Cluster, site: Site) -> set[int]:
    """Pages the stage in the server records as done."""
    store = open_store(cluster.url)
    try:
        view = read_stage(store, "site")
    finally:
        store.close()
    fingerprint = RequestFingerprinter().fingerprint
    return {p for p in range(N_PAGES) if view.is_done(fingerprint(Request(f"{site.url}/p/{p}")))}


def _outage(site: Site, cluster: Cluster, proc: subprocess.Popen[bytes], mode: str) -> None:
    """Once the crawl has recorded :data:`DONE_BEFORE` units done, hold its pages, stop the
    server (``mode``), let the crawl fetch :data:`PAGES_WHILE_DOWN` pages with the server
    down, and hold its pages again (the server is left down, the gate closed)."""
    cluster.wait_for_done(DONE_BEFORE, proc)
    site.gate.clear()  # the crawl cannot finish while the server is away
    cluster.stop(mode)
    fetched = site.total_hits
    site.gate.set()
    reached = site.wait_for_hits(fetched + PAGES_WHILE_DOWN, proc=proc)
    site.gate.clear()
    assert reached, f"the crawl stalled while the server was down (exit code {proc.poll()})"


def _outage_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "buffered until it is back" in line]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_server_restart_mid_crawl_is_reconnected_and_loses_nothing(
    tmp_path: Path, site: Site, plain_items: list[dict[str, str]], pg_cluster: Cluster, mode: str
) -> None:
    outputs = Outputs(tmp_path, pg_cluster.url)
    done: list[set[int]] = []

    def restart(proc: subprocess.Popen[bytes]) -> None:
        pg_cluster.wait_for_done(DONE_BEFORE, proc)
        site.gate.clear()  # the crawl cannot finish while the server restarts
        try:
            done.append(_done_pages(pg_cluster, site))
            pg_cluster.restart(mode)
            done.append(_done_pages(pg_cluster, site))
        finally:
            site.gate.set()

    run = crawl(site, outputs, interrupt=restart, interrupt_after_hits=1)
    assert run.returncode == 0, run.log[-3000:]
    before, after = done
    assert len(before) >= DONE_BEFORE
    assert before <= after, "units committed before the restart are gone after it"
    assert "reconnected to PostgreSQL at" in run.log, run.log[-3000:]
    assert "Traceback" not in run.log, run.log[-5000:]
    _assert_same_items(outputs, plain_items)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_crawl_goes_on_while_the_server_is_down_and_sends_its_groups_when_it_is_back(
    tmp_path: Path, site: Site, plain_items: list[dict[str, str]], pg_cluster: Cluster, mode: str
) -> None:
    outputs = Outputs(tmp_path, pg_cluster.url)

    def outage(proc: subprocess.Popen[bytes]) -> None:
        try:
            _outage(site, pg_cluster, proc, mode)
            pg_cluster.start()
        finally:
            site.gate.set()

    run = crawl(site, outputs, interrupt=outage, interrupt_after_hits=1)
    assert run.returncode == 0, run.log[-3000:]
    assert _outage_lines(run.log), run.log[-3000:]
    assert "reconnected to PostgreSQL at" in run.log, run.log[-3000:]
    assert "Traceback" not in run.log, run.log[-5000:]
    _assert_same_items(outputs, plain_items)


def test_a_crawl_that_ends_while_the_server_is_down_waits_for_it_to_send_its_last_groups(
    tmp_path: Path, site: Site, plain_items: list[dict[str, str]], pg_cluster: Cluster
) -> None:
    """The crawl runs to its end with the server down: no later group will carry the
    waiting ones, so the end of the job waits for the server (and sends them) rather than
    give up at once."""
    outputs = Outputs(tmp_path, pg_cluster.url)
    log = outputs.directory / "crawl.log"

    def down_at_the_end(proc: subprocess.Popen[bytes]) -> None:
        try:
            pg_cluster.wait_for_done(DONE_BEFORE, proc)
            site.gate.clear()
            pg_cluster.stop("immediate")
            site.gate.set()  # the rest of the crawl runs with the server down
            deadline = time.monotonic() + 600
            while (b"journal group(s)." not in log.read_bytes() and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.01)  # polls the crawl's own log for the condition
            assert b"waiting up to" in log.read_bytes(), "the end of the crawl did not wait"
        finally:
            site.gate.set()
            if not pg_cluster.running:
                pg_cluster.start()

    run = crawl(site, outputs, interrupt=down_at_the_end, interrupt_after_hits=1)
    assert run.returncode == 0, run.log[-3000:]
    assert "reconnected to PostgreSQL at" in run.log, run.log[-3000:]
    assert "could not reach PostgreSQL" not in run.log, run.log[-3000:]
    assert "Traceback" not in run.log, run.log[-5000:]
    _assert_same_items(outputs, plain_items)


def test_a_crawl_killed_while_the_server_is_down_resumes_once_it_is_back(
    tmp_path: Path, site: Site, plain_items: list[dict[str, str]], pg_cluster: Cluster
) -> None:
    outputs = Outputs(tmp_path, pg_cluster.url)
    done: list[set[int]] = []

    def kill_while_down(proc: subprocess.Popen[bytes]) -> None:
        try:
            _outage(site, pg_cluster, proc, "immediate")
            proc.kill()  # its buffered groups die with it: their units are redone
            proc.wait(timeout=600)
            pg_cluster.start()
            done.append(_done_pages(pg_cluster, site))
        finally:
            site.gate.set()

    first = crawl(site, outputs, interrupt=kill_while_down, interrupt_after_hits=1)
    assert first.returncode == -9, first.log[-3000:]
    assert _outage_lines(first.log), first.log[-3000:]
    (recorded,) = done
    assert len(recorded) >= DONE_BEFORE
    second = crawl(site, outputs)
    assert second.returncode == 0, second.log[-3000:]
    assert not set(second.hits) & recorded, "a page recorded done was fetched again"
    assert "Traceback" not in second.log, second.log[-5000:]
    _assert_same_items(outputs, plain_items)
    assert read_stage(open_store(outputs.location), "site").state.recoveries == 1
