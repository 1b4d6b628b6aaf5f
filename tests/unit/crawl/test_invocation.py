"""Which Scrapy command a crawler serves, read from what each command leaves on it.

tests/test_crawl_commands.py runs shell, fetch, view, parse and check for real; ``scrapy
bench`` crawls a local server for ten seconds, so its crawler is built here the way
``scrapy.cmdline`` builds it (its ``default_settings`` at the "command" priority, its own
spider class).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import scrapy
from scrapy.commands.bench import Command as Bench
from scrapy.commands.bench import _BenchSpider
from scrapy.commands.shell import Command as Shell
from scrapy.crawler import Crawler
from scrapy.settings import Settings
from scrapy.utils.test import get_reactor_settings

from scrapy_checkpoint.crawl.extension import CheckpointExtension
from scrapy_checkpoint.crawl.invocation import borrowing_command

from ..conftest import BASE_SETTINGS, MakeCrawler


class TreeSpider(scrapy.Spider):
    name = "tree"


def _command_crawler(spidercls: type[scrapy.Spider], command: dict[str, Any],
                     tmp_path: Any) -> Crawler:
    """A crawler built as ``scrapy.cmdline`` builds one for a command: the project's settings,
    then the command's ``default_settings`` at the "command" priority."""
    settings = Settings()
    settings.setdict({**BASE_SETTINGS, **get_reactor_settings(),
                      "CHECKPOINT_DIR": str(tmp_path / "checkpoints")}, priority="project")
    settings.setdict(command, priority="command")
    crawler = Crawler(spidercls, settings)
    crawler._apply_settings()
    return crawler


def _installed_nothing(crawler: Crawler) -> bool:
    extensions = crawler.settings.getdict("EXTENSIONS")
    return (CheckpointExtension.of(crawler) is None and CheckpointExtension not in extensions
            and crawler.settings.get("CHECKPOINT_ENABLED") is None)


def test_a_crawl_is_no_command(make_crawler: MakeCrawler) -> None:
    crawler = make_crawler(TreeSpider)
    assert borrowing_command(crawler.spidercls, crawler.settings) is None
    assert CheckpointExtension.of(crawler) is not None


def test_scrapy_shell_is_known_by_its_settings(tmp_path: Any) -> None:
    crawler = _command_crawler(TreeSpider, Shell.default_settings, tmp_path)
    assert borrowing_command(crawler.spidercls, crawler.settings) == "shell"
    assert _installed_nothing(crawler)
    assert not (tmp_path / "checkpoints").exists()


def test_the_shell_settings_set_by_the_user_are_a_crawl(make_crawler: MakeCrawler) -> None:
    crawler = make_crawler(TreeSpider, **Shell.default_settings)  # "project" priority
    assert borrowing_command(crawler.spidercls, crawler.settings) is None
    assert CheckpointExtension.of(crawler) is not None


def test_scrapy_bench_is_known_by_its_spider(tmp_path: Any) -> None:
    crawler = _command_crawler(_BenchSpider, Bench.default_settings, tmp_path)
    assert borrowing_command(crawler.spidercls, crawler.settings) == "bench"
    assert _installed_nothing(crawler)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("command", ["fetch", "parse", "check"])
def test_a_start_replaced_by_a_command_names_it(command: str, make_crawler: MakeCrawler) -> None:
    """fetch (and view), parse and check replace the spider's ``start`` with a function of
    their own module, as scrapy/commands/<command>.py does."""

    async def start(self: scrapy.Spider) -> AsyncIterator[Any]:
        yield scrapy.Request("http://127.0.0.1:1/")

    start.__module__ = f"scrapy.commands.{command}"
    spidercls = type("Replaced", (TreeSpider,), {"start": start})
    crawler = make_crawler(spidercls)
    assert borrowing_command(crawler.spidercls, crawler.settings) == command
    assert _installed_nothing(crawler)
