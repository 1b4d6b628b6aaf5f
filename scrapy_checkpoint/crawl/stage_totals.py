"""Scrapy's counters over every run of a stage, and ``CLOSESPIDER_*`` limits that count them.

Scrapy's stats and its ``CloseSpider`` extension count from zero in each run. A
crawl that is killed and resumed is one crawl: its items, responses and callback
errors are counted for the stage, so that ``CLOSESPIDER_ITEMCOUNT = 100`` stops
the resumed crawl where the uninterrupted one stops.

Items are counted by outcome (scraped, dropped by ``DropItem``, failed with an
``item_error``) and the scraped ones by class, on Scrapy's item signals: they carry the
final outcome of every item whatever the order of the pipelines.

A count belongs to the request (unit) whose callback produced it: it is held with
the unit and added to the totals when the unit is done, so the totals journaled
with a group (field ``sx``) count exactly the units done in it or before. A
unit's counts after a crash are lost with it and made again when it is redone;
counts of nothing journaled (items of ``start()``, robots.txt) go to the totals at
once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scrapy import Request, Spider
from scrapy.extensions.closespider import CloseSpider as CloseSpiderExtension

from ..checkpoint import EnhancedCheckpoint
from ..errors import CheckpointWriteError, is_disk_full
from ..journal.groups import STAGE_TOTALS
from ..view import ITEM_TYPE, ITEMS_DROPPED, ITEMS_FAILED, ITEMS_SCRAPED, item_counts
from .pipeline_memory import PipelineMemory, resumed_memory_caveat

logger = logging.getLogger("scrapy_checkpoint")

ITEMS = ITEMS_SCRAPED
DROPPED = ITEMS_DROPPED
RESPONSES = "response_received_count"
STATUS = "response_status_count/"  # + the status
ERRORS = "spider_exceptions/count"
#: Items a feed's exporter failed to write (e.g. a value its format cannot hold): plain
#: Scrapy logs 'Error caught on signal handler' and the item is missing from the feed.
FEED_ERRORS = "feed_export_errors"
#: The counts of a unit's items (released before the unit is done, see release_items).
ITEM_COUNTS = (ITEMS, DROPPED, ITEMS_FAILED)

#: The stats prefix of the stage totals: ``checkpoint/stage/item_scraped_count``...
STATS_PREFIX = "checkpoint/stage/"
#: The stats prefix of the stage's item counts: ``checkpoint/items/scraped``, ``.../dropped``,
#: ``.../errors`` and ``checkpoint/items/type/<class name>``.
ITEM_STATS_PREFIX = "checkpoint/items/"

#: CloseSpider's counter -> the stage total it counts.
CLOSESPIDER_COUNTERS = {"itemcount": ITEMS, "pagecount": RESPONSES, "errorcount": ERRORS}


class StageTotals:
    """The stage's totals (see the module docstring).

    ``cp`` is the open checkpoint (its totals are where this run starts);
    ``unit_of(request)`` returns the unit a request carries in this run (None: none).
    The signal handlers are connected by the extension; :meth:`release` and
    :meth:`discard` are called by the frontier; :meth:`fields` is part of the commit
    hook.
    """

    def __init__(self, cp: EnhancedCheckpoint, unit_of: Callable[[Request | None], int | None],
                 stop_crawl: Callable[[Exception], None] | None = None, crawler: Any = None) -> None:
        self.cp = cp
        self.unit_of = unit_of
        #: Totals of the units done (journaled or about to be) and of counts of no unit.
        self.totals: dict[str, int] = dict(cp.live.totals)
        self._units: dict[int, dict[str, int]] = {}
        self._changed = False
        self._type_names: dict[type, str] = {}
        self._status_names: dict[int, str] = {}
        #: Per unit, items counted whose processing has not ended (their signal's receivers
        #: still running): the unit's item counts are not released meanwhile.
        self._unsettled: dict[int, int] = {}
        #: Requests done by earlier runs (their callbacks' changes to the spider are gone),
        #: until a callback error has been explained (see lost_attribute_hint).
        self._resumed = bool(len(cp.live.done))
        #: The project's pipelines' memory, watched in a run that resumes a crawl.
        self.pipelines = PipelineMemory(crawler) if crawler is not None and self._resumed else None
        #: Stops the crawl with an error (the extension's ``stop``).
        self.stop_crawl = stop_crawl
        #: The first error of a feed's exporter in this run (see :meth:`feed_error`).
        self.first_feed_error: str | None = None

    def items_now(self) -> int:
        """Items scraped by the stage so far, every run, the units in flight included."""
        return self.totals.get(ITEMS, 0) + sum(c.get(ITEMS, 0) for c in self._units.values())

    def log_earlier_items(self, stage: str) -> None:
        """Say what earlier runs of the stage scraped (nothing for a new stage)."""
        totals = self.totals
        scraped, dropped, failed = (totals.get(n, 0) for n in (ITEMS, DROPPED, ITEMS_FAILED))
        if scraped or dropped or failed:
            logger.info("Stage %s: earlier runs scraped %d item(s) (%d dropped, %d failed in "
                        "the pipelines); counting on from there.", stage, scraped, dropped, failed)

    def count(self, request: Request | None, *names: str) -> None:
        """Count one of each of ``names`` for the unit ``request`` carries (or for the stage
        at once)."""
        self._count(self.unit_of(request), names)

    def _count(self, unit: int | None, names: tuple[str, ...]) -> None:
        """Count one of each of ``names`` for ``unit`` (None: for the stage at once)."""
        counts: dict[str, int] | None
        if unit is None:
            counts = self.totals
            self._changed = True
        else:
            counts = self._units.get(unit)
            if counts is None:
                counts = self._units[unit] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1

    def release(self, unit: int) -> None:
        """The unit is done: its counts join the totals (journaled with its done record)."""
        counts = self._units.pop(unit, None)
        if counts:
            totals = self.totals
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
            self._changed = True

    def settled(self, unit: int) -> bool:
        """True when every item of the unit counted so far has finished its processing (no
        receiver of its signal is still running)."""
        return unit not in self._unsettled

    def release_items(self, unit: int) -> None:
        """The items the unit's callback yielded so far are through the pipelines and kept
        (see :mod:`.deliveries`; the unit is :meth:`settled`): their counts join the totals,
        the unit's other counts wait for it to be done."""
        counts = self._units.get(unit)
        if not counts:
            return
        totals = self.totals
        for name in [n for n in counts if n in ITEM_COUNTS or n.startswith(ITEM_TYPE)]:
            totals[name] = totals.get(name, 0) + counts.pop(name)
            self._changed = True

    def discard(self, unit: int) -> None:
        """The unit left this run without being done here: its counts go with it."""
        self._units.pop(unit, None)
        self._unsettled.pop(unit, None)

    def fields(self) -> dict[str, Any] | None:
        """The totals, for the group being committed, if they changed."""
        if not self._changed:
            return None
        self._changed = False
        return {STAGE_TOTALS: dict(self.totals)}

    def publish(self, stats: Any) -> None:
        """Set the ``checkpoint/stage/*`` stats to the totals."""
        for name, n in self.totals.items():
            stats.set_value(STATS_PREFIX + name, n)
        items = item_counts(self.totals)
        for key in ("scraped", "dropped", "errors"):
            stats.set_value(ITEM_STATS_PREFIX + key, items[key])
        for name, n in items["types"].items():
            stats.set_value(f"{ITEM_STATS_PREFIX}type/{name}", n)

    # -- signals ---------------------------------------------------------------------------

    def item_scraped(self, item: Any, response: Any, spider: Spider) -> None:
        cls = type(item)
        name = self._type_names.get(cls)
        if name is None:
            name = self._type_names[cls] = ITEM_TYPE + cls.__name__
        self._outcome(response, ITEMS, name)

    def item_dropped(self, item: Any, response: Any, exception: BaseException,
                     spider: Spider) -> None:
        self._outcome(response, DROPPED)

    def item_error(self, item: Any, response: Any, spider: Spider, failure: Any) -> None:
        self._outcome(response, ITEMS_FAILED)
        exc = getattr(failure, "value", None)
        if self.stop_crawl is not None and isinstance(exc, BaseException) and is_disk_full(exc):
            # Not the item's fault: its request must run again once there is space, so
            # nothing from here on is recorded (stop() closes the commits).
            url = getattr(response, "url", None)
            self.stop_crawl(CheckpointWriteError(
                f"An item pipeline could not store an item{f' of {url}' if url else ''}, a "
                f"disk is full: {type(exc).__name__}: {exc}. Its request is not recorded "
                f"done, nor is anything after it; everything committed before is kept. Free "
                f"disk space, then run the same command again to resume."))

    def feed_error(self, response: Any, exc: BaseException) -> None:
        """A feed's exporter raised ``exc`` writing an item of ``response``: the item is not
        in that feed (nor in the feeds after it). Counted for the stage, with the item."""
        self._count(self.unit_of(getattr(response, "request", None)), (FEED_ERRORS,))
        if self.first_feed_error is None:
            self.first_feed_error = f"{type(exc).__name__}: {exc}"

    def pipeline_memory(self) -> str | None:
        """What to say instead of 'Completed' when this resumed run's pipelines learned from
        the items in memory (see :mod:`.pipeline_memory`)."""
        return resumed_memory_caveat(self.pipelines)

    def unwritten_items(self) -> str | None:
        """What to say instead of 'Completed' when items could not be written to a feed
        in some run of the stage (None: every item was written)."""
        n = self.totals.get(FEED_ERRORS, 0)
        if not n:
            return None
        first = f" (first error of this run: {self.first_feed_error})" if self.first_feed_error else ""
        return (f"{n} scraped item(s) could not be written to the feeds: their exporter raised"
                f"{first}, so they are missing from the feed files, as plain Scrapy leaves them "
                f"after logging 'Error caught on signal handler'. Make the items' values "
                f"writable by the feed's format (e.g. a FEED_EXPORTERS encoder or an item "
                f"pipeline), then crawl again with -s CHECKPOINT_RESET=True.")

    def _outcome(self, response: Any, *names: str) -> None:
        if self.pipelines is not None:
            self.pipelines.item()
        unit = self.unit_of(getattr(response, "request", None))
        self._count(unit, names)
        if unit is not None:  # until its processing ends (item_finished)
            self._unsettled[unit] = self._unsettled.get(unit, 0) + 1

    def item_finished(self, response: Any) -> None:
        """The processing of an item of ``response`` ended: its signal's receivers have run."""
        unit = self.unit_of(getattr(response, "request", None))
        if unit is None:
            return
        n = self._unsettled.get(unit, 0)
        if n > 1:
            self._unsettled[unit] = n - 1
        elif n:
            del self._unsettled[unit]

    def response_received(self, response: Any, request: Request, spider: Spider) -> None:
        status = self._status_names.get(response.status)
        if status is None:
            status = self._status_names[response.status] = STATUS + str(response.status)
        self._count(self.unit_of(request), (RESPONSES, status))

    def spider_error(self, failure: Any, response: Any, spider: Spider) -> None:
        self.count(getattr(response, "request", None), ERRORS)
        if self._resumed:
            hint = lost_attribute_hint(failure, spider, self.cp.stage or "")
            if hint is not None:
                self._resumed = False  # said once
                logger.warning(hint)

    # -- CLOSESPIDER_* ----------------------------------------------------------------------

    def seed_close_spider(self, crawler: Any) -> tuple[str, int, int] | None:
        """Start Scrapy's CloseSpider counters at the stage totals. Returns ``(counter,
        limit, total)`` when an earlier run of the stage already reached a limit."""
        reached = None
        for ext in getattr(crawler.extensions, "middlewares", ()):
            if not isinstance(ext, CloseSpiderExtension):
                continue
            for counter, name in CLOSESPIDER_COUNTERS.items():
                total = self.totals.get(name, 0)
                if not total:
                    continue
                ext.counter[counter] += total
                limit = ext.close_on.get(counter) or 0
                if limit and ext.counter[counter] >= limit and reached is None:
                    reached = (counter, limit, ext.counter[counter])
        return reached


def lost_attribute_hint(failure: Any, spider: Spider, stage: str) -> str | None:
    """The warning for a callback that failed because the spider lacks an attribute, in a
    run that resumed requests: most likely one that the callback of a request done by an
    earlier run set (a login token on ``self``), which no later run sets again. None for
    any other error."""
    exc = getattr(failure, "value", None)
    if not isinstance(exc, AttributeError) or getattr(exc, "obj", None) is not spider:
        return None
    return (f"Stage {stage}: a callback failed because the spider has no attribute "
            f"{exc.name!r}: if the callback of a request that an earlier run finished set it "
            f"(a login storing a token on the spider), that request is not done again, and "
            f"the requests resumed after it fail; plain Scrapy would have run it first. Keep "
            f"such values in spider.state (restored on resume), or mark the requests that set "
            f"them meta['checkpoint_setup'] = True (made again by every run); then requeue the "
            f"failed requests (scrapy-checkpoint requeue {stage} --failed) and run again.")


__all__ = ["CLOSESPIDER_COUNTERS", "FEED_ERRORS", "ITEM_STATS_PREFIX", "STATS_PREFIX", "StageTotals",
           "lost_attribute_hint"]
