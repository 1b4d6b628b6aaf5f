"""The frontier queue: journaled units waiting for the downloader, 8 bytes each.

Units come out by priority (highest first) and, within a priority, last in first out
or first in first out, as Scrapy's own queues hand out requests (``SCHEDULER_MEMORY_QUEUE``
decides which). A unit is its code only: its request is rebuilt from its request record
in the journal when it comes out (:meth:`.frontier.Frontier.popped`). The most recently
queued ones, those due first in a LIFO crawl, also keep their request object
(``hot``): they come out without a rebuild, and a crawl whose frontier stays small never
rebuilds anything.
"""

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict
from typing import Any


def _one_value(values: Any) -> bool:
    """True if the non-empty sequence ``values`` holds one value only. An array is compared
    with an array of its first value (a comparison in C: min() and max() make an int object
    of each item: 80 ms for a million on a loaded machine)."""
    if isinstance(values, array):
        return values == array(values.typecode, values[:1]) * len(values)
    return bool(min(values) == max(values))


class FrontierQueue:
    """Codes queued by priority (see the module docstring); ``hot`` objects at most."""

    def __init__(self, *, lifo: bool, hot: int) -> None:
        self.lifo = lifo
        self._hot_limit = hot
        #: priority -> queued codes, in the order queued.
        self._queues: dict[int, array[int]] = {}
        #: priority -> index of the next code out (FIFO only).
        self._heads: dict[int, int] = {}
        #: The priorities with a queue, negated (a min-heap: the highest first).
        self._order: list[int] = []
        self._len = 0
        #: code -> its request object, for the most recent ones.
        self._hot: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    @property
    def hot(self) -> int:
        """Units queued with their request object."""
        return len(self._hot)

    def push(self, code: int, priority: int, request: Any = None) -> None:
        """Queue unit ``code`` at ``priority``, keeping ``request`` while it is among the
        most recent."""
        self._queue(priority).append(code)
        self._len += 1
        if request is not None and self._hot_limit:
            hot = self._hot
            if self.lifo:
                hot[code] = request
                if len(hot) > self._hot_limit:
                    hot.popitem(last=False)  # the deepest: due last
            elif len(hot) < self._hot_limit:  # FIFO: the oldest are due first
                hot[code] = request

    def extend(self, codes: Any, priorities: Any) -> None:
        """Queue many units in order (a resume), without request objects: ``codes`` and
        ``priorities`` are sequences (arrays) of the same length."""
        if not len(codes):
            return
        if _one_value(priorities):  # one priority: the codes go in as a block
            self._queue(priorities[0]).extend(
                codes if isinstance(codes, array) else array("Q", codes))
        else:
            for code, priority in zip(codes, priorities, strict=True):
                self._queue(priority).append(code)
        self._len += len(codes)

    def _queue(self, priority: int) -> array[int]:
        """The queue of ``priority``, made if there is none."""
        queue = self._queues.get(priority)
        if queue is None:
            queue = self._queues[priority] = array("Q")
            heapq.heappush(self._order, -priority)
        return queue

    def top_priority(self) -> int | None:
        """The priority of the next unit out (None: empty)."""
        order = self._order
        while order:
            priority = -order[0]
            queue = self._queues[priority]
            if len(queue) > self._heads.get(priority, 0):
                return priority
            heapq.heappop(order)
            del self._queues[priority]
            self._heads.pop(priority, None)
        return None

    def pop(self) -> tuple[int, Any] | None:
        """The next unit out: ``(code, its request object or None)``; None when empty."""
        priority = self.top_priority()
        if priority is None:
            return None
        queue = self._queues[priority]
        if self.lifo:
            code = queue.pop()
        else:
            head = self._heads.get(priority, 0)
            code = queue[head]
            head += 1
            if head >= 4096 and head * 2 >= len(queue):
                del queue[:head]
                head = 0
            self._heads[priority] = head
        self._len -= 1
        return code, self._hot.pop(code, None)


__all__ = ["FrontierQueue"]
