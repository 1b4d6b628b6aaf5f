"""Benchmark: how truthful a crawl's progress percent and ETA are.

What is measured
    Real ``scrapy crawl`` runs with the add-on (``ADDONS = {"scrapy_checkpoint.Addon": 100}``,
    ``CHECKPOINT_LOG_INTERVAL = 1``) against local sites whose size is known, compared with
    the truth taken from the web server's log of request arrival times.

    Sites (all served from 127.0.0.1 by one twisted.web server in its own process, which
    answers every request after ``--delay`` ms and logs its arrival time and path):

      tree      a link tree: page i has 3-5 children (seeded random), down to depth 6 or
                until ``--pages`` pages; each page also links to its parent and to the home
                page (duplicates)
      wide      a fan-out: page i links to the 100 new pages 100i+1..100i+100 (those under
                ``--pages``) and to the home page
      listing   listing pages 1..P, each linking first to the next listing page and then to
                20 detail pages; a detail page links only back to listing page 1 (P * 21 is
                about ``--pages``). Scrapy's scheduler is LIFO, so the details are fetched
                before the next listing page: the frontier grows 20 pages at a time. Crawled
                the way listing spiders are written: a ``parse_listing`` callback follows the
                next listing page (``parse_listing``) and the details (``parse_detail``)
      listing1  the same site, crawled by the spider that follows every link with one
                callback (``parse``): nothing tells a listing page from a detail page
      sitemap   a sitemap index -> 6 sitemaps -> ``--pages`` pages, crawled by a
                SitemapSpider (the pages have no links)
      blog      the tree, its pages named by words (``/blog/quiet-river-stone``, no digits):
                every URL has a shape of its own (the estimate counts units by callback and
                URL shape, a shape only once several units share it)

    Scenarios, per site:
      fresh     a crawl of a fresh stage
      history   the same site crawled again right after ``fresh`` completed, with
                ``-s CHECKPOINT_ON_COMPLETE=restart`` (so the stage has a completed run behind it)
      resume    a crawl of a fresh stage killed with SIGKILL once the server has answered 40 %
                of the site's pages, then the same command run again: the progress lines of the
                second run's first 10 s

    The truth, from the server's log (distinct paths, so a page fetched again after the
    resume counts once): the true fraction done at t = pages fetched by t / pages of the
    site; the true remaining time at t = time of the crawl's last request - t.

    Figures, from every progress line ``[stage] Progress: 56.1% (1683/3000) | ... | ETA: 13 s |
    pending 1317`` (a ``~`` before the percent and the total is accepted, for an estimated
    total), at the first line after 25 %, 50 % and 75 % of the true work:
      ETA err %   (ETA shown - true remaining) / true remaining * 100 (negative: too early;
                  "unknown" when the line says so)
      lead pts    percent shown - true percent, in points (positive: ahead of the truth)
    and over the whole run: the largest lead, the largest fall of the percent from one line to
    the next ("max drop pts"), and whether a line showed >= 99 % while more than 1 % of the
    work was left ("false 99%": in how many of the rounds).
    ``scrapy-checkpoint --dir DIR show STAGE --json`` is also sampled every ``--show-every``
    seconds during the fresh crawls (its ``percent`` and ``eta_seconds``), scored the same way.

    Tracker: an AsyncCheckpointTracker with a known total whose items come at one rate and
    then at another (200/s then 50/s, and 50/s then 200/s): the ETA error 3 s after the change
    (``tracker.metrics().eta_seconds`` against the true time to the last item).

    The tables show medians over ``--rounds`` rounds (min..max where it matters); ``--json
    FILE`` also writes every round's figures.

How
    python benchmarks/bench_eta.py [--rounds 3] [--pages 2000] [--delay 20] [--concurrency 2]
                                   [--sites tree,wide,listing,listing1,sitemap,blog]
                                   [--scenarios fresh,history,resume] [--skip-tracker]
                                   [--quick] [--json FILE] [--dir DIR] [--show-every 8]
                                   [--setting NAME=VALUE ...]

    ``--quick``: the tree site only, 400 pages, 1 round, short tracker phases (under a minute).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import bisect
import itertools
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    PYTHON,
    REPO,
    SETTINGS,
    Server,
    child_env,
    log_time,
    median,
    print_header,
    slug,
    spread,
    table,
)
from _common import write_project as write_package

QUARTILES = (25, 50, 75)
SCENARIOS = ("fresh", "history", "resume")
KILL_AT = 0.40  # the resume scenario's crash, as a fraction of the site's pages
RESUME_WINDOW = 10.0  # seconds after the second run starts whose progress lines are scored
SITEMAPS = 6
PER_LISTING = 20
FAN_OUT = 100

# -- the sites ----------------------------------------------------------------------------------


class SiteModel:
    """A site of known size: every path a crawl of it fetches, and each path's body."""

    name = ""
    spider = "site"

    def __init__(self, pages: int) -> None:
        self.pages = pages

    @property
    def start(self) -> str:
        raise NotImplementedError

    def paths(self) -> list[str]:
        raise NotImplementedError

    def render(self, path: str) -> tuple[bytes, str] | None:
        raise NotImplementedError


def html(title: str, links: Sequence[str]) -> tuple[bytes, str]:
    body = "\n".join(f'<li><a href="{link}">{link}</a></li>' for link in links)
    text = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
            f"<body><h1>{title}</h1>\n<ul>\n{body}\n</ul></body></html>\n")
    return text.encode(), "text/html; charset=utf-8"


def number(path: str, prefix: str) -> int | None:
    rest = path.removeprefix(prefix)
    return int(rest) if rest != path and rest.isdigit() else None


class Tree(SiteModel):
    name = "tree"
    DEPTH = 6

    def __init__(self, pages: int) -> None:
        super().__init__(pages)
        rng = random.Random(1234)
        self.children: list[list[int]] = [[]]
        self.parent = [0]
        level, depth = [0], 0
        while depth < self.DEPTH and len(self.children) < pages:
            following = []
            for node in level:
                for _ in range(rng.randint(3, 5)):
                    if len(self.children) >= pages:
                        break
                    self.children[node].append(len(self.children))
                    following.append(len(self.children))
                    self.children.append([])
                    self.parent.append(node)
            level, depth = following, depth + 1
        self.pages = len(self.children)

    @property
    def start(self) -> str:
        return "/tree/0"

    def paths(self) -> list[str]:
        return [f"/tree/{i}" for i in range(self.pages)]

    def render(self, path: str) -> tuple[bytes, str] | None:
        i = number(path, "/tree/")
        if i is None or i >= self.pages:
            return None
        links = [f"/tree/{c}" for c in self.children[i]] + [f"/tree/{self.parent[i]}", "/tree/0"]
        return html(f"Page {i}", links)


class Blog(Tree):
    """The tree, its pages named by words (``/blog/quiet-river-stone``): no two URLs of
    the same shape."""

    name = "blog"
    WORDS = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "iris",
             "juniper", "kestrel", "lumen", "maple", "north", "opal", "pine", "quiet", "river",
             "stone", "thistle", "umber", "vale", "willow", "yarrow", "zephyr")

    def __init__(self, pages: int) -> None:
        super().__init__(pages)
        rng = random.Random(5678)
        self.slugs: list[str] = []
        taken: set[str] = set()
        while len(self.slugs) < self.pages:
            slug = "-".join(rng.choice(self.WORDS) for _ in range(3))
            while slug in taken:
                slug += "-" + rng.choice(self.WORDS)
            taken.add(slug)
            self.slugs.append(slug)
        self.index = {slug: i for i, slug in enumerate(self.slugs)}

    @property
    def start(self) -> str:
        return f"/blog/{self.slugs[0]}"

    def paths(self) -> list[str]:
        return [f"/blog/{slug}" for slug in self.slugs]

    def render(self, path: str) -> tuple[bytes, str] | None:
        i = self.index.get(path.removeprefix("/blog/"))
        if i is None:
            return None
        links = [self.children[i], [self.parent[i], 0]]
        return html(f"Post {self.slugs[i]}",
                    [f"/blog/{self.slugs[c]}" for group in links for c in group])


class Wide(SiteModel):
    name = "wide"

    @property
    def start(self) -> str:
        return "/wide/0"

    def paths(self) -> list[str]:
        return [f"/wide/{i}" for i in range(self.pages)]

    def render(self, path: str) -> tuple[bytes, str] | None:
        i = number(path, "/wide/")
        if i is None or i >= self.pages:
            return None
        children = range(FAN_OUT * i + 1, min(self.pages, FAN_OUT * i + FAN_OUT + 1))
        return html(f"Page {i}", [*(f"/wide/{c}" for c in children), "/wide/0"])


class Listing(SiteModel):
    name = "listing"
    spider = "listing"

    def __init__(self, pages: int) -> None:
        super().__init__(pages)
        self.listings = max(1, round(pages / (PER_LISTING + 1)))
        self.pages = self.listings * (PER_LISTING + 1)

    @property
    def start(self) -> str:
        return "/list/p1"

    def paths(self) -> list[str]:
        return ([f"/list/p{k}" for k in range(1, self.listings + 1)]
                + [f"/list/d{i}" for i in range(self.listings * PER_LISTING)])

    def render(self, path: str) -> tuple[bytes, str] | None:
        k = number(path, "/list/p")
        if k is not None and 1 <= k <= self.listings:
            following = [f"/list/p{k + 1}"] if k < self.listings else []
            details = range((k - 1) * PER_LISTING, k * PER_LISTING)
            return html(f"Listing {k}", [*following, *(f"/list/d{i}" for i in details)])
        i = number(path, "/list/d")
        if i is not None and i < self.listings * PER_LISTING:
            return html(f"Detail {i}", ["/list/p1"])
        return None


class Sitemap(SiteModel):
    name = "sitemap"
    spider = "sitemap"

    def __init__(self, pages: int) -> None:
        super().__init__(pages)
        self.leaves = pages
        self.pages = 1 + SITEMAPS + pages

    @property
    def start(self) -> str:
        return "/sm/index.xml"

    def paths(self) -> list[str]:
        return (["/sm/index.xml"] + [f"/sm/map{k}.xml" for k in range(SITEMAPS)]
                + [f"/sm/page{i}" for i in range(self.leaves)])

    def slice(self, k: int) -> range:
        per = -(-self.leaves // SITEMAPS)
        return range(k * per, min(self.leaves, (k + 1) * per))

    def render(self, path: str) -> tuple[bytes, str] | None:
        xml = '<?xml version="1.0" encoding="UTF-8"?>\n'
        ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
        if path == "/sm/index.xml":
            maps = "".join(f"<sitemap><loc>{{base}}/sm/map{k}.xml</loc></sitemap>\n"
                           for k in range(SITEMAPS))
            return f"{xml}<sitemapindex {ns}>\n{maps}</sitemapindex>\n".encode(), "application/xml"
        k = number(path.removesuffix(".xml"), "/sm/map")
        if k is not None and path.endswith(".xml") and k < SITEMAPS:
            urls = "".join(f"<url><loc>{{base}}/sm/page{i}</loc></url>\n" for i in self.slice(k))
            return f"{xml}<urlset {ns}>\n{urls}</urlset>\n".encode(), "application/xml"
        i = number(path, "/sm/page")
        if i is not None and i < self.leaves:
            return html(f"Page {i}", [])
        return None


class ListingOneCallback(Listing):
    name = "listing1"
    spider = "site"


SITE_CLASSES: dict[str, type[SiteModel]] = {
    c.name: c for c in (Tree, Wide, Listing, ListingOneCallback, Sitemap, Blog)}


def make_sites(names: Sequence[str], pages: int) -> dict[str, SiteModel]:
    return {name: SITE_CLASSES[name](pages) for name in names}


# -- the web server (its own process) -------------------------------------------------------


def serve_worker(hits_path: str, delay_ms: float, names: str, pages: int) -> None:
    """Serve the sites, answering each request ``delay_ms`` after it arrives; append
    ``<arrival time> <path>`` to ``hits_path`` for each; print the port."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    sites = make_sites(names.split(","), pages)
    by_prefix = {"tree": "tree", "wide": "wide", "list": "listing", "sm": "sitemap",
                 "blog": "blog"}
    if "listing" not in sites and "listing1" in sites:
        sites["listing"] = sites["listing1"]  # the same site
    hits = open(hits_path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)

    class Pages(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            path = request.path.decode()
            hits.write(f"{time.time():.6f} {path}\n")
            site = sites.get(by_prefix.get(path.split("/")[1], ""))
            found = site.render(path) if site is not None else None
            if found is None:
                request.setResponseCode(404)
                return b"not found\n"
            body, content_type = found
            body = body.replace(b"{base}", f"http://{request.getHeader('host')}".encode())
            gone: list[bool] = []
            request.notifyFinish().addErrback(lambda _: gone.append(True))

            def answer() -> None:
                if not gone:
                    request.setHeader("Content-Type", content_type)
                    request.write(body)
                    request.finish()

            reactor.callLater(delay_ms / 1000, answer)
            return NOT_DONE_YET

    class QuietSite(Site):
        def log(self, request: Any) -> None:  # the hit log above is enough
            pass

    port = reactor.listenTCP(0, QuietSite(Pages()), interface="127.0.0.1", backlog=256)
    print(port.getHost().port, flush=True)
    reactor.run()


class HitLog:
    """The server's request log, read by offset: each run reads what was appended during it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def offset(self) -> int:
        return self.path.stat().st_size

    def read(self, since: int) -> list[tuple[float, str]]:
        with self.path.open("rb") as f:
            f.seek(since)
            data = f.read()
        hits = []
        for line in data.decode().splitlines():
            t, _, path = line.partition(" ")
            if path:
                hits.append((float(t), path))
        return hits


# -- the Scrapy project ---------------------------------------------------------------------

SPIDER_CODE = '''\
import scrapy
from scrapy.spiders import SitemapSpider


class SiteSpider(scrapy.Spider):
    """Follows every link from -a start=URL; one item per page."""

    name = "site"

    def __init__(self, start="", **kwargs):
        super().__init__(**kwargs)
        self.start_url = start

    async def start(self):
        yield scrapy.Request(self.start_url, callback=self.parse)

    def parse(self, response):
        yield {"url": response.url, "title": response.css("title::text").get()}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)


class ListingSpider(scrapy.Spider):
    """A paginated listing from -a start=URL: each listing page's first link is the next
    listing page, the others are detail pages; one item per page."""

    name = "listing"

    def __init__(self, start="", **kwargs):
        super().__init__(**kwargs)
        self.start_url = start

    async def start(self):
        yield scrapy.Request(self.start_url, callback=self.parse_listing)

    def parse_listing(self, response):
        yield {"url": response.url, "title": response.css("title::text").get()}
        links = response.css("a::attr(href)").getall()
        for href in links:
            if "/list/p" in href:
                yield response.follow(href, callback=self.parse_listing)
            else:
                yield response.follow(href, callback=self.parse_detail)

    def parse_detail(self, response):
        yield {"url": response.url, "title": response.css("title::text").get()}
        # its link back to the first listing page is already known


class PagesSpider(SitemapSpider):
    """Reads the sitemap index -a start=URL, its sitemaps, and every page they list."""

    name = "sitemap"

    def __init__(self, start="", **kwargs):
        self.sitemap_urls = [start]
        super().__init__(**kwargs)

    def parse(self, response):
        yield {"url": response.url, "title": response.css("title::text").get()}
'''


def settings(concurrency: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The generated project's settings; ``overrides``: ``NAME=VALUE`` (a Python literal,
    else a string) each, from ``--setting``."""
    extra = {}
    for item in overrides:
        name, _, value = item.partition("=")
        try:
            extra[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[name] = value
    return {
        **SETTINGS,
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "ADDONS": {"scrapy_checkpoint.Addon": 100},
        "CHECKPOINT_LOG_INTERVAL": 1.0,
        "CHECKPOINT_STATE_INTERVAL": 1.0,
        **extra,
    }


def write_project(root: Path, concurrency: int, overrides: Sequence[str] = ()) -> Path:
    return write_package(root, {"spiders/sites.py": SPIDER_CODE}, settings(concurrency, overrides))


def crawl_command(site: SiteModel, base: str, run_dir: Path, log: str,
                  extra: Sequence[str] = ()) -> list[str]:
    return [PYTHON, "-m", "scrapy", "crawl", site.spider, "-a", f"start={base}{site.start}",
            "-s", f"CHECKPOINT_DIR={run_dir / 'checkpoints'}", "-s", f"LOG_FILE={run_dir / log}",
            *extra]


def show_command(site: SiteModel, run_dir: Path) -> list[str]:
    return [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(run_dir / "checkpoints"), "show",
            site.spider, "--json"]


# -- progress lines -------------------------------------------------------------------------

PROGRESS_RE = re.compile(
    r"\[(?P<stage>[^\]]+)\] Progress: (?:~\s*)?(?:(?P<pct>\d+(?:\.\d+)?)% "
    r"\((?P<done>\d+)/(?:~\s*)?(?P<total>\d+)\)|(?P<items>\d+) items)")
ETA_RE = re.compile(r"ETA: (?:~\s*)?(?:(?P<value>\d+(?:\.\d+)?) ?(?P<unit>[a-z]+)|unknown)")
PENDING_RE = re.compile(r"\| pending (\d+)")
UNIT_SECONDS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "min": 60, "mins": 60,
                "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600,
                "day": 86400, "days": 86400}


@dataclass
class Sample:
    """One reading of the progress: a log line, or a ``show --json`` sample."""

    t: float
    percent: float | None
    done: int
    total: int | None
    eta: float | None  # seconds; None: unknown
    pending: int | None = None


def parse_progress(line: str) -> Sample | None:
    """A progress line of the log (its first field the Unix time), or None if it is not one."""
    m = PROGRESS_RE.search(line)
    if m is None:
        return None
    try:
        t = float(line.split(" ", 1)[0])
    except ValueError:
        return None
    if m["pct"] is not None:
        percent, done, total = float(m["pct"]), int(m["done"]), int(m["total"])
    else:
        percent, done, total = None, int(m["items"]), None
    eta = None
    e = ETA_RE.search(line, m.end())
    if e is not None and e["value"] is not None:
        unit = UNIT_SECONDS.get(e["unit"])
        eta = None if unit is None else float(e["value"]) * unit
    p = PENDING_RE.search(line, m.end())
    return Sample(t, percent, done, total, eta, int(p[1]) if p else None)


def progress_lines(log: Path) -> list[Sample]:
    samples = []
    for line in log.read_text(errors="replace").splitlines():
        s = parse_progress(line)
        if s is not None:
            samples.append(s)
    return samples


def sample_show(site: SiteModel, run_dir: Path) -> Sample | None:
    """One ``scrapy-checkpoint show --json`` of the stage, stamped when it returned."""
    out = subprocess.run(show_command(site, run_dir), check=False, capture_output=True, text=True,
                         env=child_env())
    t = time.time()
    if out.returncode != 0:
        return None
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return None
    progress = doc.get("progress") or {}
    return Sample(t, doc.get("percent"), int(progress.get("processed_items") or 0),
                  progress.get("total_items"), doc.get("eta_seconds"), doc.get("pending_units"))


# -- the truth ------------------------------------------------------------------------------


class Truth:
    """What the server saw of one crawl (both runs of a resumed one)."""

    def __init__(self, hits: list[tuple[float, str]], site: SiteModel) -> None:
        known = set(site.paths())
        first: dict[str, float] = {}
        for t, path in hits:
            if path in known and path not in first:
                first[path] = t
        self.first = sorted(first.values())
        self.total = site.pages
        self.fetched = len(first)
        self.end = max(t for t, _ in hits) if hits else 0.0
        self.start = min(t for t, _ in hits) if hits else 0.0

    def fraction(self, t: float) -> float:
        return bisect.bisect_right(self.first, t) / self.total

    def remaining(self, t: float) -> float:
        return self.end - t

    def time_at(self, fraction: float) -> float:
        """When the server answered ``fraction`` of the site's pages (first fetches)."""
        k = max(1, min(len(self.first), math.ceil(fraction * self.total)))
        return self.first[k - 1]


def eta_error(sample: Sample, truth: Truth) -> float | None:
    """(ETA - true remaining) / true remaining, in %; None if the ETA is unknown or nothing
    is left."""
    rem = truth.remaining(sample.t)
    if sample.eta is None or rem <= 0.5:
        return None
    return 100.0 * (sample.eta - rem) / rem


def lead(sample: Sample, truth: Truth) -> float | None:
    if sample.percent is None:
        return None
    return sample.percent - 100.0 * truth.fraction(sample.t)


@dataclass
class Score:
    """The figures of one crawl's samples against its truth."""

    eta_err: dict[int, float | None] = field(default_factory=dict)  # by quartile of true work
    lead: dict[int, float | None] = field(default_factory=dict)
    max_lead: float | None = None
    #: the largest fall of the percent from one sample to the next (points)
    max_drop: float | None = None
    false_99: bool = False
    samples: int = 0


def score(samples: list[Sample], truth: Truth, since: float = 0.0) -> Score:
    """The figures of ``samples`` taken from ``since`` on; a quartile of the true work reached
    before ``since`` has none."""
    samples = [s for s in samples if s.t >= since and s.t <= truth.end]
    result = Score(samples=len(samples))
    for q in QUARTILES:
        at = truth.time_at(q / 100)
        if at < since:
            continue  # reached before these samples begin (a resume's: before the kill)
        after = [s for s in samples if s.t >= at]
        if after:
            result.eta_err[q] = eta_error(after[0], truth)
            result.lead[q] = lead(after[0], truth)
        else:
            result.eta_err[q] = result.lead[q] = None
    leads = [x for x in (lead(s, truth) for s in samples) if x is not None]
    result.max_lead = max(leads) if leads else None
    shown = [s.percent for s in samples if s.percent is not None]
    result.max_drop = max([0.0, *(a - b for a, b in itertools.pairwise(shown))]) if shown else None
    result.false_99 = any(s.percent is not None and s.percent >= 99.0
                          and truth.fraction(s.t) < 0.99 for s in samples)
    return result


# -- crawls ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    site: str
    scenario: str
    round: int
    pages: int
    fetched: int  # distinct pages the server answered
    requests: int  # every request the server saw (refetches after a resume included)
    seconds: float  # first to last request
    lines: Score
    show: Score | None = None
    #: resume only: the second run's progress lines in its first RESUME_WINDOW seconds
    resume_eta_err: list[float | None] = field(default_factory=list)
    resume_lead: list[float | None] = field(default_factory=list)
    killed_at: float | None = None  # resume only: true fraction done at the kill


class Runner:
    def __init__(self, server: Server, hits: HitLog, project: Path, show_every: float) -> None:
        self.server, self.hits, self.project, self.show_every = server, hits, project, show_every

    def popen(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, cwd=self.project, env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def crawl(self, site: SiteModel, run_dir: Path, log: str, extra: Sequence[str] = (),
              show: bool = False, kill_at: float | None = None, since: int | None = None
              ) -> tuple[int, list[Sample], float | None]:
        """Run one crawl; return its exit code (-9 if killed), its ``show`` samples, and the
        true fraction done at the kill."""
        cmd = crawl_command(site, self.server.url, run_dir, log, extra)
        proc = self.popen(cmd)
        shown: list[Sample] = []
        stop = threading.Event()
        sampler = None
        if show and self.show_every > 0:
            def sample() -> None:
                while not stop.wait(self.show_every):
                    s = sample_show(site, run_dir)
                    if s is not None and not stop.is_set():
                        shown.append(s)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        killed_at = None
        try:
            if kill_at is not None:
                assert since is not None
                known = set(site.paths())
                while proc.poll() is None:
                    done = {p for _, p in self.hits.read(since) if p in known}
                    if len(done) >= kill_at * site.pages:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed_at = len(done) / site.pages
                        break
                    time.sleep(0.05)
            code = proc.wait()
        finally:
            stop.set()
            if sampler is not None:
                sampler.join()
        return code, shown, killed_at

    def check(self, code: int, site: SiteModel, truth: Truth, run_dir: Path, what: str) -> None:
        if code != 0 or truth.fetched != site.pages:
            raise RuntimeError(f"{site.name} {what}: exit {code}, the server answered "
                               f"{truth.fetched} of {site.pages} pages; see {run_dir}")

    def complete(self, site: SiteModel, run_dir: Path, r: int, scenario: str) -> RunResult:
        """``fresh``: a crawl of a fresh stage in ``run_dir``; ``history``: the same again on
        the stage ``fresh`` completed there, with CHECKPOINT_ON_COMPLETE = 'restart'."""
        run_dir.mkdir(parents=True, exist_ok=scenario == "history")
        extra = ("-s", "CHECKPOINT_ON_COMPLETE=restart") if scenario == "history" else ()
        log = f"{scenario}.log"
        since = self.hits.offset()
        code, shown, _ = self.crawl(site, run_dir, log, extra, show=scenario == "fresh")
        hits = self.hits.read(since)
        truth = Truth(hits, site)
        self.check(code, site, truth, run_dir, scenario)
        if scenario == "history" and log_time((run_dir / log).read_text(),
                                              "starting it over") is None:
            raise RuntimeError(f"{site.name} history: the stage was not started over; "
                               f"see {run_dir}")
        return RunResult(site.name, scenario, r, site.pages, truth.fetched, len(hits),
                         truth.end - truth.start, score(progress_lines(run_dir / log), truth),
                         score(shown, truth) if shown else None)

    def resume(self, site: SiteModel, run_dir: Path, r: int) -> RunResult:
        run_dir.mkdir(parents=True)
        since = self.hits.offset()
        code, _, killed_at = self.crawl(site, run_dir, "killed.log", kill_at=KILL_AT, since=since)
        if killed_at is None:
            raise RuntimeError(f"{site.name} resume: the crawl ended (exit {code}) before "
                               f"{KILL_AT:.0%} of the pages; see {run_dir}")
        restarted = time.time()
        code, _, _ = self.crawl(site, run_dir, "resumed.log")
        hits = self.hits.read(since)
        truth = Truth(hits, site)
        self.check(code, site, truth, run_dir, "resume")
        log = (run_dir / "resumed.log").read_text()
        if log_time(log, "Detected incomplete checkpoint") is None:
            raise RuntimeError(f"{site.name} resume: the second run did not resume the stage; "
                               f"see {run_dir}")
        lines = progress_lines(run_dir / "resumed.log")
        window = [s for s in lines if restarted <= s.t <= restarted + RESUME_WINDOW]
        result = RunResult(site.name, "resume", r, site.pages, truth.fetched, len(hits),
                           truth.end - truth.start, score(lines, truth, since=restarted),
                           killed_at=killed_at)
        result.resume_eta_err = [eta_error(s, truth) for s in window]
        result.resume_lead = [lead(s, truth) for s in window]
        return result


# -- the tracker --------------------------------------------------------------------------------


@dataclass
class TrackerResult:
    case: str
    round: int
    eta: float | None  # the ETA shown AFTER_CHANGE s after the change (None: unknown)
    remaining: float  # the true time left then
    seconds: float  # the whole run

    @property
    def eta_err(self) -> float | None:
        if self.eta is None or self.remaining <= 0:
            return None
        return 100.0 * (self.eta - self.remaining) / self.remaining


AFTER_CHANGE = 3.0


async def tracker_run(directory: Path, case: str, r: int, rates: tuple[float, float],
                      phases: tuple[float, float]) -> TrackerResult:
    """Items at ``rates[0]``/s for ``phases[0]`` s, then ``rates[1]``/s for ``phases[1]`` s, with
    the total known: the ETA AFTER_CHANGE s after the change against the true time left."""
    if sys.path[0] != str(REPO):
        sys.path.insert(0, str(REPO))  # this checkout's code, as the crawls' (child_env)
    from scrapy_checkpoint import AsyncCheckpointTracker

    if not Path(sys.modules["scrapy_checkpoint"].__file__ or "").is_relative_to(REPO):
        raise RuntimeError(f"scrapy_checkpoint imported from outside {REPO}")

    n1, n2 = round(rates[0] * phases[0]), round(rates[1] * phases[1])
    total = n1 + n2
    reading: tuple[float, float | None] | None = None
    async with AsyncCheckpointTracker(directory, "eta", progress_bar=False,
                                      log_every=0) as tracker:
        tracker.start(total_items=total)
        t0 = time.monotonic()
        change = t0 + phases[0]
        for i in range(total):
            due = t0 + i / rates[0] if i < n1 else change + (i - n1) / rates[1]
            now = time.monotonic()
            if reading is None and now >= change + AFTER_CHANGE:
                reading = (now, tracker.metrics().eta_seconds)
            if due > now:
                await asyncio.sleep(due - now)
            tracker.update(processed=1, successful=1, index=i)
        end = time.monotonic()
    if reading is None:
        raise RuntimeError(f"tracker {case}: the run ended before {AFTER_CHANGE:g} s after the "
                           "change")
    return TrackerResult(case, r, reading[1], end - reading[0], end - t0)


def tracker_cases(quick: bool) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    if quick:
        return [("200/s then 50/s", (200.0, 50.0), (4.0, 6.0))]
    return [("200/s then 50/s", (200.0, 50.0), (8.0, 12.0)),
            ("50/s then 200/s", (50.0, 200.0), (8.0, 12.0))]


# -- report -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = "+.0f") -> str:
    return "unknown" if value is None else f"{value:{spec}}"


def quartile(figures: dict[int, float | None], q: int, spec: str = "+.0f") -> str:
    return fmt(figures[q], spec) if q in figures else "-"


def med(values: Sequence[float | None], spec: str = "+.0f") -> str:
    """Median of the known values; the count of unknown ones if any."""
    known = [v for v in values if v is not None]
    unknown = len(values) - len(known)
    if not known:
        return "unknown" if values else "-"
    text = f"{median(known):{spec}}"
    return text + (f" ({unknown} unknown)" if unknown else "")


def crawl_table(results: list[RunResult], attr: str = "lines") -> str:
    headers = ["site", "scenario", "pages", "crawl s",
               *(f"ETA err % @{q}%" for q in QUARTILES), *(f"lead pts @{q}%" for q in QUARTILES),
               "max lead pts", "max drop pts", "false 99%"]
    rows = []
    keys = list(dict.fromkeys((r.site, r.scenario) for r in results))
    for site, scenario in keys:
        runs = [r for r in results if (r.site, r.scenario) == (site, scenario)]
        scores = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        if not scores:
            continue
        rows.append([
            site, scenario, f"{runs[0].pages:,}", f"{median([r.seconds for r in runs]):.0f}",
            *(med([s.eta_err[q] for s in scores if q in s.eta_err]) for q in QUARTILES),
            *(med([s.lead[q] for s in scores if q in s.lead], "+.1f") for q in QUARTILES),
            med([s.max_lead for s in scores], "+.1f"),
            med([s.max_drop for s in scores], ".1f"),
            f"{sum(s.false_99 for s in scores)}/{len(scores)}",
        ])
    return markdown(headers, rows)


def resume_table(results: list[RunResult]) -> str:
    headers = ["site", "killed at", "lines in 10 s", "ETA err % 1st line",
               "ETA err % median of lines", "min..max", "lead pts 1st line", "refetched"]
    rows = []
    for site in dict.fromkeys(r.site for r in results if r.scenario == "resume"):
        runs = [r for r in results if r.site == site and r.scenario == "resume"]
        firsts = [r.resume_eta_err[0] if r.resume_eta_err else None for r in runs]
        per_run = [med_value(r.resume_eta_err) for r in runs]
        known = [v for v in per_run if v is not None]
        rows.append([
            site, f"{median([r.killed_at or 0 for r in runs]):.0%}",
            f"{median([len(r.resume_eta_err) for r in runs]):.0f}",
            med(firsts), med(per_run), spread(known, "+.0f") if known else "-",
            med([r.resume_lead[0] if r.resume_lead else None for r in runs], "+.1f"),
            f"{median([r.requests - r.fetched for r in runs]):.0f}",
        ])
    return markdown(headers, rows)


def med_value(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def tracker_table(results: list[TrackerResult]) -> str:
    headers = ["case", "run s", f"ETA s {AFTER_CHANGE:g} s after the change", "true remaining s",
               "ETA err %", "min..max"]
    rows = []
    for case in dict.fromkeys(r.case for r in results):
        runs = [r for r in results if r.case == case]
        errs = [r.eta_err for r in runs if r.eta_err is not None]
        rows.append([case, f"{median([r.seconds for r in runs]):.1f}",
                     med([r.eta for r in runs], ".1f"),
                     f"{median([r.remaining for r in runs]):.1f}",
                     med([r.eta_err for r in runs]), spread(errs, "+.0f") if errs else "-"])
    return markdown(headers, rows)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (aligned, so it also reads as plain text)."""
    text = table(headers, rows, left=2)
    lines = text.splitlines()
    rule = "|" + "|".join("-" * (len(c) + 2) for c in lines[1].split("  ")) + "|"
    widths = [len(c) for c in lines[1].split("  ")]

    def row(cells: Sequence[str], is_header: bool = False) -> str:
        padded = [str(c).ljust(w) if i < 2 or is_header else str(c).rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([row(headers, True), rule, *(row(r) for r in rows)])


LEGEND = """
ETA err %: (ETA shown - true remaining time) / true remaining time, at the first progress line
after 25/50/75 % of the site's pages were answered (negative: the ETA promises the end too
early; -90 means it said a tenth of the time really left). lead pts: percent shown - true
percent (positive: ahead of the truth). max lead: the largest lead of any line. max drop: the
largest fall of the percent from one line to the next (0: it never went back). false 99%: in
how many rounds a line showed >= 99 % with more than 1 % of the pages left. crawl s: first to
last request the server saw. Medians of the rounds; "(n unknown)": rounds whose line said
ETA unknown. resume: the resumed run's lines only (25 %, reached before the kill, has none).
"""


# -- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (3)")
    parser.add_argument("--pages", type=int, default=2000, help="pages per site, about (2000)")
    parser.add_argument("--delay", type=float, default=20.0,
                        help="ms the server waits before answering each request (20)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="CONCURRENT_REQUESTS of the crawls (2)")
    parser.add_argument("--sites", default=",".join(SITE_CLASSES),
                        help=f"comma-separated, of {', '.join(SITE_CLASSES)} (all)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (all; history needs "
                             "fresh)")
    parser.add_argument("--show-every", type=float, default=8.0,
                        help="seconds between `scrapy-checkpoint show --json` samples during "
                             "the fresh crawls (8; 0: none)")
    parser.add_argument("--skip-tracker", action="store_true", help="no tracker scenario")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the generated project, e.g. "
                             "CHECKPOINT_THROUGHPUT_WINDOW=10 (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the tree site, 400 pages, 1 round, short tracker phases")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the temporary crawls and stages go")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (crawl logs, stages, hit log)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args()


def progress(message: str) -> None:
    print(message, flush=True)


def main() -> None:
    args = parse_args()
    logging.getLogger("scrapy_checkpoint").setLevel(logging.WARNING)  # the tracker's own lines
    if args.worker:
        serve_worker(args.worker[1], float(args.worker[2]), args.worker[3], int(args.worker[4]))
        return
    if args.quick:
        args.sites, args.pages, args.rounds = "tree", 400, 1
    names = [s.strip() for s in args.sites.split(",") if s.strip()]
    unknown = [n for n in names if n not in SITE_CLASSES]
    if unknown:
        sys.exit(f"unknown site(s): {', '.join(unknown)}")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if any(s not in SCENARIOS for s in scenarios) or ("history" in scenarios
                                                     and "fresh" not in scenarios):
        sys.exit(f"--scenarios: of {', '.join(SCENARIOS)}, and history only with fresh")
    sites = make_sites(names, args.pages)
    print_header("Truthfulness of the progress percent and the ETA", args.dir)
    print(f"sites: {', '.join(f'{s.name} {s.pages:,} pages' for s in sites.values())}; server "
          f"delay {args.delay:g} ms; CONCURRENT_REQUESTS {args.concurrency}; {args.rounds} "
          f"round(s)\n")
    results: list[RunResult] = []
    tracker: list[TrackerResult] = []
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench_eta_"))
    try:
        project = write_project(work / "project", args.concurrency, args.setting)
        hits = HitLog(work / "hits.log")
        server = Server([PYTHON, __file__, "--worker", "serve", str(hits.path), str(args.delay),
                         ",".join(names), str(args.pages)])
        try:
            runner = Runner(server, hits, project, args.show_every)
            print("settings (the generated project's settings.py):")
            for name, value in settings(args.concurrency, args.setting).items():
                print(f"    {name} = {value!r}")
            print("commands (run in the generated project; RUN is the scenario's fresh "
                  "directory):")
            for site in sites.values():
                cmd = crawl_command(site, server.url, Path("RUN"), "crawl.log")
                print(f"    {site.name}: {shlex.join(cmd)}")
            print("    history: the same, again on the completed stage, with "
                  "-s CHECKPOINT_ON_COMPLETE=restart")
            print(f"    resume: the same on a fresh stage, SIGKILL at {KILL_AT:.0%} of the "
                  "pages, then the same command again")
            print(f"    show: {shlex.join(show_command(next(iter(sites.values())), Path('RUN')))}"
                  f" every {args.show_every:g} s during the fresh crawls\n", flush=True)
            for r in range(args.rounds):
                for site in sites.values():
                    run_dir = work / f"round{r}" / slug(site.name)
                    for scenario in scenarios:
                        if scenario == "resume":
                            res = runner.resume(site, run_dir / "resume", r)
                        else:
                            res = runner.complete(site, run_dir / "fresh", r, scenario)
                        results.append(res)
                        s = res.lines
                        progress(
                            f"round {r + 1}: {site.name:<8} {res.scenario:<8} "
                            f"{res.seconds:5.1f} s, {s.samples:3d} lines; ETA err % @25/50/75: "
                            f"{'/'.join(quartile(s.eta_err, q) for q in QUARTILES)}; lead "
                            f"pts: {'/'.join(quartile(s.lead, q, '+.1f') for q in QUARTILES)}; "
                            f"max lead "
                            f"{fmt(s.max_lead, '+.1f')}"
                            + (f"; after resume: {len(res.resume_eta_err)} lines, ETA err % "
                               f"{fmt(med_value(res.resume_eta_err))}"
                               if res.scenario == "resume" else ""))
                if not args.skip_tracker:
                    for case, rates, phases in tracker_cases(args.quick):
                        t = asyncio.run(tracker_run(work / f"round{r}" / "tracker" / slug(case),
                                                    case, r, rates, phases))
                        tracker.append(t)
                        progress(f"round {r + 1}: tracker {case}: {AFTER_CHANGE:g} s after the "
                                 f"change, ETA {fmt(t.eta, '.1f')} s, truly {t.remaining:.1f} s "
                                 f"left: ETA err % {fmt(t.eta_err)}")
        finally:
            server.close()
    finally:
        if args.keep:
            print(f"\nkept {work} (logs, stages, the server's hit log)")
        else:
            shutil.rmtree(work)
    print()
    report(results, tracker, args)


def report(results: list[RunResult], tracker: list[TrackerResult], args: argparse.Namespace
           ) -> None:
    print("## Progress lines\n")
    print(crawl_table(results))
    print(LEGEND)
    fresh_show = [r for r in results if r.show is not None]
    if fresh_show:
        print(f"## `scrapy-checkpoint show --json` samples (every {args.show_every:g} s during "
              "the fresh crawls; percent and eta_seconds)\n")
        print(crawl_table(fresh_show, "show"))
        print()
    if any(r.scenario == "resume" for r in results):
        print(f"## After a resume (SIGKILL at {KILL_AT:.0%} of the pages; the second run's lines "
              f"in its first {RESUME_WINDOW:g} s)\n")
        print(resume_table(results))
        print("\nkilled at: true fraction of the pages answered at the kill. refetched: requests "
              "the server answered twice (in flight at the kill, or not yet committed).\n")
    if tracker:
        print("## AsyncCheckpointTracker, rate change with a known total\n")
        print(tracker_table(tracker))
        print()
    if args.json:
        doc = {"command": shlex.join([PYTHON, *sys.argv]), "args": vars(args),
               "crawls": [asdict(r) for r in results],
               "tracker": [{**asdict(t), "eta_err": t.eta_err} for t in tracker]}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
