"""Benchmark: what scrapy-checkpoint costs a real Scrapy crawl, and how fast it resumes.

What is measured
    1. Crawl overhead. Full crawls of a generated static site (``--pages``
       HTML pages, default 5,000: page i links to pages 3i+1..3i+3, to its
       parent and to the home page, so most links are duplicates; each page has
       a title and an <h1>) by a spider that follows every link and yields one
       item per page into a jsonlines feed (``-o items.jl``), in these
       configurations:

         plain Scrapy           no add-on
         JOBDIR                 -s JOBDIR=... (pickle disk queues, requests.seen)
         JOBDIR + SQLite        ... and -s SCHEDULER_DISK_QUEUE=scrapy.squeues.PickleLifoSQLiteQueue
         checkpoint             ADDONS = {"scrapy_checkpoint.Addon": 100}, default settings
         checkpoint, flush      ... and -s CHECKPOINT_DURABILITY=flush
         checkpoint, redis      ADDONS as above and -s CHECKPOINT_BACKEND=<Redis URL>?prefix=<fresh>
                                (the Redis store at default settings; URL from --redis, else
                                $REDIS_URL, else redis://127.0.0.1:6379/0; a fresh key prefix
                                per crawl, whose keys are checked to exist and then deleted
                                after the crawl; the Redis server's CPU time during these
                                crawls is printed below the table when it runs on this machine)
         checkpoint, postgresql ADDONS as above and -s CHECKPOINT_BACKEND=<PostgreSQL URL>?schema=<fresh>
                                (the PostgreSQL store at default settings; URL from --postgres,
                                else $POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/postgres;
                                a fresh schema per crawl, checked to exist and then dropped
                                after the crawl; the CPU time of the postgres processes of
                                this machine during these crawls is printed below the table)

       If Redis or PostgreSQL cannot be reached, its configuration is left out (said so
       at the start). Figures per crawl: pages/s from the crawl's own stats
       (response_received_count / elapsed_time_seconds, written as JSON by the
       project's stats collector when the crawl closes), the wall time around
       the ``scrapy crawl`` subprocess (interpreter start and imports included),
       and the crawler's CPU time (user + system, from wait4), which is the
       least sensitive to other load on the machine. Every crawl must answer
       every page once with 200 and write every page's item once, or the
       benchmark stops. Configurations are interleaved within each round (in a
       rotated order) to spread machine noise; the table shows medians of
       ``--rounds`` rounds and the ratio to plain Scrapy.

       Then one more crawl per plugin configuration with the plugin's entry
       points (signal handlers, middleware, feed exporter, engine hooks, timer)
       wrapped in thread-CPU-time counters: the share of the crawl's CPU spent
       in the plugin's own code. Unlike the ratios above it does not depend on
       what else the machine is doing (see ATTRIBUTE_CODE).

    2. Resume of a crawl with 100,000 pending requests (``--pending``). The
       stage is written with the plugin's own core API, exactly as the
       extension would have journaled it: ``EnhancedCheckpoint(dir, "site")``
       (the stage is named after the spider), ``start()``, then
       ``add_unit(key_code(fingerprint(request)), request_to_payload(request,
       spider))`` for requests like the ones the spider schedules (callback
       ``parse``, ``depth`` and the unit code in meta), committed in groups of
       10 (a crawl of this site adds about 9.4 requests per group). Layouts:

         killed, journal only   snapshots disabled while building, cp.save(force=True),
                                then SIGKILL: every request is replayed from the journal
         killed, defaults       the same crash with default options (snapshots
                                along the way, then a journal tail)
         closed, snapshot       cp.close(): one snapshot, nothing to replay

       Each round copies the stage and runs ``scrapy crawl site`` with the
       add-on on the copy; the spider exits at its first response (the
       response_received signal). Baselines in the same table: the plugin with
       a fresh stage, plain Scrapy, and plain Scrapy whose spider hands the
       same number of requests to ``engine.crawl()`` when it opens (what the
       plugin does to reschedule, without the plugin). Times come from the log
       (every line stamped with its Unix time to the microsecond) against the
       parent's clock at Popen: Scrapy up, the checkpoint reopened and
       replayed (the plugin's "Detected incomplete checkpoint" / "Resuming
       paused stage" line), extensions built, spider opened, every request
       scheduled (the plugin's "request(s) scheduled again" line), the first
       response. Memory: ru_maxrss of the crawl process at its first response.

How
    The site is written to a temporary directory and served by twisted.web's
    static File resource in its own process (a separate core from the crawler
    on a multi-core machine); its CPU use during each crawl is reported so you
    can see it is not the bottleneck. Crawls run ``python -m scrapy crawl site``
    in a generated project with the same settings for all configurations
    (printed below, with the exact commands); the plugin's stages and the
    JOBDIRs are fresh for every crawl.

    python benchmarks/bench_crawl.py [--rounds 3] [--pages 5000] [--pending 100000]
                                     [--quick] [--dir DIR] [--skip-resume] [--skip-crawl]
                                     [--redis URL] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    ADDON,
    CHECKPOINT,
    JOBDIR,
    JOBDIR_SQLITE,
    PLAIN,
    PYTHON,
    Config,
    Server,
    child_env,
    default_postgres_url,
    default_redis_url,
    delete_keys,
    drop_schema,
    local_postgres_cpu_seconds,
    local_redis_stat,
    log_time,
    median,
    print_header,
    process_cpu_seconds,
    run_waited,
    slug,
    spread,
    table,
    wait_to_be_killed,
    with_prefix,
    with_schema,
)
from _common import SETTINGS as COMMON_SETTINGS
from _common import write_project as write_package

SPIDER = "site"
GOAL_RATIO = 0.95  # the plugin keeps at least 95% of plain Scrapy's pages/s
GROUP = 10  # requests added per journal group (a crawl of this site adds ~9.4 per group)


CONFIGS = (
    PLAIN,
    JOBDIR,
    JOBDIR_SQLITE,
    CHECKPOINT,
    Config("checkpoint, flush", ("-s", f"ADDONS={ADDON}", "-s", "CHECKPOINT_DIR={run}/checkpoints",
                                 "-s", "CHECKPOINT_DURABILITY=flush")),
    Config("checkpoint, redis", ("-s", f"ADDONS={ADDON}", "-s", "CHECKPOINT_BACKEND={redis}")),
    Config("checkpoint, postgresql", ("-s", f"ADDONS={ADDON}",
                                      "-s", "CHECKPOINT_BACKEND={postgres}")),
)

#: The Redis that "checkpoint, redis" uses (--redis, else $REDIS_URL, else the local one).
REDIS_URL = default_redis_url()
#: The PostgreSQL that "checkpoint, postgresql" uses (--postgres, else $POSTGRES_URL, else the
#: local one).
POSTGRES_URL = default_postgres_url()

RESUME_LAYOUTS = ("killed, journal only", "killed, defaults", "closed, snapshot")

# -- the generated site and project -----------------------------------------------------


def page_html(i: int, n: int) -> str:
    links = [c for c in (3 * i + 1, 3 * i + 2, 3 * i + 3) if c < n]
    links += [max(0, (i - 1) // 3), 0]  # the parent and the home page: duplicates
    body = "\n".join(f'<li><a href="/p/{c}.html">Page {c}</a></li>' for c in links)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Page {i}</title></head>\n"
            f"<body><h1>Page {i}</h1>\n<p>A static test site: a tree of {n} pages.</p>\n"
            f"<ul>\n{body}\n</ul></body></html>\n")


def generate_site(root: Path, n: int) -> None:
    pages = root / "p"
    pages.mkdir(parents=True)
    for i in range(n):
        (pages / f"{i}.html").write_text(page_html(i, n))
    (root / "index.html").write_text(page_html(0, n))


SETTINGS = {**COMMON_SETTINGS, "STATS_CLASS": "benchproject.stats.JsonFileStats"}

SPIDER_CODE = '''\
import json
import os
import resource
import time

import scrapy
from scrapy import signals

if os.environ.get("BENCH_ATTRIBUTE"):
    from benchproject import attribute  # noqa: F401  (instruments the plugin)


class SiteSpider(scrapy.Spider):
    """Follows every link of the site; one item per page. With -a first_response=FILE it
    writes the time and its ru_maxrss to FILE at the first response and exits at once;
    with -a schedule=N it schedules N requests itself when the spider opens."""

    name = "site"

    def __init__(self, base="", first_response="", schedule="0", **kwargs):
        super().__init__(**kwargs)
        self.base = base
        self.first_response = first_response
        self.schedule = int(schedule)

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.first_response:
            crawler.signals.connect(spider.on_first_response, signal=signals.response_received)
        if spider.schedule:
            crawler.signals.connect(spider.schedule_many, signal=signals.spider_opened)
        return spider

    def schedule_many(self, spider):
        """Plain Scrapy's cost of what a resume does: engine.crawl() of many requests."""
        crawl = self.crawler.engine.crawl
        for i in range(self.schedule):
            crawl(scrapy.Request(f"{self.base}/p/{i}.html", callback=self.parse, meta={"depth": 1}))
        self.logger.info("Plain Scrapy: %d request(s) scheduled with engine.crawl()", self.schedule)

    def on_first_response(self, response, request, spider):
        with open(self.first_response, "w") as f:
            json.dump({"t": time.time(), "status": response.status, "url": response.url,
                       "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, f)
        os._exit(0)

    async def start(self):
        yield scrapy.Request(f"{self.base}/p/0.html", callback=self.parse)

    def parse(self, response):
        page = int(response.css("h1::text").get().split()[1])
        yield {"page": page, "title": response.css("title::text").get(), "url": response.url}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)
'''

STATS_CODE = '''\
import json

from scrapy.statscollectors import MemoryStatsCollector


class JsonFileStats(MemoryStatsCollector):
    """Scrapy's default collector, also writing the final stats to BENCH_STATS_FILE."""

    def _persist_stats(self, stats):
        super()._persist_stats(stats)
        path = self._crawler.settings.get("BENCH_STATS_FILE")
        if path:
            with open(path, "w") as f:
                json.dump(stats, f, default=str)
'''


#: Imported by the spider module when BENCH_ATTRIBUTE names a file (instrumented crawls only):
#: times the plugin's entry points in thread CPU time, excluding the Scrapy code they call
#: back into (the feed exporter), and writes the totals to that file at exit.
ATTRIBUTE_CODE = '''\
import atexit
import inspect
import json
import os
import time
from collections import defaultdict

from scrapy.extensions.feedexport import FeedExporter
from scrapy.utils import request as request_utils

from scrapy_checkpoint.checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.crawl.deliveries import ItemTracking
from scrapy_checkpoint.crawl.extension import CheckpointExtension
from scrapy_checkpoint.crawl.feeds import CheckpointFeedExporter
from scrapy_checkpoint.crawl.frontier import Frontier
from scrapy_checkpoint.crawl.middleware import CheckpointMiddleware
from scrapy_checkpoint.crawl.stage_totals import StageTotals

clock = time.thread_time
seconds = defaultdict(float)
calls = defaultdict(int)
excluded = []  # one slot per timed call in progress: time spent in timed calls below it


def timed(cls, name, own=True):
    original = cls.__dict__.get(name)
    if original is None or inspect.iscoroutinefunction(original):
        return  # a wrapper would hide a coroutine function from Scrapy
    label = f"{getattr(cls, '__name__', cls)}.{name}"
    parameters = inspect.signature(original).parameters
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters.values())

    def wrapper(*args, **kwargs):
        if not any_keyword:  # what pydispatch does for a receiver without **kwargs
            kwargs = {k: v for k, v in kwargs.items() if k in parameters}
        excluded.append(0.0)
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = clock() - start
            inner = excluded.pop()
            if own:
                seconds[label] += elapsed - inner
                calls[label] += 1
            if excluded:
                excluded[-1] += elapsed

    setattr(cls, name, wrapper)


for name in ("item_scraped", "spider_opened", "spider_closed", "log_progress"):
    timed(CheckpointExtension, name)
for name in ("request_scheduled", "request_dropped", "spider_error", "request_started",
             "request_finished", "child_yielded"):  # child_yielded: each request a callback yields
    timed(Frontier, name)
# Not timed: CheckpointScheduler.enqueue_request and next_request, which replace Scrapy's own
# scheduler (plain Scrapy's costs about as much: see docs/benchmarks.md, section 3).
for name in ("process_request", "process_response", "process_exception"):
    timed(CheckpointMiddleware, name)
for name in ("prefix", "yielded", "from_start", "finished"):  # the item hooks, per item
    timed(ItemTracking, name)
for name in ("item_scraped", "item_dropped", "item_error", "response_received", "spider_error"):
    timed(StageTotals, name)
timed(CheckpointFeedExporter, "item_scraped")
timed(FeedExporter, "item_scraped", own=False)  # Scrapy's own work, called by the subclass
# The fingerprint the plugin computes first is cached and reused by the dupefilter: it is moved
# out of Scrapy's scheduler, not added. RequestFingerprinter reads this global when created.
timed(request_utils, "fingerprint", own=False)
timed(EnhancedCheckpoint, "tick")


@atexit.register
def dump():
    with open(os.environ["BENCH_ATTRIBUTE"], "w") as f:
        json.dump({"seconds": seconds, "calls": calls, "main_thread_cpu": time.thread_time(),
                   "process_cpu": time.process_time()}, f)
'''


def write_project(root: Path) -> Path:
    return write_package(root, {"spiders/site.py": SPIDER_CODE, "stats.py": STATS_CODE,
                                "attribute.py": ATTRIBUTE_CODE}, SETTINGS)


# -- the web server (its own process) ----------------------------------------------------


def serve_worker(root: str) -> None:
    """Serve ``root`` with twisted.web's static File on a free port; print the port."""
    from twisted.internet import reactor
    from twisted.web.server import Site
    from twisted.web.static import File

    class QuietSite(Site):
        def log(self, request: Any) -> None:  # no access log
            pass

    port = reactor.listenTCP(0, QuietSite(File(root)), interface="127.0.0.1", backlog=256)
    print(port.getHost().port, flush=True)
    reactor.run()


# -- crawls ---------------------------------------------------------------------------------


@dataclass
class Crawl:
    pages_per_s: float
    elapsed_s: float
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    redis_cpu_s: float | None = None  # the Redis server's CPU during the crawl (Redis configs)
    #: the local postgres processes' CPU during the crawl (PostgreSQL configs)
    postgres_cpu_s: float | None = None


def redis_prefix(run_dir: Path) -> str:
    """A key prefix of the crawl's own: this process and the crawl's directory."""
    return slug(f"bench_crawl_{os.getpid()}_{run_dir.parent.name}_{run_dir.name}")


def redis_backend(run_dir: Path) -> str:
    return with_prefix(REDIS_URL, redis_prefix(run_dir))


def redis_cleanup(config: Config, run_dir: Path) -> None:
    """After a Redis crawl: its keys must exist (the stage really was in Redis); delete them."""
    if not config.redis:
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        if not delete_keys(client, f"{redis_prefix(run_dir)}:*"):
            raise RuntimeError(f"{config.name}: no keys under {redis_prefix(run_dir)}: in Redis; "
                               f"see {run_dir / 'crawl.log'}")
    finally:
        client.close()


def postgres_backend(run_dir: Path) -> str:
    """The PostgreSQL URL with a schema of the crawl's own (the same name as its Redis
    prefix)."""
    return with_schema(POSTGRES_URL, redis_prefix(run_dir))


def postgres_cleanup(config: Config, run_dir: Path, check: bool = True) -> None:
    """After a PostgreSQL crawl: drop its schema, which must have existed (the stage really
    was in PostgreSQL) when ``check``."""
    if not config.postgres:
        return
    if not drop_schema(POSTGRES_URL, redis_prefix(run_dir)) and check:
        raise RuntimeError(f"{config.name}: no schema {redis_prefix(run_dir)} in PostgreSQL; "
                           f"see {run_dir / 'crawl.log'}")


def crawl_command(config: Config, base: str, run_dir: Path) -> list[str]:
    extra = [a.replace("{run}", str(run_dir)).replace("{redis}", redis_backend(run_dir))
             .replace("{postgres}", postgres_backend(run_dir)) for a in config.args]
    return [PYTHON, "-m", "scrapy", "crawl", SPIDER, "-a", f"base={base}",
            "-o", str(run_dir / "items.jl"), "-s", f"LOG_FILE={run_dir / 'crawl.log'}",
            "-s", f"BENCH_STATS_FILE={run_dir / 'stats.json'}", *extra]


def check_crawl(config: Config, run_dir: Path, code: int, n: int) -> dict[str, Any]:
    """The crawl must have fetched every page once and written every item once."""
    where = f"{config.name} ({run_dir / 'crawl.log'})"
    if code != 0:
        raise RuntimeError(f"{where}: scrapy exited with {code}")
    stats = json.loads((run_dir / "stats.json").read_text())
    problems = []
    for key in ("response_received_count", "downloader/response_status_count/200",
                "item_scraped_count"):
        if stats.get(key) != n:
            problems.append(f"{key} = {stats.get(key)}, expected {n}")
    if stats.get("finish_reason") != "finished":
        problems.append(f"finish_reason = {stats.get('finish_reason')}")
    lines = (run_dir / "items.jl").read_text().splitlines()
    pages = sorted(json.loads(line)["page"] for line in lines)
    if pages != list(range(n)):
        problems.append(f"items.jl has {len(lines)} lines, {len(set(pages))} distinct pages")
    if problems:
        raise RuntimeError(f"{where}: " + "; ".join(problems))
    return dict(stats)


def run_crawl(config: Config, server: Server, project: Path, run_dir: Path, n: int) -> Crawl:
    run_dir.mkdir(parents=True)
    cmd = crawl_command(config, server.url, run_dir)
    redis_stat = REDIS_STAT if config.redis else None
    redis_before = process_cpu_seconds(redis_stat) if redis_stat else 0.0
    postgres_before = local_postgres_cpu_seconds() if config.postgres else None
    server_before = server.cpu_seconds()
    try:
        code, wall, cpu = run_waited(cmd, project)
    except BaseException:
        postgres_cleanup(config, run_dir, check=False)
        raise
    server_cpu = server.cpu_seconds() - server_before
    redis_cpu = process_cpu_seconds(redis_stat) - redis_before if redis_stat else None
    postgres_after = local_postgres_cpu_seconds() if postgres_before is not None else None
    postgres_cpu = (postgres_after - postgres_before
                    if postgres_before is not None and postgres_after is not None else None)
    try:
        stats = check_crawl(config, run_dir, code, n)
    except BaseException:
        postgres_cleanup(config, run_dir, check=False)
        raise
    elapsed = float(stats["elapsed_time_seconds"])
    return Crawl(stats["response_received_count"] / elapsed, elapsed, wall, cpu, server_cpu,
                 redis_cpu, postgres_cpu)


def crawl_benchmark(server: Server, project: Path, work: Path, n: int, rounds: int) -> None:
    print(f"## Crawl overhead: {n:,} pages, {rounds} round(s), configurations interleaved\n")
    print("common settings (the generated project's settings.py):")
    for name, value in SETTINGS.items():
        print(f"    {name} = {value!r}")
    print("commands (run in the generated project; RUN is the crawl's fresh directory):")
    for config in CONFIGS:
        cmd = crawl_command(config, server.url, Path("RUN"))
        print(f"    {config.name}: {shlex.join(cmd)}")
    print()
    results: dict[str, list[Crawl]] = {c.name: [] for c in CONFIGS}
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        for config in order:
            run_dir = work / f"round{r}" / slug(config.name)
            result = run_crawl(config, server, project, run_dir, n)
            results[config.name].append(result)
            print(f"round {r + 1}: {config.name:<24} {result.pages_per_s:7.0f} pages/s  "
                  f"elapsed {result.elapsed_s:6.2f} s  wall {result.wall_s:6.2f} s  "
                  f"crawler CPU {result.cpu_s:6.2f} s  server CPU {result.server_cpu_s:5.2f} s  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            redis_cleanup(config, run_dir)
            postgres_cleanup(config, run_dir)
            shutil.rmtree(run_dir)
    print()
    crawl_report(results, n)
    for config in CONFIGS[3:]:
        attribution(config, server, project, work / "attribution" / slug(config.name), n)


def crawl_report(results: dict[str, list[Crawl]], n: int) -> None:
    plain = results[CONFIGS[0].name]

    def ratios(runs: list[Crawl], attr: str) -> tuple[float, list[float]]:
        """Ratio of the medians to plain Scrapy's, and the per-round (paired) ratios."""
        values, base = [getattr(c, attr) for c in runs], [getattr(c, attr) for c in plain]
        return median(values) / median(base), [v / b for v, b in zip(values, base, strict=True)]

    headers = ["configuration", "pages/s", "min..max", "vs plain", "paired", "paired min..max",
               "CPU s", "vs plain", "paired", "CPU ms/page", "wall s", "vs plain",
               "crawler CPU %", "server CPU %"]
    rows = []
    for config in CONFIGS:
        runs = results[config.name]
        rate, rate_rounds = ratios(runs, "pages_per_s")
        cpu, cpu_rounds = ratios(runs, "cpu_s")
        wall, _ = ratios(runs, "wall_s")
        rows.append([
            config.name, f"{median([c.pages_per_s for c in runs]):,.0f}",
            spread([c.pages_per_s for c in runs]), f"{rate:.3f}", f"{median(rate_rounds):.3f}",
            spread(rate_rounds, ".2f"), f"{median([c.cpu_s for c in runs]):.2f}", f"{cpu:.3f}",
            f"{median(cpu_rounds):.3f}", f"{median([c.cpu_s for c in runs]) / n * 1000:.2f}",
            f"{median([c.wall_s for c in runs]):.2f}", f"{wall:.3f}",
            f"{median([100 * c.cpu_s / c.wall_s for c in runs]):.0f}",
            f"{median([100 * c.server_cpu_s / c.wall_s for c in runs]):.0f}",
        ])
    print(table(headers, rows))
    print(CRAWL_LEGEND)
    for config in CONFIGS:
        runs = [c for c in results[config.name] if c.redis_cpu_s is not None]
        if runs:
            redis_cpu = [c.redis_cpu_s or 0.0 for c in runs]
            both = median([c.cpu_s + (c.redis_cpu_s or 0.0) for c in runs])
            print(f"{config.name}: the Redis server used {median(redis_cpu):.2f} s of CPU per crawl "
                  f"(median; {spread(redis_cpu, '.2f')}), {median(redis_cpu) / n * 1000:.3f} ms per "
                  f"page, besides the crawler's CPU s above\n(server-wide: other clients count too); "
                  f"crawler + Redis CPU {both:.2f} s, {both / median([c.cpu_s for c in plain]):.3f} "
                  f"x plain Scrapy's crawler CPU\n")
        runs = [c for c in results[config.name] if c.postgres_cpu_s is not None]
        if runs:
            pg_cpu = [c.postgres_cpu_s or 0.0 for c in runs]
            both = median([c.cpu_s + (c.postgres_cpu_s or 0.0) for c in runs])
            print(f"{config.name}: the postgres processes used {median(pg_cpu):.2f} s of CPU per "
                  f"crawl (median; {spread(pg_cpu, '.2f')}), {median(pg_cpu) / n * 1000:.3f} ms per "
                  f"page, besides the crawler's CPU s above\n(every postgres process of this "
                  f"machine: other clients count too); crawler + postgres CPU {both:.2f} s, "
                  f"{both / median([c.cpu_s for c in plain]):.3f} x plain Scrapy's crawler CPU\n")
    for config in CONFIGS[3:]:
        _, paired = ratios(results[config.name], "pages_per_s")
        mid = median(paired)
        if min(paired) >= GOAL_RATIO:
            verdict = "met in every round"
        elif max(paired) < GOAL_RATIO:
            verdict = "NOT met in any round"
        else:
            verdict = (f"{'met' if mid >= GOAL_RATIO else 'NOT met'} by the median, but the rounds "
                       f"range {min(paired):.2f}..{max(paired):.2f}: the machine's noise is larger "
                       "than the margin")
        print(f"goal ({config.name} >= {GOAL_RATIO:.2f} x plain Scrapy's pages/s): {verdict} "
              f"(median of the paired ratios {mid:.3f})")
    print()


def attribution(config: Config, server: Server, project: Path, run_dir: Path, n: int) -> None:
    """One more crawl with the plugin's entry points timed (see ATTRIBUTE_CODE): the share of
    the crawl's main-thread CPU spent in the plugin's own code, unaffected by machine noise."""
    run_dir.mkdir(parents=True)
    out = run_dir / "attribution.json"
    code, wall, _ = run_waited(crawl_command(config, server.url, run_dir), project,
                               BENCH_ATTRIBUTE=str(out))
    try:
        check_crawl(config, run_dir, code, n)
    finally:
        postgres_cleanup(config, run_dir, check=False)
    redis_cleanup(config, run_dir)
    data = json.loads(out.read_text())
    seconds, calls = data["seconds"], data["calls"]
    total, main = sum(seconds.values()), data["main_thread_cpu"]
    print(f"### Where the plugin's time goes: {config.name} (one instrumented crawl, "
          f"{wall:.1f} s wall)\n")
    rows = [[label, f"{calls[label]:,}", f"{1000 * sec:,.0f}", f"{1e6 * sec / calls[label]:.1f}",
             f"{1e6 * sec / n:.1f}", f"{100 * sec / main:.2f}"]
            for label, sec in sorted(seconds.items(), key=lambda kv: -kv[1]) if calls[label]]
    rows.append(["all of the plugin's entry points", "", f"{1000 * total:,.0f}", "",
                 f"{1e6 * total / n:.1f}", f"{100 * total / main:.2f}"])
    print(table(["entry point", "calls", "ms", "us/call", "us/page", "% of main thread"], rows))
    print(f"\nmain thread: {main:.2f} s CPU (process: {data['process_cpu']:.2f} s). Thread CPU "
          "time inside each entry point, minus the Scrapy code it calls back\ninto: the feed "
          "exporter's own work, and the request fingerprint (cached, so the dupefilter does\n"
          "not compute it again). Not included: the signal dispatch to the plugin's receivers, "
          "its imports, its I/O\nthread." + ("\nWith Redis or PostgreSQL, the time the main "
          "thread waits for the server's replies is not CPU time, so it is not counted here "
          "either." if config.redis or config.postgres else "") + "\n")
    shutil.rmtree(run_dir)


# -- resume of 100k pending requests ---------------------------------------------------------


def build_worker(directory: str, layout: str, n: int, base: str) -> None:
    """Write the stage the extension would have written with ``n`` requests pending."""
    from scrapy import Request, Spider
    from scrapy.utils.request import fingerprint

    from scrapy_checkpoint import EnhancedCheckpoint
    from scrapy_checkpoint.crawl.frontier import UNIT_META
    from scrapy_checkpoint.crawl.requests import request_to_payload
    from scrapy_checkpoint.journal.keys import key_code

    class SiteSpider(Spider):  # the generated project's spider, as far as payloads go
        name = SPIDER

        def parse(self, response: Any) -> None:
            pass

    spider = SiteSpider()
    options: dict[str, Any] = {"log_every": 0}
    if layout == "killed, journal only":
        options["compact_min_bytes"] = 1 << 50
    cp = EnhancedCheckpoint(directory, SPIDER, **options)  # the stage is named after the spider
    cp.start()
    depth = 0
    for i in range(n):
        while i >= (3 ** (depth + 1) - 1) // 2:  # the first page of the next level
            depth += 1
        request = Request(f"{base}/p/{i}.html", callback=spider.parse, meta={"depth": depth})
        code = key_code(fingerprint(request))  # the default request fingerprinter
        request.meta[UNIT_META] = code  # the extension sets it before journaling the request
        cp.add_unit(code, request_to_payload(request, spider))
        if (i + 1) % GROUP == 0:
            cp.save()
    if layout == "closed, snapshot":
        cp.close()
        return
    wait_to_be_killed(cp)  # the parent kills us now


def build_stage(layout: str, directory: Path, n: int, base: str) -> None:
    cmd = [PYTHON, __file__, "--worker", "build", str(directory), layout, str(n), base]
    if layout == "closed, snapshot":
        subprocess.run(cmd, check=True, env=child_env())
        return
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env()) as proc:
        assert proc.stdout is not None
        said = [proc.stdout.readline().strip() for _ in range(2)]
        if said != ["updates done", "saved"]:
            proc.kill()
            raise RuntimeError(f"building {layout!r} said {said!r}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass(frozen=True)
class ResumeCase:
    name: str
    layout: str | None  # the stage to resume (None: no stage)
    plugin: bool
    schedule: int = 0  # plain Scrapy: requests the spider schedules itself when it opens


@dataclass
class Resume:
    """Seconds from Popen to each step (None: the step has no log line in this case)."""

    up: float  # Scrapy's first log line: imports done
    reopened: float | None  # the plugin's resume line: the checkpoint reopened and replayed
    extensions: float  # Scrapy's "Enabled extensions" line (the plugin's checkpoint is open)
    opened: float  # Scrapy's "Spider opened" line
    scheduled: float | None  # every request handed to engine.crawl()
    first_response: float
    maxrss_mib: float


CRAWL_LEGEND = """
Medians of the rounds. pages/s: response_received_count / elapsed_time_seconds (the crawl's own
stats). CPU s: user + system time of the scrapy process; wall s: its wall time (interpreter
start and imports included). vs plain: ratio of the medians to plain Scrapy's; paired: median
(and range) of the per-round ratios to the plain Scrapy crawl of the same round, which cancels
slow drifts of the machine's load. CPU %: CPU time / wall time of the crawler and of the web
server during the crawl (100 = one core): a crawler under 100 % was waiting (for the disk, or
for a core taken by other processes), a server far under 100 % is not the bottleneck.
"""

RESUME_LEGEND = """
Seconds from the start of the scrapy process (Popen), medians of the rounds:
  Scrapy up      its first log line (imports done)
  reopened       the plugin's resume line: the checkpoint reopened and its journal replayed
  extensions     Scrapy's "Enabled extensions" line (the plugin's extension, and so its checkpoint,
                 is built by then)
  spider opened  Scrapy's "Spider opened" line
  scheduled      every request handed to engine.crawl(): the plugin's "request(s) scheduled again"
                 line, or the spider's own line for plain Scrapy
  1st response   the response_received signal (min..max over the rounds)
  reopen s       reopened - Scrapy up: the checkpoint's open() and start(), with the little of
                 Scrapy's own setup that comes before the extension is built
  schedule s     scheduled - spider opened: the requests rebuilt and handed to engine.crawl()
  maxrss         ru_maxrss of the crawl process at its first response; B/request: its growth over
                 the same configuration with nothing scheduled, per request
"""


def resume_cases(n: int) -> list[ResumeCase]:
    return [
        ResumeCase("plain Scrapy, nothing scheduled", None, plugin=False),
        ResumeCase(f"plain Scrapy, {n:,} x engine.crawl()", None, plugin=False, schedule=n),
        ResumeCase("checkpoint, fresh stage", None, plugin=True),
        *(ResumeCase(f"checkpoint, {layout}", layout, plugin=True) for layout in RESUME_LAYOUTS),
    ]


def resume_command(case: ResumeCase, base: str, run_dir: Path) -> list[str]:
    config = CONFIGS[3] if case.plugin else CONFIGS[0]
    cmd = [*crawl_command(config, base, run_dir), "-a", f"first_response={run_dir / 'first.json'}"]
    if case.schedule:
        cmd += ["-a", f"schedule={case.schedule}"]
    return cmd


def run_resume(case: ResumeCase, template: Path | None, server: Server, project: Path,
               run_dir: Path, n: int) -> Resume:
    run_dir.mkdir(parents=True)
    if template is not None:
        shutil.copytree(template, run_dir / "checkpoints")
    cmd = resume_command(case, server.url, run_dir)
    t0 = time.time()
    code, _, _ = run_waited(cmd, project)
    marker = run_dir / "first.json"
    if code != 0 or not marker.exists():
        raise RuntimeError(f"{case.name}: exit {code}, no first response; see {run_dir}")
    first = json.loads(marker.read_text())
    log = (run_dir / "crawl.log").read_text()
    reopened = (log_time(log, "Detected incomplete checkpoint for")
                or log_time(log, "Resuming paused stage"))
    scheduled = (log_time(log, "request(s) scheduled again")
                 or log_time(log, "request(s) scheduled with engine.crawl()"))
    again = [line for line in log.splitlines() if "request(s) scheduled again" in line]
    resumed = int(again[0].split("Stage site: ", 1)[1].split()[0]) if again else 0
    if resumed != (0 if template is None else n):
        raise RuntimeError(f"{case.name}: {resumed} requests scheduled again; see {run_dir}")
    up, opened = log_time(log, " started (bot: "), log_time(log, "Spider opened")
    extensions = log_time(log, "Enabled extensions")
    if up is None or opened is None or extensions is None:
        raise RuntimeError(f"{case.name}: Scrapy's start lines not logged; see {run_dir}")

    def since(t: float | None) -> float | None:
        return None if t is None else t - t0

    result = Resume(up - t0, since(reopened), extensions - t0, opened - t0, since(scheduled),
                    first["t"] - t0, first["maxrss_kib"] / 1024)
    shutil.rmtree(run_dir)
    return result


def stage_size(directory: Path) -> str:
    """MB of the newest snapshot / of the journal segments replayed after it."""
    files = {p.name: p.stat().st_size for p in (directory / SPIDER).iterdir() if p.is_file()}
    snaps = sorted(name for name in files if name.startswith("snapshot-") and name.endswith(".bin"))
    newest = snaps[-1].removeprefix("snapshot-").removesuffix(".bin") if snaps else "00000000"
    journal = sum(size for name, size in files.items()
                  if name.startswith("journal-") and name.endswith(".log") and name[8:16] >= newest)
    return f"{(files[snaps[-1]] if snaps else 0) / 1e6:.1f} / {journal / 1e6:.1f}"


def resume_benchmark(server: Server, project: Path, work: Path, n: int, rounds: int) -> None:
    print(f"## Resume: {n:,} pending requests, {rounds} round(s)\n")
    cases = resume_cases(n)
    print("commands (run in the generated project; RUN is the run's fresh directory, holding a "
          "copy of the stage):")
    for case in cases[:3]:
        print(f"    {case.name}: {shlex.join(resume_command(case, server.url, Path('RUN')))}")
    print("    checkpoint, <layout>: the same as checkpoint, fresh stage\n")
    templates: dict[str, Path] = {}
    sizes: dict[str, str] = {}
    for layout in RESUME_LAYOUTS:
        directory = work / "templates" / slug(layout)
        t0 = time.perf_counter()
        build_stage(layout, directory, n, server.url)
        templates[layout], sizes[layout] = directory, stage_size(directory)
        print(f"built {layout!r} in {time.perf_counter() - t0:.1f} s "
              f"(replayed on resume, MB of snapshot / journal: {sizes[layout]})", flush=True)
    results: dict[str, list[Resume]] = {case.name: [] for case in cases}
    for r in range(rounds):
        for case in cases:
            template = templates[case.layout] if case.layout else None
            res = run_resume(case, template, server, project, work / f"resume{r}" / "run", n)
            results[case.name].append(res)
            print(f"round {r + 1}: {case.name:<37} first response at {res.first_response:6.2f} s, "
                  f"maxrss {res.maxrss_mib:4.0f} MiB", flush=True)
    print()
    resume_report(cases, results, sizes, n)


def resume_report(cases: list[ResumeCase], results: dict[str, list[Resume]],
                  sizes: dict[str, str], n: int) -> None:
    def med(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{median(known):.2f}" if known else "-"

    baseline = {False: median([x.maxrss_mib for x in results[cases[0].name]]),
                True: median([x.maxrss_mib for x in results[cases[2].name]])}
    headers = ["case", "replayed MB: snapshot / journal", "Scrapy up", "reopened", "extensions",
               "spider opened", "scheduled", "1st response", "min..max", "reopen s",
               "schedule s", "maxrss MiB", "B/request"]
    rows = []
    for case in cases:
        runs = results[case.name]
        maxrss = median([x.maxrss_mib for x in runs])
        per_request = (maxrss - baseline[case.plugin]) * 2**20 / n
        rows.append([
            case.name, sizes.get(case.layout or "", "-"), med([x.up for x in runs]),
            med([x.reopened for x in runs]), med([x.extensions for x in runs]),
            med([x.opened for x in runs]),
            med([x.scheduled for x in runs]), med([x.first_response for x in runs]),
            spread([x.first_response for x in runs], ".2f"),
            med([None if x.reopened is None else x.reopened - x.up for x in runs]),
            med([None if x.scheduled is None else x.scheduled - x.opened for x in runs]),
            f"{maxrss:.0f}",
            f"{per_request:,.0f}" if case.schedule or case.layout else "-",
        ])
    print(table(headers, rows, left=2))
    print(RESUME_LEGEND)



# -- main ---------------------------------------------------------------------------------------

#: /proc/<pid>/stat of the Redis server when it runs on this machine (its CPU time per crawl).
REDIS_STAT: Path | None = None


def use_redis(url: str) -> None:
    """Point the Redis configuration at ``url``, or leave it out if Redis cannot be reached."""
    global CONFIGS, REDIS_STAT, REDIS_URL
    REDIS_URL = url
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            client.ping()
            version = client.info("server").get("redis_version", "?")
            aof = client.info("persistence").get("aof_enabled")
            REDIS_STAT = local_redis_stat(client)
        finally:
            client.close()
    except Exception as exc:
        CONFIGS = tuple(c for c in CONFIGS if not c.redis)
        print(f"*** Redis at {url} cannot be used ({exc}): the Redis configuration is left out "
              "***\n")
        return
    print(f"redis: {url}, Redis {version}, appendonly {'yes' if aof else 'no'}; a fresh key prefix "
          f"per crawl, deleted after it\n")


def use_postgres(url: str) -> None:
    """Point the PostgreSQL configuration at ``url``, or leave it out if it cannot be
    reached."""
    global CONFIGS, POSTGRES_URL
    POSTGRES_URL = url
    try:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                        for name in ("fsync", "synchronous_commit", "wal_sync_method")}
    except Exception as exc:
        CONFIGS = tuple(c for c in CONFIGS if not c.postgres)
        print(f"*** PostgreSQL at {url} cannot be used ({exc}): the PostgreSQL configuration is "
              "left out ***\n")
        return
    print(f"postgresql: {url}, PostgreSQL {version}, "
          + ", ".join(f"{k} {v}" for k, v in settings.items())
          + "; a fresh schema per crawl, dropped after it\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration (3)")
    parser.add_argument("--pages", type=int, default=5000, help="pages in the site (5000)")
    parser.add_argument("--pending", type=int, default=100_000,
                        help="pending requests in the resumed stage (100000)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 500 pages, 5,000 pending, 1 round")
    parser.add_argument("--skip-crawl", action="store_true", help="only the resume benchmark")
    parser.add_argument("--skip-resume", action="store_true", help="only the crawl benchmark")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the temporary site, crawls and stages go")
    parser.add_argument("--redis", default=REDIS_URL,
                        help="Redis URL of the 'checkpoint, redis' configuration "
                             "(default: $REDIS_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--postgres", default=POSTGRES_URL,
                        help="PostgreSQL URL of the 'checkpoint, postgresql' configuration "
                             "(default: $POSTGRES_URL, else "
                             "postgresql://postgres@127.0.0.1:5432/postgres)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        if args.worker[0] == "serve":
            serve_worker(args.worker[1])
        else:
            build_worker(args.worker[1], args.worker[2], int(args.worker[3]), args.worker[4])
        return
    if args.quick:
        args.pages, args.pending, args.rounds = 500, 5000, 1
    print_header("Crawl overhead and resume of the Scrapy integration", args.dir)
    if not args.skip_crawl:
        use_redis(args.redis)
        use_postgres(args.postgres)
    scrapy_version = subprocess.run([PYTHON, "-m", "scrapy", "version"], capture_output=True,
                                    text=True, check=True, env=child_env()).stdout.strip()
    print(f"{scrapy_version}; web server: twisted.web.static.File in its own process; "
          f"parent ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB\n")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_crawl_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        generate_site(work / "site", args.pages)
        print(f"site: {args.pages:,} pages generated in {time.perf_counter() - t0:.1f} s "
              f"under {work / 'site'}")
        project = write_project(work / "project")
        server = Server([PYTHON, __file__, "--worker", "serve", str(work / "site")])
        print(f"serving it at {server.url} (pid {server.proc.pid})\n", flush=True)
        try:
            if not args.skip_crawl:
                crawl_benchmark(server, project, work / "crawls", args.pages, args.rounds)
            if not args.skip_resume:
                resume_benchmark(server, project, work / "resume", args.pending, args.rounds)
        finally:
            server.close()


if __name__ == "__main__":
    main()
