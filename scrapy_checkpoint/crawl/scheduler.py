"""CheckpointScheduler: Scrapy's scheduler, with the journal as its disk queue.

Every request the checkpoint journals is written once, as a request record in the
stage's journal (:mod:`scrapy_checkpoint.journal.pending`); this scheduler queues
such requests by their unit's code alone (:class:`~.queue.FrontierQueue`, 8 bytes a
request) and rebuilds each from its record when the engine asks for it. So memory
per pending request does not grow with the frontier, and a resumed crawl starts
downloading at once: the pending units go back in the queue as codes, and no request
is rebuilt before its turn.

Why a subclass of Scrapy's scheduler rather than a ``SCHEDULER_DISK_QUEUE``: a disk
queue gets each request to serialise again (the journal already holds it), cannot be
refilled at open without rebuilding every request, and only exists with ``JOBDIR``,
which the checkpoint replaces. Everything else is Scrapy's: requests that are not
journaled (not serialisable, retries, setup requests) go to Scrapy's memory queues
(``SCHEDULER_PRIORITY_QUEUE``, ``SCHEDULER_MEMORY_QUEUE``, the start queues) as
without the add-on, and ``DUPEFILTER_CLASS`` filters them. Journaled start requests
wait in a lane of their own, first in first out (as ``SCHEDULER_START_MEMORY_QUEUE``;
with it set to None they are queued as other requests). The queues are merged by
priority; at equal priority a request in memory goes first, then journaled ones, then
start requests (Scrapy's rule: other requests take precedence over start requests).

Order within a priority follows ``SCHEDULER_MEMORY_QUEUE``: LIFO (Scrapy's default)
or FIFO. ``DownloaderAwarePriorityQueue`` balances the requests of its memory queues
across download slots; the journaled ones come out by priority only.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.core.scheduler import Scheduler
from scrapy.dupefilters import BaseDupeFilter, RFPDupeFilter

from .queue import FrontierQueue

logger = logging.getLogger("scrapy_checkpoint")


class CheckpointScheduler(Scheduler):
    """``SCHEDULER = "scrapy_checkpoint.CheckpointScheduler"`` (the add-on sets it when
    ``SCHEDULER`` is Scrapy's default). Without the checkpoint extension (disabled, or a
    stage skipped) it is Scrapy's scheduler unchanged."""

    def open(self, spider: Any) -> Any:
        """Open Scrapy's queues, then hand the checkpoint's frontier this scheduler."""
        result = super().open(spider)
        self.frontier_queue: FrontierQueue | None = None
        #: Journaled start requests: first in first out, after other requests of their
        #: priority (Scrapy's start queues); None when SCHEDULER_START_MEMORY_QUEUE is None.
        self.start_queue: FrontierQueue | None = None
        self._frontier: Any = None
        from .extension import CheckpointExtension  # the extension imports this module

        ext = CheckpointExtension.of(self.crawler) if self.crawler is not None else None
        frontier = ext.frontier if ext is not None and ext.active else None
        if frontier is not None and ext is not None:
            settings = self.crawler.settings if self.crawler is not None else {}
            lifo = "fifo" not in str(settings.get("SCHEDULER_MEMORY_QUEUE", "")).lower()
            hot = ext.config.frontier_memory
            self.frontier_queue = FrontierQueue(lifo=lifo, hot=hot)
            if self._smqclass is not None:
                self.start_queue = FrontierQueue(lifo=False, hot=hot)
            self._frontier = frontier
            frontier.lazy = True
            ext.scheduler = self
            self._ask_dupefilter = type(self.df) not in (RFPDupeFilter, BaseDupeFilter)
            if self._ask_dupefilter and len(frontier.cp.live.done):
                logger.warning(
                    "DUPEFILTER_CLASS %s.%s starts this run empty, as without the add-on: the "
                    "requests done by earlier runs of stage %s are dropped by their fingerprint "
                    "(REQUEST_FINGERPRINTER_CLASS), but one that only your dupefilter would "
                    "call a duplicate of them (a different fingerprint) is fetched again.",
                    type(self.df).__module__, type(self.df).__qualname__, frontier.stage)
        return result

    #: Whether journaled requests are also put to ``DUPEFILTER_CLASS``: a dupefilter other
    #: than Scrapy's (whose fingerprints are the units' keys, so asking it would only cost
    #: memory) may call requests of other fingerprints duplicates.
    _ask_dupefilter = False

    def enqueue_request(self, request: Any) -> bool:
        """Queue a journaled unit by its code; anything else as Scrapy's scheduler does."""
        frontier = self._frontier
        if frontier is not None and frontier.active:
            if request is frontier.duplicate:  # of a unit queued or done in this run
                frontier.duplicate = None
                self.df.log(request, self.spider)
                return False
            code = frontier.queued(request)
            if (code is not None and self._ask_dupefilter and not request.dont_filter
                    and self.df.request_seen(request)):
                # A duplicate for the user's dupefilter: refused, as Scrapy's scheduler refuses
                # it (request_dropped then takes back the unit registered for it).
                self.df.log(request, self.spider)
                return False
            if code is not None:
                queue = self.frontier_queue
                if self.start_queue is not None and request.meta.get("is_start_request"):
                    queue = self.start_queue
                assert queue is not None
                queue.push(code, request.priority, request)
                stats = self.stats
                assert stats is not None
                stats.inc_value("scheduler/enqueued/disk")
                stats.inc_value("scheduler/enqueued")
                return True
        return super().enqueue_request(request)

    def resume(self, codes: Any, priorities: Any, first: Any = ()) -> None:
        """Queue the units a resumed run finds pending, in the order they were queued
        (codes and priorities, e.g. arrays), ``first`` (``(code, priority)`` pairs: those
        in flight at the interruption) to come out before the others of their priority.
        (Whether a unit was a start request is not kept: resumed ones are all queued as
        other requests.)"""
        queue = self.frontier_queue
        assert queue is not None
        if queue.lifo:
            queue.extend(codes, priorities)
            queue.extend([c for c, _ in first], [p for _, p in first])
        else:
            queue.extend([c for c, _ in first], [p for _, p in first])
            queue.extend(codes, priorities)

    #: Units to hand out and nothing else, then a function to call once (see drain()).
    _drain: list[int] | None = None
    _drained: Any = None

    def drain(self, codes: list[int], then: Any) -> None:
        """Hand out only units ``codes`` (those an earlier run, closed by a CLOSESPIDER limit,
        still had in flight when it was killed), then call ``then()`` (which closes the
        spider), and hand out nothing more."""
        self._drain, self._drained = list(codes), then

    def next_request(self) -> Any:
        """The next request by priority (see the module docstring): of Scrapy's memory
        queues, the journaled units, and the journaled start requests; at equal priority
        in that order, start requests after the others. A journaled one is rebuilt from its
        record if its object was not kept."""
        if self._drain is not None:
            return self._next_to_drain()
        lanes = [q for q in (self.frontier_queue, self.start_queue) if q]
        if not lanes:
            return super().next_request()
        stats = self.stats
        assert stats is not None
        while True:
            best, rank = None, (-(1 << 64), -1)
            for order, queue in ((2, self.frontier_queue), (0, self.start_queue)):
                top = queue.top_priority() if queue else None
                if top is not None and (top, order) > rank:
                    best, rank = queue, (top, order)
            if best is None:
                return super().next_request()
            if self.mqs:
                try:
                    head = self.mqs.peek()
                except NotImplementedError:  # a queue that cannot peek: memory first
                    return super().next_request()
                if head is not None and (head.priority, 1 if head.meta.get("is_start_request")
                                         else 3) > rank:
                    return super().next_request()
            item = best.pop()
            assert item is not None
            request = self._frontier.popped(*item)
            if request is not None and self._ask_dupefilter and not request.dont_filter:
                self.df.request_seen(request)  # a resumed unit: the dupefilter learns it again
            if request is not None:
                stats.inc_value("scheduler/dequeued/disk")
                stats.inc_value("scheduler/dequeued")
                return request

    def _next_to_drain(self) -> Any:
        assert self._drain is not None
        while self._drain:
            request = self._frontier.popped(self._drain.pop(), None)
            if request is not None:
                return request
        then, self._drained = self._drained, None
        if then is not None:  # at the engine's next call: the last one is in progress
            then()
        return None

    def has_pending_requests(self) -> bool:
        return (bool(self.frontier_queue) or bool(self.start_queue)
                or super().has_pending_requests())

    def __len__(self) -> int:
        queued = sum(len(q) for q in (getattr(self, "frontier_queue", None),
                                      getattr(self, "start_queue", None)) if q is not None)
        return super().__len__() + queued


__all__ = ["CheckpointScheduler"]
