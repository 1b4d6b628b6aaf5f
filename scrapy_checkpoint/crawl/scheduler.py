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
without the add-on, and ``DUPEFILTER_CLASS`` filters them. The two queues are merged
by priority; at equal priority a request in memory goes first, unless it is a start
request (Scrapy's rule: other requests take precedence over start requests).

Order within a priority follows ``SCHEDULER_MEMORY_QUEUE``: LIFO (Scrapy's default)
or FIFO. ``DownloaderAwarePriorityQueue`` balances the requests of its memory queues
across download slots; the journaled ones come out by priority only.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.core.scheduler import Scheduler

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
        self._frontier: Any = None
        from .extension import CheckpointExtension  # the extension imports this module

        ext = CheckpointExtension.of(self.crawler) if self.crawler is not None else None
        frontier = ext.frontier if ext is not None and ext.active else None
        if frontier is not None and ext is not None:
            settings = self.crawler.settings if self.crawler is not None else {}
            lifo = "fifo" not in str(settings.get("SCHEDULER_MEMORY_QUEUE", "")).lower()
            self.frontier_queue = FrontierQueue(lifo=lifo, hot=ext.config.frontier_memory)
            self._frontier = frontier
            frontier.lazy = True
            ext.scheduler = self
        return result

    def enqueue_request(self, request: Any) -> bool:
        """Queue a journaled unit by its code; anything else as Scrapy's scheduler does."""
        frontier = self._frontier
        if frontier is not None and frontier.active:
            if request is frontier.duplicate:  # of a unit queued or done in this run
                frontier.duplicate = None
                self.df.log(request, self.spider)
                return False
            code = frontier.queued(request)
            if code is not None:
                assert self.frontier_queue is not None
                self.frontier_queue.push(code, request.priority, request)
                stats = self.stats
                assert stats is not None
                stats.inc_value("scheduler/enqueued/disk")
                stats.inc_value("scheduler/enqueued")
                return True
        return super().enqueue_request(request)

    def resume(self, codes: Any, priorities: Any, first: Any = ()) -> None:
        """Queue the units a resumed run finds pending, in the order they were queued
        (codes and priorities, e.g. arrays), ``first`` (``(code, priority)`` pairs: those
        in flight at the interruption) to come out before the others of their priority."""
        queue = self.frontier_queue
        assert queue is not None
        if queue.lifo:
            queue.extend(codes, priorities)
            queue.extend([c for c, _ in first], [p for _, p in first])
        else:
            queue.extend([c for c, _ in first], [p for _, p in first])
            queue.extend(codes, priorities)

    def next_request(self) -> Any:
        """The next request by priority, from the journaled units or Scrapy's memory queues
        (see the module docstring); a journaled one rebuilt from its record if needed."""
        queue = self.frontier_queue
        if not queue:
            return super().next_request()
        top = queue.top_priority()
        if top is not None and self.mqs:
            try:
                head = self.mqs.peek()
            except NotImplementedError:  # a queue that cannot peek: memory first
                head = None
                return super().next_request()
            if head is not None and (head.priority > top or (
                    head.priority == top and not head.meta.get("is_start_request"))):
                return super().next_request()
        stats = self.stats
        assert stats is not None
        frontier = self._frontier
        while True:
            item = queue.pop()
            if item is None:
                return super().next_request()
            code, request = item
            request = frontier.popped(code, request)
            if request is not None:
                stats.inc_value("scheduler/dequeued/disk")
                stats.inc_value("scheduler/dequeued")
                return request

    def has_pending_requests(self) -> bool:
        return bool(self.frontier_queue) or super().has_pending_requests()

    def __len__(self) -> int:
        queue = self.frontier_queue if hasattr(self, "frontier_queue") else None
        return super().__len__() + (len(queue) if queue is not None else 0)


__all__ = ["CheckpointScheduler"]
