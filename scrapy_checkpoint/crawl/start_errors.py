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
record of an exception so marked, and Twisted's "Unhandled error in Deferred:" line that
heads it. Any other exception keeps its traceback, and a program that awaits the crawl
still receives the exception itself.

With a non-asyncio reactor Twisted writes a third copy, straight to stderr: until a
program "begins logging" (``globalLogBeginner.beginLoggingTo``), Twisted's log beginner
prints every critical event there. Scrapy routes Twisted's events to Python logging with
its own observer and never begins Twisted's logging, so :func:`report` begins it with no
observer of its own: Scrapy's observer still receives every event, and the raw copy stops.
"""

from __future__ import annotations

import logging
import sys
import warnings

from ..errors import CheckpointError

logger = logging.getLogger("scrapy_checkpoint")

#: The loggers that report an exception left unhandled by a crawl's task or Deferred.
UNHANDLED_LOGGERS = ("asyncio", "twisted")

_MARK = "_scrapy_checkpoint_reported"
#: The line Twisted logs, without the exception, just before an unhandled failure.
_UNHANDLED_HEADER = "Unhandled error in Deferred:"
_reported = False


def report(exc: CheckpointError) -> CheckpointError:
    """Log ``exc`` once at ERROR as the reason the crawl stops, and mark it so that the
    traceback asyncio or Twisted would log for it is left out. Returns ``exc`` (raise it)."""
    global _reported
    if not getattr(exc, _MARK, False):
        install()
        _end_twisted_stderr_copy()
        logger.error("The crawl cannot start. %s", exc)
        setattr(exc, _MARK, True)
        _reported = True
    return exc


def mark_reported(exc: BaseException) -> BaseException:
    """Mark ``exc``, already logged by the caller, so that asyncio's or Twisted's record of
    it left unhandled is dropped as :func:`report` drops it. Returns ``exc``."""
    global _reported
    install()
    _end_twisted_stderr_copy()
    setattr(exc, _MARK, True)
    _reported = True
    return exc


def _end_twisted_stderr_copy() -> None:
    """Begin Twisted's logging with no observer of its own, so its log beginner stops
    printing critical events to stderr (Scrapy's observer already logs them). Python's
    ``warnings.showwarning``, which Twisted takes over there, is put back."""
    if "twisted.logger" not in sys.modules:
        return
    from twisted.logger import globalLogBeginner

    if getattr(globalLogBeginner, "_temporaryObserver", None) is None:
        return  # logging already begun by the program: its choice stands
    showwarning = warnings.showwarning
    try:
        globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    finally:
        warnings.showwarning = showwarning


class ReportedFilter(logging.Filter):
    """Drops a record whose exception was already logged by :func:`report`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        exc = exc_info[1] if exc_info else None
        if exc is None:
            # The header of the failure record that follows; an unhandled failure of
            # anything else is still logged with its traceback.
            return not (_reported and record.getMessage() == _UNHANDLED_HEADER)
        return not getattr(exc, _MARK, False)


def install() -> None:
    """Add one :class:`ReportedFilter` to each of :data:`UNHANDLED_LOGGERS` (idempotent)."""
    for name in UNHANDLED_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, ReportedFilter) for f in target.filters):
            target.addFilter(ReportedFilter())
