"""A CrawlSpider whose rules change between a killed run and its resume.

A CrawlSpider's request names its rule by index (``meta["rule"]``); the resumed requests
must go to the same rule, wherever it now is in ``rules``: reordered rules end as plain
Scrapy ends, a removed rule stops the resume before anything is fetched (as a renamed
callback does), and a rule added is said in the log (the done pages were parsed without
it).
"""

from __future__ import annotations

import signal
from pathlib import Path

from .shop import ShopSite
from .test_fidelity import (
    ADDON,
    References,
    assert_completed,
    crawl,
    diff,
    read_outputs,
    references,  # noqa: F401 (fixture)
    site,  # noqa: F401 (fixture)
)


def killed_halfway(shop: ShopSite, plain: References, directory: Path) -> list[str]:
    """The catalog crawl with the add-on, killed at half its requests; the add-on's arguments."""
    reference, _ = plain["catalog"]
    addon = [*ADDON, "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}"]
    killed = crawl(shop, "catalog", directory, *addon, kill_after=reference.hits // 2)
    assert killed.returncode == -signal.SIGKILL, killed.log[-3000:]
    return addon


def test_a_resume_with_the_rules_reordered_ends_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, references: References  # noqa: F811
) -> None:
    _, expected = references["catalog"]
    addon = killed_halfway(site, references, tmp_path)
    last = crawl(site, "catalog", tmp_path, *addon, "-a", "rules=reversed")
    assert_completed("catalog", last)
    got = read_outputs(tmp_path)
    assert got.items == expected.items, diff("feed", got.items, expected.items)


def test_a_resume_with_a_rule_removed_stops_before_fetching(
    tmp_path: Path, site: ShopSite, references: References  # noqa: F811
) -> None:
    addon = killed_halfway(site, references, tmp_path)
    last = crawl(site, "catalog", tmp_path, *addon, "-a", "rules=categories")
    assert last.returncode != 0, last.log[-3000:]
    assert last.hits == 0, last.log[-3000:]
    assert "cannot resume" in last.log, last.log[-3000:]
    assert "CrawlSpider rule 'parse_product/" in last.log, last.log[-3000:]
    assert "Completed" not in last.log, last.log[-3000:]


def test_a_resume_with_a_rule_added_first_says_so_and_keeps_the_other_rules(
    tmp_path: Path, site: ShopSite, references: References  # noqa: F811
) -> None:
    _, expected = references["catalog"]
    addon = killed_halfway(site, references, tmp_path)
    last = crawl(site, "catalog", tmp_path, *addon, "-a", "rules=reviews")
    assert_completed("catalog", last)
    assert "1 CrawlSpider rule(s) that its" in last.log, last.log[-3000:]
    assert "(parse_reviews/" in last.log, last.log[-3000:]
    got = read_outputs(tmp_path)
    products = {item: n for item, n in got.items.items() if '"reviews"' not in item}
    # The rules shifted by one: every product of the reference, each once.
    assert products == dict(expected.items), diff("feed", got.items, expected.items)
