"""Replay: the estimate of a crawl's final size, fed again with kept crawls' fetch orders.

What it does
    ``bench_eta.py --keep`` keeps the web server's hit log: every request of every crawl, in
    the order the server saw them. This script rebuilds each fresh crawl of that log from it
    (each page's links from the same site model, in the order of the hits; a link is new the
    first time it is seen, as Scrapy's dupefilter has it) and feeds the units to
    :class:`~scrapy_checkpoint.estimate.DepthProfile` and
    :class:`~scrapy_checkpoint.estimate.ShownTotal` the way the crawl does (callback and URL
    shape of each unit and of its finder, a sample of the recent ratios, the model and the
    percent shown at each unit, at the time of its hit; the crawl runs its model at most
    every 0.5 s, but replayed so, the model of the first unit held the percent high for the
    first seconds, which the crawls' lines do not show). No crawl runs:
    two versions of ``estimate.py`` are compared on the same fetch orders, whatever the
    machine's load, in a few seconds.

    Figures, at the first unit after 25, 50 and 75 % of the site's pages:
      ETA err %   (size the ETA counts on - done) / (pages - done) * 100 - 100: the ETA's
                  error at a steady rate (the estimate's share of the crawl's ETA error; the
                  crawl's own figures add the error of its throughput)
      lead pts    percent shown - true percent
    and the largest lead once 5 % of the pages are done.

How
    python benchmarks/bench_eta.py --scenarios fresh --rounds 1 --skip-tracker \\
        --show-every 0 --sites listing1,listing,sitemap,tree,wide,blog --dir DIR --keep
    PYTHONPATH=$PWD python benchmarks/replay_eta.py DIR/bench_eta_*/hits.log \\
        --sites listing1,listing,sitemap,tree,wide,blog [--pages 2000] [--json FILE]

    ``--sites`` and ``--pages``: those of the run that wrote the log (its fresh crawls are in
    that order; a log of several rounds or scenarios is not split by this script).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eta import QUARTILES, SITE_CLASSES, SiteModel

from scrapy_checkpoint.estimate import DepthProfile, ShownTotal, url_shape

_HREF = re.compile(r'href="([^"]+)"')
_LOC = re.compile(r"<loc>\{base\}([^<]+)</loc>")
#: A made-up origin for the URL shapes (the shapes do not depend on it).
_ORIGIN = "http://127.0.0.1"


def split_runs(lines: list[tuple[float, str]], sites: list[SiteModel]
               ) -> list[tuple[SiteModel, list[tuple[float, str]]]]:
    """The hits of each site's crawl, ``sites`` in the order they were crawled: a crawl
    starts with the first hit of its site's start page."""
    runs: list[tuple[SiteModel, list[tuple[float, str]]]] = []
    at = 0
    for i, site in enumerate(sites):
        start = next((j for j in range(at, len(lines)) if lines[j][1] == site.start), None)
        if start is None:
            raise SystemExit(f"no crawl of {site.name} in the log after hit {at}")
        following = sites[i + 1].start if i + 1 < len(sites) else None
        end = next((j for j in range(start + 1, len(lines)) if lines[j][1] == following),
                   len(lines)) if following else len(lines)
        runs.append((site, lines[start:end]))
        at = end
    return runs


def links(site: SiteModel, path: str) -> list[str]:
    """The paths ``path``'s page links to, in its order."""
    page = site.render(path)
    if page is None:
        return []
    body, content_type = page
    text = body.decode()
    return _LOC.findall(text) if "xml" in content_type else _HREF.findall(text)


def callback(site: SiteModel, path: str) -> str:
    """The callback the bench's spider for ``site`` gives ``path``'s request."""
    if site.spider == "listing":
        return "parse_listing" if "/list/p" in path else "parse_detail"
    if site.spider == "sitemap":
        return "_parse_sitemap" if path.endswith(".xml") else "parse"
    return "parse"


def replay(site: SiteModel, hits: list[tuple[float, str]]) -> dict[str, Any]:
    """The figures of one crawl replayed (see the module docstring)."""
    pages = len({path for _, path in hits})
    profile, shown = DepthProfile(), ShownTotal()
    kinds: dict[str, tuple[str, str]] = {}

    def kind(path: str) -> tuple[str, str]:
        if path not in kinds:
            kinds[path] = (callback(site, path), url_shape(_ORIGIN + path))
        return kinds[path]

    first = hits[0][1]
    depth_of = {first: 0}
    profile.add(0, kind(first)[0], shape=kind(first)[1])
    fetched: set[str] = set()
    done, pending = 0, 1
    t0 = hits[0][0]
    marks = list(QUARTILES)
    figures: dict[str, Any] = {"site": site.name, "pages": pages, "eta_err": {}, "lead": {},
                               "max_lead": None}
    for t, path in hits:
        if path in fetched or path not in depth_of:
            continue
        fetched.add(path)
        depth = depth_of[path]
        by, by_shape = kind(path)
        for link in links(site, path):
            if link not in depth_of:
                depth_of[link] = depth + 1
                name, shape = kind(link)
                profile.add(depth + 1, name, by, shape=shape, parent_shape=by_shape)
                pending += 1
        profile.finish(depth, by, shape=by_shape)
        done, pending = done + 1, pending - 1
        if not pending:
            break
        profile.sample()  # the crawl samples at each commit, every few units
        model = profile.estimate(done, pending, 0)
        estimate = shown.update(done, model, t - t0)
        true = 100.0 * done / pages
        lead = 100.0 * done / estimate.total - true
        if true >= 5.0:
            figures["max_lead"] = lead if figures["max_lead"] is None else max(
                figures["max_lead"], lead)
        while marks and true >= marks[0]:
            mark = marks.pop(0)
            figures["eta_err"][mark] = 100.0 * (estimate.eta_size - done) / (pages - done) - 100
            figures["lead"][mark] = lead
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="a hit log kept by bench_eta.py --keep")
    parser.add_argument("--sites", default="listing1,listing,sitemap,tree,wide,blog",
                        help="the sites of the run that wrote the log, in its order")
    parser.add_argument("--pages", type=int, default=2000, help="its --pages (2000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    lines = []
    for line in args.log.read_text().splitlines():
        t, _, path = line.partition(" ")
        if path:
            lines.append((float(t), path))
    sites = [SITE_CLASSES[name](args.pages) for name in args.sites.split(",")]
    results = [replay(site, hits) for site, hits in split_runs(lines, sites)]
    print("| site | pages | ETA err % @25/50/75 | lead pts @25/50/75 | max lead |")
    print("|---|---|---|---|---|")
    for r in results:
        err = "/".join(f"{r['eta_err'].get(q, float('nan')):+.0f}" for q in QUARTILES)
        lead = "/".join(f"{r['lead'].get(q, float('nan')):+.1f}" for q in QUARTILES)
        top = "-" if r["max_lead"] is None else f"{r['max_lead']:+.1f}"
        print(f"| {r['site']} | {r['pages']:,} | {err} | {lead} | {top} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
