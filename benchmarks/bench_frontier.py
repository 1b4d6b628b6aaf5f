"""Benchmark: what a crawl frontier of F pending requests costs, and how a stopped crawl resumes.

What is measured
    A crawl of a local wide fan-out site is stopped once its frontier holds F pending requests
    (``--pending``, default 50,000, 200,000 and 1,000,000), in these configurations (the
    generated project and its settings are bench_crawl.py's, printed at the start):

        plain Scrapy             no persistence; stopped with kill -9
        JOBDIR, SIGINT           -s JOBDIR=RUN/jobdir (pickle disk queues, requests.seen);
                                 stopped with one SIGINT and waited for: JOBDIR saves its queue
                                 state only when the crawl closes cleanly
        JOBDIR, kill -9          the same crawl, stopped with kill -9 (what a crash leaves)
        JOBDIR + SQLite, SIGINT  ... and -s SCHEDULER_DISK_QUEUE=scrapy.squeues.PickleLifoSQLiteQueue
        JOBDIR + SQLite, kill -9
        checkpoint, kill -9      ADDONS = {"scrapy_checkpoint.Addon": 100},
                                 -s CHECKPOINT_DIR=RUN/checkpoints; stopped with kill -9 (it is
                                 meant to be crash-safe)

    Figures per crawl:
      peak RSS        ru_maxrss of the scrapy process (os.wait4 on it, after the stop: the clean
                      close of the SIGINT cases is included)
      RSS B/pending   (peak RSS - peak RSS of a tiny crawl of the same configuration, stopped at
                      100 pending) / pending requests at the stop
      disk            bytes of the files under RUN/jobdir or RUN/checkpoints once the process
                      has exited, and per pending request
      CPU us/request  user + system CPU of the process (wait4) / requests scheduled (interpreter
                      start and imports included; the growth fit below gives the marginal cost)
      resume          the same command run again in the same RUN directory: seconds from its
                      Popen to the first request the web server receives (the server stamps
                      every request's arrival with its Unix time), the pending requests the run
                      says it resumed (Scrapy's "Resuming crawl (N requests scheduled)", the
                      add-on's "N request(s) scheduled again"), and whether it fetches any page
                      that was pending at the stop: "resumes nothing" when none of its first
                      ``--resume-requests`` requests (default 20, or all it makes before it
                      exits) is one. The resumed run is then killed.

    The table shows medians of ``--rounds`` rounds (cases in a rotated order per round) with
    ratios to "JOBDIR, SIGINT". Growth fit: for each case, the least-squares line through the
    (pending at the stop, median peak RSS) points of the F values, and the same for CPU
    seconds: its slope is the marginal cost of one more pending request (needs two F values).

How the crawl is stopped at F pending
    The site (served by this script in its own process, twisted.web) answers /p/N with a small
    page (about 3 KB) linking to 100 pages never linked before: the server hands out page
    numbers from a counter, so every link is a new URL and nothing is filtered as a duplicate.
    The spider follows every link. With Scrapy's default LIFO queues each fetched page adds 100
    requests and takes one, so the frontier grows by about 99 per page.

    An extension of the generated project (benchproject.watch.Watch) counts the frontier from
    Scrapy's signals and the scheduler: request_scheduled - request_dropped - requests taken
    by the engine (it wraps the scheduler's next_request). The pages already taken will still
    add their links: a response can wait in the scraper's queue (up to
    SCRAPER_SLOT_MAX_ACTIVE_SIZE, 5 MB) while parsing lags behind downloading, so a stop on
    the count alone overshot F by up to 3,000 at F = 5,000. The watch therefore foresees the
    frontier: the count plus 100 links for every page taken and not yet parsed (the spider
    counts the responses whose links it has all yielded). When that reaches F it pauses the
    engine (engine.pause(); the wrapped next_request gives out nothing more, since the engine
    takes up to CONCURRENT_REQUESTS requests in one loop); the pages in flight finish and
    add their links, and once the downloader and
    the scraper are idle the watch writes "quiet" with the scheduler's own length
    (len(engine.scheduler): the pending figure reported, F to within about 100) to a status
    file. The parent waits for that, then ``--settle`` seconds (default 2: the add-on commits
    its journal at most CHECKPOINT_SAVE_INTERVAL = 1 s after a change, so a kill -9 right at
    "quiet" could lose up to a second of scheduled requests; the settle applies to every
    kill -9 case with persistence), then stops the process as its case says. This is the same
    whatever the queue class, costs a few counter updates per request, and does not depend on
    the crawl's speed. A CLOSESPIDER_PAGECOUNT of F / 99 would also close the spider (nothing
    left to kill) and overshoot by the pages in flight. The resumed run is the same command
    with the watch's stop disabled (-s BENCH_STOP_PENDING=0): an instrument of the benchmark,
    not a setting of the crawl.

Memory guard and timeout
    The parent reads the crawler's VmRSS from /proc every 0.1 s; above ``--max-rss-mib``
    (default 4096) it kills the process group and reports "killed above N MiB at k pending"
    (k from the status file the watch rewrites every 0.2 s). A crawl that has not reached its
    frontier within ``--timeout`` seconds (default 3600) is killed the same way and reported
    "timed out (N s) at k pending". Either way the case is not run again at that F or at
    larger ones. (JOBDIR + SQLite queues commit every push: about 2 ms per request on this
    VM, 100 s for 50,000 and so over half an hour for 1,000,000.)

Robustness
    Every child runs in its own process group and session, with the ``--timeout`` on each
    crawl, stop and resume; every group still alive is killed when the script
    exits (normally, by an exception, SIGINT or SIGTERM), and the temporary directory (site
    log, project, runs) is removed.

    python benchmarks/bench_frontier.py [--pending 50000,200000,1000000] [--rounds 3] [--quick]
                                        [--max-rss-mib 4096] [--json FILE] [--dir DIR]
                                        [--timeout 3600] [--settle 2] [--resume-requests 20]
                                        [--keep-stopped DIR]
    python benchmarks/bench_frontier.py --resume-kept DIR/checkpoint-default-1000000 [--rounds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    CHECKPOINT,
    JOBDIR,
    JOBDIR_SQLITE,
    PLAIN,
    PYTHON,
    SETTINGS,
    Config,
    Server,
    child_env,
    code_version,
    command_line,
    least_squares,
    markdown_table,
    median,
    print_header,
    slug,
    write_project,
)

SPIDER = "frontier"
FANOUT = 100  # links per page, all new
BASELINE_PENDING = 100  # the tiny crawl: stopped at its first page's links
QUICK_PENDING = 5000
MIB = 2**20


@dataclass(frozen=True)
class Case:
    name: str
    config: Config
    stop: str  # "SIGINT" (one, then wait for the clean close) or "SIGKILL"

    @property
    def persistent(self) -> bool:
        return self.config is not PLAIN


CASES = (
    Case("plain Scrapy", PLAIN, "SIGKILL"),
    Case("JOBDIR, SIGINT", JOBDIR, "SIGINT"),
    Case("JOBDIR, kill -9", JOBDIR, "SIGKILL"),
    Case("JOBDIR + SQLite, SIGINT", JOBDIR_SQLITE, "SIGINT"),
    Case("JOBDIR + SQLite, kill -9", JOBDIR_SQLITE, "SIGKILL"),
    Case("checkpoint, kill -9", CHECKPOINT, "SIGKILL"),
)
REFERENCE = "JOBDIR, SIGINT"
CONFIGS = (PLAIN, JOBDIR, JOBDIR_SQLITE, CHECKPOINT)

# -- the generated project ---------------------------------------------------------------

SPIDER_CODE = '''\
import scrapy


class FrontierSpider(scrapy.Spider):
    """Follows every link of the fan-out site from /p/0."""

    name = "frontier"

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.base = base

    async def start(self):
        yield scrapy.Request(f"{self.base}/p/0", callback=self.parse)

    parsed = 0  # responses whose links have all been handed to the scheduler

    def parse(self, response):
        yield from response.follow_all(css="a", callback=self.parse)
        self.parsed += 1
'''

WATCH_CODE = '''\
import json
import os
import resource
import time

from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet.task import LoopingCall


class Watch:
    """Counts the frontier (scheduled - dropped - taken from the scheduler) and foresees it
    (plus BENCH_FANOUT links for every page taken and not yet parsed); once the foreseen
    frontier reaches BENCH_STOP_PENDING (0: never) pauses the engine, and the scheduler gives
    out nothing more. Rewrites BENCH_STATUS_FILE every 0.2 s, with "quiet" and the
    scheduler's length once paused and idle."""

    def __init__(self, crawler):
        self.crawler = crawler
        self.stop_at = crawler.settings.getint("BENCH_STOP_PENDING")
        self.fanout = crawler.settings.getint("BENCH_FANOUT")
        self.path = crawler.settings.get("BENCH_STATUS_FILE")
        self.scheduled = self.dropped = self.taken = 0
        self.paused_at = None
        self.quiet = None
        self.loop = LoopingCall(self.write)
        crawler.signals.connect(self.on_scheduled, signal=signals.request_scheduled)
        crawler.signals.connect(self.on_dropped, signal=signals.request_dropped)
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        if not crawler.settings.get("BENCH_STATUS_FILE"):
            raise NotConfigured
        return cls(crawler)

    def foreseen(self):
        parsed = getattr(self.crawler.spider, "parsed", 0)
        return self.scheduled - self.dropped - self.taken + self.fanout * (self.taken - parsed)

    def check(self):
        if self.stop_at and self.paused_at is None and self.foreseen() >= self.stop_at:
            self.crawler.engine.pause()
            self.paused_at = time.time()

    def on_scheduled(self, **kwargs):
        self.scheduled += 1
        self.check()

    def on_dropped(self, **kwargs):
        self.dropped += 1

    def opened(self, **kwargs):
        engine = self.crawler.engine
        scheduler = engine.scheduler
        next_request = scheduler.next_request

        def counted():
            if engine.paused:  # the engine takes up to CONCURRENT_REQUESTS in one loop
                return None
            request = next_request()
            if request is not None:
                self.taken += 1
                self.check()
            return request

        scheduler.next_request = counted
        self.loop.start(0.2, now=True)

    def closed(self, **kwargs):
        if self.loop.running:
            self.loop.stop()
        self.write()

    def write(self):
        engine = self.crawler.engine
        if self.paused_at is not None and self.quiet is None:
            slot = engine.scraper.slot
            if not engine.downloader.active and (slot is None or slot.is_idle()):
                self.quiet = {"t": time.time(), "queue": len(engine.scheduler),
                              "scheduled": self.scheduled, "dropped": self.dropped,
                              "taken": self.taken}
        status = {"t": time.time(), "scheduled": self.scheduled, "dropped": self.dropped,
                  "taken": self.taken, "pending": self.scheduled - self.dropped - self.taken,
                  "foreseen": self.foreseen(),
                  "paused_at": self.paused_at, "quiet": self.quiet,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        with open(self.path + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(self.path + ".tmp", self.path)
'''

PROJECT_SETTINGS = {**SETTINGS, "EXTENSIONS": {"benchproject.watch.Watch": 0},
                    "BENCH_FANOUT": FANOUT}


def crawl_command(config: Config, base: str, run_dir: Path, stop_at: int) -> list[str]:
    extra = [a.replace("{run}", str(run_dir)) for a in config.args]
    return [PYTHON, "-m", "scrapy", "crawl", SPIDER, "-a", f"base={base}",
            "-s", f"LOG_FILE={run_dir / 'crawl.log'}",
            "-s", f"BENCH_STATUS_FILE={run_dir / 'status.json'}",
            "-s", f"BENCH_STOP_PENDING={stop_at}", *extra]


def persisted_dir(config: Config, run_dir: Path) -> Path | None:
    if config is JOBDIR or config is JOBDIR_SQLITE:
        return run_dir / "jobdir"
    if config is CHECKPOINT:
        return run_dir / "checkpoints"
    return None


def tree_bytes(path: Path | None) -> int:
    """Bytes of the files under ``path`` (apparent sizes)."""
    if path is None or not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the web server (its own process) ------------------------------------------------------


def serve_worker(log_path: str, port_wanted: int = 0) -> None:
    """Serve the fan-out site on ``port_wanted`` or a free port (print it): /p/N links to
    FANOUT new pages; every request's arrival time and path is appended to ``log_path``;
    /_next answers the next page number to be handed out (not logged)."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open while the server runs)

    class Pages(Resource):
        isLeaf = True
        next_page = 1

        def render_GET(self, request: Any) -> bytes:
            arrived = time.time()
            path = request.path.decode()
            if path == "/_next":
                return str(self.next_page).encode()
            log.write(f"{arrived:.6f} {path}\n")
            first = self.next_page
            self.next_page += FANOUT
            links = "".join(f'<li><a href="/p/{k}">Page {k}</a></li>\n'
                            for k in range(first, first + FANOUT))
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return (f"<!DOCTYPE html>\n<html><head><title>{path}</title></head><body>\n"
                    f"<h1>{path}</h1>\n<ul>\n{links}</ul></body></html>\n").encode()

    class QuietSite(Site):
        def log(self, request: Any) -> None:  # no access log
            pass

    port = reactor.listenTCP(port_wanted, QuietSite(Pages()), interface="127.0.0.1",
                             backlog=256)
    print(port.getHost().port, flush=True)
    reactor.run()


class FanoutServer(Server):
    def __init__(self, log_path: Path, port: int = 0) -> None:
        log_path.touch()
        self.log_path = log_path
        super().__init__([PYTHON, __file__, "--worker", "serve", str(log_path), str(port)])

    def next_page(self) -> int:
        with urllib.request.urlopen(f"{self.url}/_next", timeout=30) as answer:
            return int(answer.read())

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def requests_since(self, offset: int) -> list[tuple[float, int]]:
        """(arrival time, page number) of the requests logged after ``offset`` (whole lines)."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        lines = data[:data.rfind(b"\n") + 1].decode().splitlines()
        out = []
        for line in lines:
            t, path = line.split(" ", 1)
            if path.startswith("/p/") and path[3:].isdigit():
                out.append((float(t), int(path[3:])))
        return out


# -- child processes ----------------------------------------------------------------------

#: Every child still running, killed (its whole process group) when the script exits.
LIVE: dict[int, subprocess.Popen[bytes]] = {}


class Child:
    """A scrapy process in its own session, reaped with os.wait4 for its rusage."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        LIVE[self.proc.pid] = self.proc
        self.status: int | None = None
        self.usage: resource.struct_rusage | None = None

    def poll(self) -> bool:
        """True once the process has exited (and been reaped)."""
        if self.status is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.reaped(status, usage)
        return self.status is not None

    def reaped(self, status: int, usage: resource.struct_rusage) -> None:
        self.status, self.usage = status, usage
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        LIVE.pop(self.proc.pid, None)
        kill_group(self.proc.pid)  # anything it left behind

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the exit; False if it is still running."""
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def kill(self) -> None:
        """SIGKILL the process group and reap the process."""
        if self.status is None:
            kill_group(self.proc.pid)
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.reaped(status, usage)

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    @property
    def maxrss_mib(self) -> float:
        assert self.usage is not None
        return self.usage.ru_maxrss / 1024

    @property
    def cpu_s(self) -> float:
        assert self.usage is not None
        return self.usage.ru_utime + self.usage.ru_stime

    @property
    def exit(self) -> str:
        code = self.proc.returncode
        return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_all() -> None:
    for pid, proc in list(LIVE.items()):
        kill_group(pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        LIVE.pop(pid, None)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run_dir / "status.json").read_text()))
    except (OSError, ValueError):
        return None


class Guarded(Exception):
    """The memory guard or the timeout killed the crawl."""

    def __init__(self, message: str, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


# -- one crawl to F pending, its stop and its resume ----------------------------------------


@dataclass
class Run:
    case: str
    target: int
    pending: int = 0  # the scheduler's length at "quiet"
    scheduled: int = 0
    to_quiet_s: float = 0.0  # Popen to "quiet"
    stop_s: float = 0.0  # the signal to the process's exit
    exit: str = ""
    peak_rss_mib: float = 0.0
    cpu_s: float = 0.0
    disk_bytes: int = 0
    resume_first_s: float | None = None  # None: no request at all
    resume_said: int | None = None  # pending requests the resumed run says it resumed
    resume_seen: int = 0  # requests of the resumed run looked at
    resume_previous: int = 0  # ... of which were pending at the stop
    resume_peak_rss_mib: float = 0.0
    resume_exit: str = ""
    killed: str | None = None  # the memory guard's message
    extra: dict[str, Any] = field(default_factory=dict)


RESUMED_RE = (re.compile(r"Resuming crawl \((\d+) requests scheduled\)"),
              re.compile(r"(\d+) request\(s\) scheduled again"))


class Bench:
    def __init__(self, args: argparse.Namespace, server: FanoutServer, project: Path,
                 work: Path) -> None:
        self.args, self.server, self.project, self.work = args, server, project, work

    def watch(self, child: Child, run_dir: Path, what: str) -> dict[str, Any]:
        """Wait for "quiet" in the status file (the guard and the timeout watching)."""
        deadline = time.monotonic() + self.args.timeout
        while True:
            status = read_status(run_dir)
            if status and status.get("quiet"):
                return status
            rss = child.rss_mib()
            pending = (status or {}).get("pending", 0)
            if rss > self.args.max_rss_mib:
                child.kill()
                raise Guarded(f"killed above {self.args.max_rss_mib:,} MiB at {pending:,} "
                              "pending", pending)
            if child.poll():
                raise RuntimeError(f"{what}: the crawl ended ({child.exit}) before its frontier "
                                   f"was reached; see {run_dir / 'crawl.log'}")
            if time.monotonic() > deadline:
                child.kill()
                raise Guarded(f"timed out ({self.args.timeout:,.0f} s) at {pending:,} pending",
                              pending)
            time.sleep(0.1)

    def stop(self, child: Child, case: Case, run: Run, what: str) -> None:
        if case.stop == "SIGINT":
            t0 = time.monotonic()
            os.kill(child.proc.pid, signal.SIGINT)
            if not child.wait(self.args.timeout):
                child.kill()
                raise RuntimeError(f"{what}: no clean close within {self.args.timeout} s of "
                                   "SIGINT")
            run.stop_s = time.monotonic() - t0
            if child.proc.returncode != 0:
                raise RuntimeError(f"{what}: {child.exit} after SIGINT")
        else:
            if case.persistent:
                time.sleep(self.args.settle)  # see the docstring: the add-on's last commit
            t0 = time.monotonic()
            child.kill()
            run.stop_s = time.monotonic() - t0
        run.exit = child.exit

    def crawl(self, case: Case, target: int, run_dir: Path) -> Run:
        """Crawl to ``target`` pending, stop, measure, resume."""
        what = f"{case.name} at {target:,}"
        run = Run(case.name, target)
        run_dir.mkdir(parents=True)
        first_page = self.server.next_page()
        offset = self.server.log_offset()
        cmd = crawl_command(case.config, self.server.url, run_dir, target)
        child = Child(cmd, self.project)
        try:
            status = self.watch(child, run_dir, what)
        except Guarded as exc:
            run.killed = str(exc)
            run.peak_rss_mib, run.cpu_s = child.maxrss_mib, child.cpu_s
            run.pending, run.exit = exc.pending, child.exit
            shutil.rmtree(run_dir)
            return run
        quiet = status["quiet"]
        run.to_quiet_s = quiet["t"] - child.started
        run.pending, run.scheduled = quiet["queue"], quiet["scheduled"]
        self.stop(child, case, run, what)
        run.peak_rss_mib, run.cpu_s = child.maxrss_mib, child.cpu_s
        run.disk_bytes = tree_bytes(persisted_dir(case.config, run_dir))
        fetched = {page for _, page in self.server.requests_since(offset)}
        last_page = self.server.next_page()  # pages first..last-1 were linked by this crawl

        def was_pending(page: int) -> bool:
            return first_page <= page < last_page and page not in fetched

        run.extra = {"fetched_pages": len(fetched), "linked_pages": last_page - first_page}
        kept = persisted_dir(case.config, run_dir)
        if self.args.keep_stopped and kept is not None and target > BASELINE_PENDING:
            slug = re.sub(r"[^a-z0-9]+", "-", case.config.name.lower()).strip("-")
            into = Path(self.args.keep_stopped) / f"{slug}-{target}"
            shutil.rmtree(into, ignore_errors=True)
            shutil.copytree(kept, into / kept.name, symlinks=True)
            (into / "site.json").write_text(json.dumps({
                "config": case.config.name, "pending": run.pending, "dir": kept.name,
                "port": int(self.server.url.rsplit(":", 1)[1])}))
            print(f"  kept the stopped {what} in {into}", flush=True)
        if target > BASELINE_PENDING:
            self.resume(case, run, run_dir, was_pending)
        shutil.rmtree(run_dir)
        return run

    def resume(self, case: Case, run: Run, run_dir: Path, was_pending: Any) -> None:
        """The same command again (its stop disabled): time to the server's first request."""
        (run_dir / "crawl.log").rename(run_dir / "crawl-1.log")
        (run_dir / "status.json").unlink(missing_ok=True)
        offset = self.server.log_offset()
        child = Child(crawl_command(case.config, self.server.url, run_dir, 0), self.project)
        deadline = time.monotonic() + self.args.timeout
        seen: list[tuple[float, int]] = []
        window_end: float | None = None
        try:
            while True:
                seen = self.server.requests_since(offset)
                if seen and window_end is None:
                    window_end = time.monotonic() + 5
                exited = child.poll()
                if (exited or len(seen) >= self.args.resume_requests
                        or (window_end is not None and time.monotonic() > window_end)):
                    break
                if child.rss_mib() > self.args.max_rss_mib:
                    status = read_status(run_dir) or {}
                    run.extra["resume_killed"] = (
                        f"killed above {self.args.max_rss_mib:,} MiB at "
                        f"{status.get('pending', 0):,} pending")
                    break
                if time.monotonic() > deadline:
                    run.extra["resume_timeout"] = f"no request within {self.args.timeout} s"
                    break
                time.sleep(0.05)
        finally:
            child.kill()
        seen = self.server.requests_since(offset)[:max(self.args.resume_requests, 1)]
        run.resume_first_s = seen[0][0] - child.started if seen else None
        run.resume_seen = len(seen)
        run.resume_previous = sum(1 for _, page in seen if was_pending(page))
        run.resume_peak_rss_mib, run.resume_exit = child.maxrss_mib, child.exit
        log = (run_dir / "crawl.log").read_text() if (run_dir / "crawl.log").exists() else ""
        said = [int(m.group(1)) for pattern in RESUMED_RE for m in pattern.finditer(log)]
        run.resume_said = said[0] if said else None


# -- the report ----------------------------------------------------------------------------


def med(runs: list[Run], attr: str) -> float | None:
    values = [getattr(r, attr) for r in runs if r.killed is None and getattr(r, attr) is not None]
    return median(values) if values else None


def summarize(runs: list[Run], baseline_mib: float) -> dict[str, Any]:
    """Medians of one case at one F (None where every round was killed by the guard)."""
    ok = [r for r in runs if r.killed is None]
    if not ok:
        return {"killed": runs[0].killed if runs else None}
    pending = med(ok, "pending") or 1
    peak = med(ok, "peak_rss_mib") or 0.0
    cpu_per = median([r.cpu_s / max(r.scheduled, 1) for r in ok])
    disk = med(ok, "disk_bytes") or 0
    said = [r.resume_said or 0 for r in ok]
    previous = [r.resume_previous for r in ok]
    seen = [r.resume_seen for r in ok]
    return {
        "killed": None, "rounds": len(ok), "pending": pending,
        "scheduled": med(ok, "scheduled"), "to_quiet_s": med(ok, "to_quiet_s"),
        "stop_s": med(ok, "stop_s"), "peak_rss_mib": peak,
        "rss_bytes_per_pending": (peak - baseline_mib) * MIB / pending,
        "cpu_s": med(ok, "cpu_s"), "cpu_us_per_request": cpu_per * 1e6,
        "disk_bytes": disk, "disk_bytes_per_pending": disk / pending,
        "resume_first_s": med(ok, "resume_first_s"), "resume_said": median(said),
        "resume_previous": median(previous), "resume_seen": median(seen),
        "resumes_nothing": all(p == 0 for p in previous),
        "resume_peak_rss_mib": med(ok, "resume_peak_rss_mib"),
        "resume_note": next((r.extra[k] for r in ok for k in ("resume_killed", "resume_timeout")
                             if k in r.extra), None),
    }


def fmt_ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return "-"
    return f"{value / ref:.2f}x"


def report_table(target: int, summary: dict[str, dict[str, Any]]) -> str:
    names = [c.name for c in CASES]
    ref = summary.get(REFERENCE, {})
    first_row = True

    def cells(fn: Any) -> list[str]:
        """One row: the guard's message in the first row of a killed case, then "-"."""
        out = []
        for name in names:
            s = summary.get(name)
            if s is None:
                out.append("not run (guard at a smaller F)" if first_row else "-")
            elif s.get("killed"):
                out.append(s["killed"] if first_row else "-")
            else:
                out.append(fn(s))
        return out

    def ratio(key: str) -> list[str]:
        return cells(lambda s: fmt_ratio(s[key], ref.get(key)))

    def first_request(s: dict[str, Any]) -> str:
        first = "-" if s["resume_first_s"] is None else f"{s['resume_first_s']:.2f}"
        return f"{first} ({s['resume_note']})" if s["resume_note"] else first

    def resumed(s: dict[str, Any]) -> str:
        if s["resumes_nothing"]:
            return "resumes nothing"
        return f"{s['resume_previous']:.0f} of {s['resume_seen']:.0f}"

    rows = [["pending at the stop", *cells(lambda s: f"{s['pending']:,.0f}")]]
    first_row = False
    rows += [
        ["s to reach it", *cells(lambda s: f"{s['to_quiet_s']:.1f}")],
        ["s to stop", *cells(lambda s: f"{s['stop_s']:.2f}")],
        ["peak RSS MiB", *cells(lambda s: f"{s['peak_rss_mib']:,.0f}")],
        ["RSS B/pending", *cells(lambda s: f"{s['rss_bytes_per_pending']:,.0f}")],
        ["  vs JOBDIR", *ratio("rss_bytes_per_pending")],
        ["disk MB at the stop", *cells(lambda s: f"{s['disk_bytes'] / 1e6:,.1f}")],
        ["disk B/pending", *cells(lambda s: f"{s['disk_bytes_per_pending']:,.0f}")],
        ["  vs JOBDIR", *ratio("disk_bytes_per_pending")],
        ["CPU s", *cells(lambda s: f"{s['cpu_s']:.1f}")],
        ["CPU us/scheduled request", *cells(lambda s: f"{s['cpu_us_per_request']:.1f}")],
        ["  vs JOBDIR", *ratio("cpu_us_per_request")],
        ["resume: s to 1st request", *cells(first_request)],
        ["  vs JOBDIR", *ratio("resume_first_s")],
        ["resume: pending it says", *cells(lambda s: f"{s['resume_said']:,.0f}")],
        ["resume: earlier-pending among 1st requests", *cells(resumed)],
        ["resume: peak RSS MiB",
         *cells(lambda s: f"{s['resume_peak_rss_mib']:,.0f}")],
    ]
    return f"### F = {target:,}\n\n" + markdown_table(["", *names], rows)


def fits(summaries: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for case in CASES:
        points = [s[case.name] for s in summaries.values()
                  if case.name in s and not s[case.name].get("killed")]
        xs = [p["pending"] for p in points]
        rss = least_squares(xs, [p["peak_rss_mib"] * MIB for p in points])
        cpu = least_squares(xs, [p["cpu_s"] for p in points])
        out[case.name] = {"points": len(points),
                          "rss_bytes_per_pending": rss[0] if rss else None,
                          "rss_intercept_mib": rss[1] / MIB if rss else None,
                          "cpu_us_per_pending": cpu[0] * 1e6 if cpu else None,
                          "cpu_intercept_s": cpu[1] if cpu else None}
    return out


def fit_table(fit: dict[str, dict[str, float | None]]) -> str:
    names = [c.name for c in CASES]
    ref = fit.get(REFERENCE, {})

    def row(key: str, fmt: str) -> list[str]:
        return [f"{fit[n][key]:{fmt}}" if fit[n][key] is not None else "-" for n in names]

    def ratio(key: str) -> list[str]:
        return [fmt_ratio(fit[n][key], ref.get(key)) for n in names]

    rows = [["F points", *[str(fit[n]["points"]) for n in names]],
            ["RSS slope B/pending", *row("rss_bytes_per_pending", ",.0f")],
            ["  vs JOBDIR", *ratio("rss_bytes_per_pending")],
            ["RSS intercept MiB", *row("rss_intercept_mib", ",.0f")],
            ["CPU slope us/pending", *row("cpu_us_per_pending", ".1f")],
            ["  vs JOBDIR", *ratio("cpu_us_per_pending")],
            ["CPU intercept s", *row("cpu_intercept_s", ".1f")]]
    return markdown_table(["growth fit", *names], rows)


LEGEND = """\
Medians of the rounds; "vs JOBDIR" is the ratio to "JOBDIR, SIGINT". pending at the stop: the
scheduler's length once paused and idle (F to within one page's links). s to reach it: Popen
to that moment. s to stop: the signal to the exit (SIGINT: Scrapy's clean close; kill -9
cases: after a settle of --settle s). peak RSS: ru_maxrss of the process; RSS B/pending:
(peak - tiny crawl's peak) / pending. disk: files under the JOBDIR or the checkpoint directory
after the exit. CPU: user + system of the process, per request scheduled. resume: the same
command again; s from its Popen to the first request the server receives; "pending it says":
Scrapy's "Resuming crawl (N requests scheduled)" or the add-on's "N request(s) scheduled
again" (0: no such line); earlier-pending: how many of its first requests were pages pending
at the stop ("resumes nothing": none). "killed above N MiB at k pending": the --max-rss-mib
guard stopped that crawl; "timed out": it had not reached F in --timeout s.
"""


# -- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", default="50000,200000,1000000",
                        help="frontier sizes F, comma-separated (50000,200000,1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per F (3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: F={QUICK_PENDING}, 1 round")
    parser.add_argument("--max-rss-mib", type=int, default=4096,
                        help="kill a crawl whose RSS goes above this (4096)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds allowed to each crawl, stop and resume (3600)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the quiet frontier and a kill -9 (2)")
    parser.add_argument("--resume-requests", type=int, default=20,
                        help="requests of a resumed run looked at (20)")
    parser.add_argument("--sqlite-up-to", type=int, default=200_000,
                        help="run the JOBDIR + SQLite cases only up to this F (200000): each "
                             "push commits a transaction, about 2 ms a request, so F = "
                             "1,000,000 takes over half an hour per case")
    parser.add_argument("--cases", default="",
                        help="run only the cases whose name contains one of these words, "
                             "comma-separated (e.g. 'checkpoint,JOBDIR,'; default: all)")
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--resume-kept", metavar="DIR",
                        help="only resume the crawl kept in DIR (a DIR/<config>-<F> of "
                             "--keep-stopped) --rounds times, against plain Scrapy's start-up")
    parser.add_argument("--keep-stopped", metavar="DIR",
                        help="copy each persisted crawl, as the stop left it, to "
                             "DIR/<config>-<F> before its resume (to profile a resume later)")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the temporary site log, project and crawls go")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.pending, args.rounds = str(QUICK_PENDING), 1
    args.targets = [int(x.replace("_", "")) for x in args.pending.split(",") if x.strip()]
    words = [w.strip() for w in args.cases.split(",") if w.strip()]
    args.selected = [c for c in CASES if not words or any(w in c.name for w in words)]
    if not args.selected:
        parser.error(f"--cases matches none of: {', '.join(c.name for c in CASES)}")
    if not args.targets or min(args.targets) <= BASELINE_PENDING or args.rounds < 1:
        parser.error(f"--pending values must be above {BASELINE_PENDING}, --rounds at least 1")
    return args


def on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def main() -> None:
    args = parse_args()
    if args.worker:
        serve_worker(args.worker[1], int(args.worker[2]) if len(args.worker) > 2 else 0)
        return
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.resume_kept:
            resume_kept(args)
        else:
            run_all(args)
    finally:
        kill_all()


def resume_kept(args: argparse.Namespace) -> None:
    """``--resume-kept DIR``: the resume of a crawl kept by ``--keep-stopped``, ``--rounds``
    times, each against plain Scrapy's start-up in the same round (alternated, in a rotated
    order): seconds from Popen to the site's first request, and the CPU the process had used
    when it was killed at that request. The site is served again on the kept crawl's port
    (the pending requests hold its URLs); every resume starts from a fresh copy of the kept
    directory."""
    kept = Path(args.resume_kept)
    site = json.loads((kept / "site.json").read_text())
    config = next(c for c in CONFIGS if c.name == site["config"])
    print_header(f"Resume of a kept crawl: {site['config']} at {site['pending']:,} pending, "
                 "against plain Scrapy's start-up", args.dir)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_frontier_") as tmp:
        work = Path(tmp)
        project = write_project(work / "project", {"spiders/frontier.py": SPIDER_CODE,
                                                   "watch.py": WATCH_CODE}, PROJECT_SETTINGS)
        server = FanoutServer(work / "requests.log", site["port"])
        results: dict[str, list[tuple[float, float]]] = {PLAIN.name: [], config.name: []}
        try:
            for r in range(args.rounds):
                order = [PLAIN, config] if r % 2 == 0 else [config, PLAIN]
                for cfg in order:
                    run_dir = work / f"r{r}" / slug(cfg.name)
                    run_dir.mkdir(parents=True)
                    if cfg is config:
                        shutil.copytree(kept / site["dir"], run_dir / site["dir"], symlinks=True)
                    offset = server.log_offset()
                    child = Child(crawl_command(cfg, server.url, run_dir, 0), project)
                    deadline = time.monotonic() + args.timeout
                    while not server.requests_since(offset) and not child.poll():
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.01)
                    child.kill()
                    seen = server.requests_since(offset)
                    if seen:
                        results[cfg.name].append((seen[0][0] - child.started, child.cpu_s))
                        print(f"round {r + 1}: {cfg.name:<24} 1st request "
                              f"{seen[0][0] - child.started:.3f} s, CPU {child.cpu_s:.3f} s",
                              flush=True)
                    else:
                        print(f"round {r + 1}: {cfg.name:<24} no request ({child.exit})",
                              flush=True)
                    shutil.rmtree(run_dir)
        finally:
            server.close()
    rows = []
    for name, got in results.items():
        first = median([f for f, _ in got]) if got else None
        cpu = median([c for _, c in got]) if got else None
        rows.append([name, f"{len(got)}", "-" if first is None else f"{first:.3f}",
                     "-" if cpu is None else f"{cpu:.3f}"])
    print()
    print(markdown_table(["medians", "runs", "s to the 1st request", "CPU s at it"], rows))


def run_all(args: argparse.Namespace) -> None:
    print_header("Crawl frontier: memory, disk, CPU and resume against pending requests",
                 args.dir)
    scrapy_version = subprocess.run([PYTHON, "-m", "scrapy", "version"], capture_output=True,
                                    text=True, check=True, env=child_env(),
                                    timeout=120).stdout.strip()
    print(f"{scrapy_version}; F = {', '.join(f'{t:,}' for t in args.targets)}; "
          f"{args.rounds} round(s); guard {args.max_rss_mib:,} MiB; settle {args.settle} s; "
          f"this process's ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} "
          "MiB (a child's ru_maxrss starts at its parent's)\n")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_frontier_") as tmp:
        work = Path(tmp)
        project = write_project(work / "project", {"spiders/frontier.py": SPIDER_CODE,
                                                   "watch.py": WATCH_CODE}, PROJECT_SETTINGS)
        server = FanoutServer(work / "requests.log")
        try:
            print(f"fan-out site at {server.url} (pid {server.proc.pid}), {FANOUT} new links "
                  "per page\n")
            print("settings (the generated project's settings.py):")
            for name, value in PROJECT_SETTINGS.items():
                print(f"    {name} = {value!r}")
            print("commands (in the generated project; RUN is the crawl's fresh directory, F "
                  "the frontier; the resume is the same with BENCH_STOP_PENDING=0):")
            for config in CONFIGS:
                cmd = crawl_command(config, server.url, Path("RUN"), 0)
                print(f"    {config.name}: "
                      + shlex.join(cmd).replace("BENCH_STOP_PENDING=0", "BENCH_STOP_PENDING=F"))
            print(flush=True)
            results = measure(args, Bench(args, server, project, work))
        finally:
            server.close()
    report(args, *results)


def measure(args: argparse.Namespace, bench: Bench) -> tuple[dict[str, list[float]],
                                                            dict[int, dict[str, list[Run]]]]:
    configs = [c for c in CONFIGS if any(case.config is c for case in args.selected)]
    baselines: dict[str, list[float]] = {c.name: [] for c in configs}
    for r in range(args.rounds):
        for config in configs:
            run = bench.crawl(Case(config.name, config, "SIGKILL"), BASELINE_PENDING,
                              bench.work / f"baseline{r}" / slug(config.name))
            baselines[config.name].append(run.peak_rss_mib)
            print(f"tiny crawl {r + 1}: {config.name:<24} peak RSS {run.peak_rss_mib:6.1f} MiB "
                  f"(stopped at {run.pending} pending)", flush=True)
    runs: dict[int, dict[str, list[Run]]] = {}
    guarded: set[str] = set()
    for target in sorted(args.targets):
        runs[target] = {c.name: [] for c in CASES}
        for r in range(args.rounds):
            cases = args.selected
            order = cases[r % len(cases):] + cases[:r % len(cases)]
            for case in order:
                if case.name in guarded:
                    continue
                if "SQLite" in case.name and target > args.sqlite_up_to:
                    continue
                t0 = time.monotonic()
                run = bench.crawl(case, target, bench.work / f"f{target}r{r}" / slug(case.name))
                runs[target][case.name].append(run)
                if run.killed:
                    guarded.add(case.name)
                    print(f"F={target:,} round {r + 1}: {case.name:<24} {run.killed}",
                          flush=True)
                    continue
                resumed = ("resumes nothing" if run.resume_previous == 0
                           else f"{run.resume_previous}/{run.resume_seen} earlier-pending")
                first = "-" if run.resume_first_s is None else f"{run.resume_first_s:.2f} s"
                print(f"F={target:,} round {r + 1}: {case.name:<24} pending {run.pending:,} "
                      f"in {run.to_quiet_s:.1f} s, peak {run.peak_rss_mib:,.0f} MiB, "
                      f"CPU {run.cpu_s:.1f} s, disk {run.disk_bytes / 1e6:.1f} MB, {run.exit}; "
                      f"resume: 1st request {first}, says {run.resume_said}, {resumed} "
                      f"({time.monotonic() - t0:.0f} s)", flush=True)
    return baselines, runs


def report(args: argparse.Namespace, baselines: dict[str, list[float]],
           runs: dict[int, dict[str, list[Run]]]) -> None:
    baseline = {name: median(values) for name, values in baselines.items()}
    summaries = {target: {c.name: summarize(per[c.name], baseline[c.config.name])
                          for c in CASES if per[c.name]}
                 for target, per in runs.items()}
    print("\n## Results\n")
    print("tiny crawl (stopped at 100 pending) peak RSS, MiB: "
          + ", ".join(f"{name} {value:.1f}" for name, value in baseline.items()) + "\n")
    for target, summary in summaries.items():
        print(report_table(target, summary) + "\n")
    print(LEGEND)
    fit = fits(summaries)
    print("### Growth with F (least squares through the F points)\n")
    print(fit_table(fit) + "\n")
    print("RSS slope: extra peak RSS per extra pending request; CPU slope: extra CPU per extra "
          "pending request (one page fetched per 99 requests scheduled included).\n")
    if args.json:
        data = {"command": command_line(), "code": code_version(), "time": time.time(),
                "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
                "args": {k: v for k, v in vars(args).items() if k not in ("worker", "selected")},
                "baseline_peak_rss_mib": baselines,
                "runs": {str(t): {n: [asdict(r) for r in rs] for n, rs in per.items()}
                         for t, per in runs.items()},
                "medians": {str(t): s for t, s in summaries.items()}, "fit": fit}
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
