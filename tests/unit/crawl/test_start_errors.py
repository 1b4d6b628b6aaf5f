"""A CheckpointError that stops a crawl at start is logged once, as one paragraph, and the
traceback asyncio or Twisted would log for it is left out; any other exception keeps it."""

from __future__ import annotations

import logging

import pytest
import scrapy
from scrapy.utils.test import get_crawler

from scrapy_checkpoint.crawl.start_errors import UNHANDLED_LOGGERS, report
from scrapy_checkpoint.errors import ConfigError

from ..conftest import BASE_SETTINGS


class TreeSpider(scrapy.Spider):
    name = "tree"


def _unhandled(name: str, exc: BaseException) -> None:
    """Log ``exc`` the way asyncio's default exception handler (or Twisted's) does."""
    logging.getLogger(name).error("Task exception was never retrieved",
                                  exc_info=(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize("name", UNHANDLED_LOGGERS)
def test_a_reported_error_is_logged_once_without_traceback(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    exc = ConfigError("Invalid setting CHECKPOINT_X=1: use a whole number.")
    with caplog.at_level(logging.DEBUG):
        assert report(exc) is exc
        report(exc)  # a second report of the same error logs nothing more
        _unhandled(name, exc)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("scrapy_checkpoint", "ERROR",
         "The crawl cannot start. Invalid setting CHECKPOINT_X=1: use a whole number.")]


@pytest.mark.parametrize("name", UNHANDLED_LOGGERS)
def test_other_errors_keep_their_traceback(name: str, caplog: pytest.LogCaptureFixture) -> None:
    report(ConfigError("reported"))  # the filters are installed
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        _unhandled(name, ConfigError("not reported"))
        _unhandled(name, ValueError("another error"))
    assert [r.exc_info is not None for r in caplog.records] == [True, True]


def test_a_bad_setting_stops_the_crawler_with_one_paragraph(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        get_crawler(TreeSpider, {**BASE_SETTINGS, "CHECKPOINT_DIR": str(tmp_path),
                                 "CHECKPOINT_DURABILITY": "fsynch"})
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"The crawl cannot start. {info.value}"]
    assert "CHECKPOINT_DURABILITY='fsynch'" in str(info.value)
    _unhandled("asyncio", info.value)  # what asyncio logs for it next is left out
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
