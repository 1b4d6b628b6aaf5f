"""The one place that touches Scrapy's private engine internals.

Scrapy has no public "request finished" signal. The engine's slot calls
``add_request`` when a scheduled request starts downloading and
``remove_request`` when it is finished: its callback or errback output fully
processed (items through the pipelines), or, when a downloader middleware
turned it into another request (redirect, retry), after that request was
scheduled. Both exist in Scrapy 2.13 to 2.19; the tests check them.
``hook_spider_output()`` sees what each callback or errback yields, after the spider
middlewares, through the scraper's ``handle_spider_output_async`` (2.13 to 2.19):
errback output bypasses the spider middlewares, so a spider middleware would miss it.
``hook_item_processing()`` sees the items of ``start()`` and the end of every item's trip
through the pipelines (the scraper's ``_start_itemproc_nowait`` and ``start_itemproc_async``).
``hook_refusals()`` sees the requests a ``request_scheduled`` receiver refused, which the
engine drops without a signal (``_schedule_request``, the scheduler's ``enqueue_request``).
``wake()``
uses the slot's ``nextcall`` to make an idle engine look at its scheduler now,
``crawl_started()`` reads the crawler's engine slot without the error ``crawler.engine`` raises
before the crawl starts, and ``callbacks_idle()`` reads the scraper's slot: the requests whose
callback or errback output is being processed (``Scraper.slot.queue`` and ``.active``, from
``enqueue_scrape()`` until just before the engine slot's ``remove_request``).
``fail_at_stop()`` makes the crawl's task end with an exception once the engine stopped,
through the Deferred its ``start_async`` awaits (``_closewait``, 2.13 to 2.19).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from typing import Any, Protocol
from weakref import WeakSet

from scrapy import Request, signals
from twisted.internet.defer import Deferred, passthru
from twisted.python.failure import Failure

logger = logging.getLogger("scrapy_checkpoint")

RequestHook = Callable[[Request], None]


def hook_request_lifecycle(engine: Any, on_start: RequestHook, on_finish: RequestHook) -> None:
    """Call ``on_start(request)`` when the engine starts downloading a scheduled request and
    ``on_finish(request)`` when it is done with it (see the module docstring). A hook that raises
    is logged, never breaks the crawl. Raises RuntimeError on a Scrapy without those slot methods."""
    slot = getattr(engine, "_slot", None)
    if slot is None or not callable(getattr(slot, "add_request", None)) or not callable(
        getattr(slot, "remove_request", None)
    ):
        raise RuntimeError(
            "scrapy-checkpoint cannot see when requests finish in this Scrapy version "
            "(ExecutionEngine._slot.add_request/remove_request are missing). Use Scrapy 2.13-2.19."
        )
    add_request, remove_request = slot.add_request, slot.remove_request

    def add(request: Request) -> None:
        add_request(request)
        try:
            on_start(request)
        except Exception:
            logger.exception("scrapy-checkpoint failed to record the start of %s", request)

    def remove(request: Request) -> None:
        try:
            on_finish(request)
        except Exception:
            logger.exception("scrapy-checkpoint failed to record the end of %s", request)
        remove_request(request)

    slot.add_request = add
    slot.remove_request = remove


def hook_refusals(engine: Any, on_refused: RequestHook) -> None:
    """Call ``on_refused(request)`` when a request the engine was given to schedule reached
    neither the scheduler nor ``request_dropped``: a ``request_scheduled`` receiver raised
    IgnoreRequest (OffsiteMiddleware's, or the checkpoint's own), and the engine dropped it
    without a signal. Every receiver is called whatever the others do, so a receiver cannot
    tell. Wraps ``ExecutionEngine._schedule_request`` and the scheduler's ``enqueue_request``
    (Scrapy 2.13 to 2.19). A hook that raises is logged, never breaks the crawl. Raises
    RuntimeError on a Scrapy without them."""
    schedule = getattr(engine, "_schedule_request", None)
    scheduler: Any = getattr(getattr(engine, "_slot", None), "scheduler", None)
    enqueue = getattr(scheduler, "enqueue_request", None)
    if not callable(schedule) or not callable(enqueue):
        raise RuntimeError(
            "scrapy-checkpoint cannot see which requests the engine schedules in this Scrapy "
            "version (ExecutionEngine._schedule_request or the scheduler's enqueue_request is "
            "missing). Use Scrapy 2.13-2.19.")
    reached: list[Request | None] = [None]

    def enqueue_request(request: Request) -> bool:
        reached[0] = request
        return bool(enqueue(request))

    def schedule_request(request: Request) -> None:
        reached[0] = None
        schedule(request)
        if reached[0] is not request:
            try:
                on_refused(request)
            except Exception:
                logger.exception("scrapy-checkpoint failed to record a refused %s", request)

    scheduler.enqueue_request = enqueue_request
    engine._schedule_request = schedule_request


class ItemHooks(Protocol):
    """What the engine hooks tell about items (:class:`.deliveries.ItemTracking` is one)."""

    def prefix(self, request: Request, errback: bool) -> str:
        """Called once per callback or errback output, at its first item (``errback``: the
        output is an errback's)."""

    def yielded(self, item: Any, request: Request, prefix: str, n: int) -> bool:
        """``item`` is the ``n``-th item (0, 1...) of that output; False: drop it (it never
        reaches the pipelines)."""

    def from_start(self, item: Any) -> bool:
        """``item`` is the next item ``start()`` yielded; False: drop it (it never reaches
        the pipelines)."""

    def finished(self, item: Any, response: Any) -> None:
        """``item``'s processing by the pipelines ended (scraped, dropped or failed);
        ``response``: the one its callback had (None: an item of ``start()``)."""


def hook_spider_output(engine: Any, on_request: Callable[[Request, Request], None],
                       items: ItemHooks) -> None:
    """Call ``on_request(child, request)`` for every request a callback or errback of
    ``request`` yields, in the order it yields them, after the spider middlewares and before
    the engine schedules it; and ``items.yielded(item, request, prefix, n)`` for its ``n``-th
    item (anything else but None: the scraper sends it to the pipelines unless that returns
    False), ``prefix`` being ``items.prefix(request, errback)``, ``errback`` True for an
    errback's output (the scraper's ``call_spider_async`` called with a Failure, also through
    the spider middlewares: HttpError). ``on_request`` or ``items.prefix``
    raising is logged, never breaks the crawl (``items.yielded`` must not raise: it is called
    bare, per item). Raises RuntimeError on a Scrapy without
    ``ExecutionEngine.scraper.handle_spider_output_async``."""
    scraper: Any = getattr(engine, "scraper", None)
    handle = getattr(scraper, "handle_spider_output_async", None)
    if not callable(handle):
        raise RuntimeError(
            "scrapy-checkpoint cannot see what callbacks yield in this Scrapy version "
            "(ExecutionEngine.scraper.handle_spider_output_async is missing). "
            "Use Scrapy 2.13-2.19."
        )

    def seen(child: Request, request: Request) -> None:
        try:
            on_request(child, request)
        except Exception:
            logger.exception("scrapy-checkpoint failed to record where %s comes from", child)

    yielded = items.yielded
    # The requests whose errback is being called (the output that follows is the errback's).
    errbacks: WeakSet[Request] = WeakSet()
    call = getattr(scraper, "call_spider_async", None)
    if callable(call):
        async def call_spider_async(result: Any, request: Request) -> Any:
            if isinstance(result, Failure):
                errbacks.add(request)
            return await call(result, request)

        scraper.call_spider_async = call_spider_async

    def prefix_of(request: Request, errback: bool) -> str:
        try:
            return items.prefix(request, errback)
        except Exception:
            logger.exception("scrapy-checkpoint failed to number the items of %s", request)
            return "?"

    def each(result: Iterable[Any], request: Request, errback: bool) -> Iterable[Any]:
        prefix: str | None = None
        n = 0
        for out in result:
            if isinstance(out, Request):
                seen(out, request)
            elif out is not None:
                if prefix is None:
                    prefix = prefix_of(request, errback)
                n += 1
                if not yielded(out, request, prefix, n - 1):
                    continue
            yield out

    async def each_async(result: AsyncIterator[Any], request: Request,
                         errback: bool) -> AsyncIterator[Any]:
        prefix: str | None = None
        n = 0
        async for out in result:
            if isinstance(out, Request):
                seen(out, request)
            elif out is not None:
                if prefix is None:
                    prefix = prefix_of(request, errback)
                n += 1
                if not yielded(out, request, prefix, n - 1):
                    continue
            yield out

    async def handle_spider_output_async(result: Any, request: Request, response: Any) -> None:
        errback = isinstance(response, Failure) or request in errbacks
        errbacks.discard(request)
        if isinstance(result, AsyncIterator):
            await handle(each_async(result, request, errback), request, response)
        else:
            await handle(each(result, request, errback), request, response)

    scraper.handle_spider_output_async = handle_spider_output_async


#: The item of ``start()`` whose trip through the pipelines and ``item_*`` receivers runs
#: in this context (None for any other item): asyncio's tasks for the receivers copy it.
START_ITEM: ContextVar[Any] = ContextVar("scrapy_checkpoint_start_item", default=None)


def hook_item_processing(engine: Any, items: ItemHooks) -> None:
    """Call ``items.from_start(item)`` for every item ``start()`` yields, in its order, before
    the pipelines see it, and ``items.finished(item, response)`` when the pipelines are done
    with any item (the object the spider yielded, whatever a pipeline returned), after the
    ``item_scraped``, ``item_dropped`` or ``item_error`` signal. While an item of ``start()``
    is processed, :data:`START_ITEM` is that item (its receivers see it). Wraps the scraper's
    ``_start_itemproc_nowait`` and ``start_itemproc_async`` (Scrapy 2.14 to 2.19). A hook
    that raises is logged, never breaks the crawl. Raises RuntimeError on a Scrapy without
    them."""
    scraper: Any = getattr(engine, "scraper", None)
    from_start = getattr(scraper, "_start_itemproc_nowait", None)
    process = getattr(scraper, "start_itemproc_async", None)
    if not callable(from_start) or not callable(process):
        raise RuntimeError(
            "scrapy-checkpoint cannot see items reach the item pipelines in this Scrapy "
            "version (Scraper._start_itemproc_nowait or start_itemproc_async is missing). "
            "Use Scrapy 2.14-2.19.")

    def start_item(item: Any) -> None:
        try:
            if not items.from_start(item):
                return  # delivered by an earlier run
        except Exception:
            logger.exception("scrapy-checkpoint failed to number an item of start()")
        from_start(item)

    async def start_itemproc_async(item: Any, *, response: Any) -> None:
        token = START_ITEM.set(item) if response is None else None
        try:
            await process(item, response=response)
        finally:
            if token is not None:
                START_ITEM.reset(token)
            items.finished(item, response)

    scraper._start_itemproc_nowait = start_item
    scraper.start_itemproc_async = start_itemproc_async


def crawl_started(crawler: Any) -> bool:
    """True once ``crawler`` crawls with an engine (``crawler.engine`` raises before that)."""
    return bool(crawler.crawling) and getattr(crawler, "_engine", None) is not None


def wake(engine: Any) -> None:
    """Make the engine ask its scheduler for requests now. An idle engine kept open (a
    shared stage's worker) otherwise looks only every 5 s, at its heartbeat."""
    slot = getattr(engine, "_slot", None)
    nextcall = getattr(slot, "nextcall", None)
    if nextcall is not None:
        nextcall.schedule()


def callbacks_idle(engine: Any) -> bool:
    """True when no callback or errback is running or has output being processed (items in
    the pipelines included): every request whose callback started is done. Raises
    RuntimeError on a Scrapy without ``ExecutionEngine.scraper.slot.queue/active``."""
    slot = getattr(getattr(engine, "scraper", None), "slot", None)
    if slot is None:
        return True  # the spider is not open: no callback runs
    try:
        return not (slot.queue or slot.active)
    except AttributeError:
        raise RuntimeError(
            "scrapy-checkpoint cannot see which callbacks are running in this Scrapy version "
            "(ExecutionEngine.scraper.slot.queue/active are missing), so it cannot save "
            "spider.state safely. Use Scrapy 2.13-2.19."
        ) from None


def fail_at_stop(crawler: Any, exc: BaseException) -> None:
    """Make the crawl end with ``exc`` when its engine has stopped: Scrapy then counts the
    crawl as failed (``CrawlerProcess.bootstrap_failed``), and ``scrapy crawl`` or
    ``scrapy runspider`` exits with status 1 instead of 0. The spider is closed as usual
    first (its ``spider_closed`` handlers, the feeds, the stats); ``exc`` should be marked
    reported (:func:`.start_errors.mark_reported`) so no traceback is logged for it.

    ``start_async`` awaits ``_closewait``, whose first callback already passes its result to
    that await: the failing callback goes first in its chain (Twisted's ``callbacks`` list of
    (callback, errback) pairs), else the crawl ends as before, with status 0."""

    def engine_stopped() -> None:
        closewait = getattr(crawler.engine, "_closewait", None)
        chain = getattr(closewait, "callbacks", None)
        if isinstance(closewait, Deferred) and not closewait.called and isinstance(chain, list):
            chain.insert(0, ((_raise, (exc,), {}), (passthru, (), {})))

    crawler.signals.connect(engine_stopped, signal=signals.engine_stopped, weak=False)


def _raise(_: Any, exc: BaseException) -> None:
    raise exc
