"""Errors that stop a crawl at start, reported as one paragraph.

Scrapy builds the add-on and the extensions inside the crawl's task, so an exception
raised there (a bad setting, an unusable ``CHECKPOINT_DIR``, a stage another process
owns) fails the crawl the way Scrapy fails any crawl that cannot start: the crawler
process records a bootstrap failure and ``scrapy crawl`` exits with status 1. It also
reaches asyncio's "Task exception was never retrieved" handler (``AsyncCrawlerProcess``,
the default) or Twisted's "Unhandled error in Deferred" (``CrawlerProcess``,
``CrawlerRunner``), each logging a traceback of some 35 lines through Scrapy's internals
around a message that already says what to do.

:func:`report` logs that message once at ERROR and marks the exception;
:class:`ReportedFilter`, installed on the ``asyncio`` and ``twisted`` loggers, drops their
record of an exception so marked. Any other exception keeps its traceback, and a program
that awaits the crawl still receives the exception itself.
"""

from __future__ import annotations

import logging

from ..errors import CheckpointError

logger = logging.getLogger("scrapy_checkpoint")

#: The loggers that report an exception left unhandled by a crawl's task or Deferred.
UNHANDLED_LOGGERS = ("asyncio", "twisted")

_MARK = "_scrapy_checkpoint_reported"


def report(exc: CheckpointError) -> CheckpointError:
    """Log ``exc`` once at ERROR as the reason the crawl stops, and mark it so that the
    traceback asyncio or Twisted would log for it is left out. Returns ``exc`` (raise it)."""
    if not getattr(exc, _MARK, False):
        install()
        logger.error("The crawl cannot start. %s", exc)
        setattr(exc, _MARK, True)
    return exc


class ReportedFilter(logging.Filter):
    """Drops a record whose exception was already logged by :func:`report`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        exc = exc_info[1] if exc_info else None
        return not (exc is not None and getattr(exc, _MARK, False))


def install() -> None:
    """Add one :class:`ReportedFilter` to each of :data:`UNHANDLED_LOGGERS` (idempotent)."""
    for name in UNHANDLED_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, ReportedFilter) for f in target.filters):
            target.addFilter(ReportedFilter())
