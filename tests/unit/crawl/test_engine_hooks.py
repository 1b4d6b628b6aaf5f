"""The hooks on the engine's private request lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from scrapy import Request
from scrapy.core.scraper import Scraper

from scrapy_checkpoint.crawl.engine_hooks import (
    hook_item_processing,
    hook_refusals,
    hook_request_lifecycle,
    hook_spider_output,
    wake,
)


class ItemLog:
    """Records what the item hooks are told; drops the items whose ordinals are in ``drop``."""

    def __init__(self, drop: frozenset[int] | set[int] = frozenset()) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.drop = drop

    def prefix(self, request: Request, errback: bool) -> str:
        self.events.append(("prefix", request.url))
        return "e" if errback else "p"

    def yielded(self, item: Any, request: Request, prefix: str, n: int) -> bool:
        self.events.append(("yielded", item, prefix, n))
        return n not in self.drop

    def from_start(self, item: Any) -> bool:
        self.events.append(("start", item))
        return item != "delivered"  # an earlier run delivered it: dropped

    def finished(self, item: Any, response: Any) -> None:
        self.events.append(("finished", item))


class Slot:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.woken = 0
        self.nextcall = SimpleNamespace(schedule=self.wake)

    def add_request(self, request: Request) -> None:
        self.calls.append(("add", request.url))

    def remove_request(self, request: Request) -> None:
        self.calls.append(("remove", request.url))

    def wake(self) -> None:
        self.woken += 1


def test_the_hooks_run_around_the_slots_own_calls() -> None:
    slot = Slot()
    seen: list[tuple[str, str]] = []
    hook_request_lifecycle(SimpleNamespace(_slot=slot),
                           lambda r: seen.append(("start", r.url)),
                           lambda r: seen.append(("finish", r.url)))
    request = Request("http://127.0.0.1/a")
    slot.add_request(request)
    slot.remove_request(request)
    assert slot.calls == [("add", request.url), ("remove", request.url)]
    assert seen == [("start", request.url), ("finish", request.url)]


def test_a_failing_hook_is_logged_and_the_engine_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    slot = Slot()

    def fail(request: Request) -> None:
        raise ValueError("boom")

    hook_request_lifecycle(SimpleNamespace(_slot=slot), fail, fail)
    request = Request("http://127.0.0.1/b")
    slot.add_request(request)
    slot.remove_request(request)
    assert slot.calls == [("add", request.url), ("remove", request.url)]
    assert [r.getMessage() for r in caplog.records] == [
        f"scrapy-checkpoint failed to record the start of {request}",
        f"scrapy-checkpoint failed to record the end of {request}",
    ]


@pytest.mark.parametrize("engine", [SimpleNamespace(), SimpleNamespace(_slot=None),
                                    SimpleNamespace(_slot=SimpleNamespace(add_request=print))])
def test_an_engine_without_the_slot_methods_is_refused(engine: object) -> None:
    with pytest.raises(RuntimeError, match=r"add_request/remove_request are missing"):
        hook_request_lifecycle(engine, print, print)


def test_wake_schedules_the_next_call_when_there_is_one() -> None:
    slot = Slot()
    wake(SimpleNamespace(_slot=slot))
    assert slot.woken == 1
    wake(SimpleNamespace())  # no slot (the engine is closed): nothing to do


class FakeScraper:
    """What the hook wraps: ``handle_spider_output_async(result, request, response)``."""

    def __init__(self) -> None:
        self.handled: list[Any] = []

    async def handle_spider_output_async(self, result: Any, request: Request,
                                         response: Any) -> None:
        if isinstance(result, AsyncIterator):
            self.handled += [out async for out in result]
        else:
            self.handled += list(result)


def test_the_scraper_method_the_output_hook_wraps_exists() -> None:
    assert callable(getattr(Scraper, "handle_spider_output_async", None))


@pytest.mark.parametrize("kind", ["list", "generator", "async generator"])
def test_the_output_hook_sees_each_request_a_callback_yields_in_order(kind: str) -> None:
    parent = Request("http://127.0.0.1/parent")
    output = [Request("http://127.0.0.1/1"), {"item": 1}, Request("http://127.0.0.1/2"),
              {"item": 2}, None, {"item": 3}]
    scraper = FakeScraper()
    seen: list[tuple[str, str]] = []
    hook_spider_output(SimpleNamespace(scraper=scraper),
                       lambda child, request: seen.append((child.url, request.url)),
                       ItemLog(drop={1}))

    async def agen() -> AsyncIterator[Any]:
        for out in output:
            yield out

    result: Iterable[Any] | AsyncIterator[Any] = {
        "list": lambda: output, "generator": lambda: iter(output), "async generator": agen,
    }[kind]()
    asyncio.run(scraper.handle_spider_output_async(result, parent, None))
    assert scraper.handled == [out for out in output if out != {"item": 2}]  # item 1 dropped
    assert seen == [("http://127.0.0.1/1", parent.url), ("http://127.0.0.1/2", parent.url)]


def test_a_failing_output_hook_is_logged_and_the_output_goes_on(
    caplog: pytest.LogCaptureFixture
) -> None:
    scraper = FakeScraper()

    def fail(child: Request, request: Request) -> None:
        raise ValueError("boom")

    class FailingPrefix(ItemLog):
        def prefix(self, request: Request, errback: bool) -> str:
            raise ValueError("boom")

    hook_spider_output(SimpleNamespace(scraper=scraper), fail, FailingPrefix())
    child, parent = Request("http://127.0.0.1/c"), Request("http://127.0.0.1/p")
    asyncio.run(scraper.handle_spider_output_async([child, {"a": 1}], parent, None))
    assert scraper.handled == [child, {"a": 1}]
    assert [r.getMessage() for r in caplog.records] == [
        f"scrapy-checkpoint failed to record where {child} comes from",
        f"scrapy-checkpoint failed to number the items of {parent}"]


def test_an_engine_without_the_scraper_method_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"handle_spider_output_async is missing"):
        hook_spider_output(SimpleNamespace(scraper=None), print, ItemLog())


def test_refusals_are_the_requests_that_reach_neither_scheduler_nor_drop() -> None:
    """As ExecutionEngine._schedule_request: a receiver's IgnoreRequest returns before the
    scheduler; otherwise the scheduler takes the request, or refuses it (request_dropped)."""
    refused_by_receiver = {"http://127.0.0.1/offsite"}
    enqueued: list[str] = []

    class Engine:
        def __init__(self) -> None:
            self._slot = SimpleNamespace(scheduler=SimpleNamespace(enqueue_request=self.enqueue))

        def enqueue(self, request: Request) -> bool:
            enqueued.append(request.url)
            return not request.url.endswith("dup")

        def _schedule_request(self, request: Request) -> None:
            if request.url in refused_by_receiver:
                return
            self._slot.scheduler.enqueue_request(request)

        def crawl(self, request: Request) -> None:
            self._schedule_request(request)

    engine = Engine()
    refused: list[str] = []
    hook_refusals(engine, lambda r: refused.append(r.url))
    for url in ("http://127.0.0.1/a", "http://127.0.0.1/offsite", "http://127.0.0.1/dup"):
        engine.crawl(Request(url))
    assert refused == ["http://127.0.0.1/offsite"]
    assert enqueued == ["http://127.0.0.1/a", "http://127.0.0.1/dup"]


def test_scrapys_engine_schedules_through_the_methods_the_refusal_hook_wraps() -> None:
    import inspect

    from scrapy.core.engine import ExecutionEngine

    assert "self._schedule_request(" in inspect.getsource(ExecutionEngine.crawl)
    source = inspect.getsource(ExecutionEngine._schedule_request)
    assert "IgnoreRequest" in source
    assert ".scheduler.enqueue_request(" in source


@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_the_output_hook_numbers_the_items_of_each_output_from_zero(kind: str) -> None:
    parent = Request("http://127.0.0.1/parent")
    output = [{"a": 1}, Request("http://127.0.0.1/1"), None, {"b": 2}, "text"]
    scraper = FakeScraper()
    log = ItemLog()
    hook_spider_output(SimpleNamespace(scraper=scraper), lambda child, request: None, log)

    async def agen() -> AsyncIterator[Any]:
        for out in output:
            yield out

    for _ in range(2):
        result = iter(output) if kind == "generator" else agen()
        asyncio.run(scraper.handle_spider_output_async(result, parent, None))
    once = [("prefix", parent.url), ("yielded", {"a": 1}, "p", 0),
            ("yielded", {"b": 2}, "p", 1), ("yielded", "text", "p", 2)]
    assert log.events == once + once  # requests and None are not items
    assert scraper.handled == output + output


def test_the_processing_hook_numbers_start_items_and_ends_every_item_even_on_failure() -> None:
    log = ItemLog()

    class Scraper:
        def __init__(self) -> None:
            self.started: list[Any] = []

        def _start_itemproc_nowait(self, item: Any) -> None:
            self.started.append(item)

        async def start_itemproc_async(self, item: Any, *, response: Any) -> Any:
            if item == "bad":
                raise ValueError("pipeline bug")
            return {"other": "object"}  # a pipeline may hand on another object

    scraper = Scraper()
    hook_item_processing(SimpleNamespace(scraper=scraper), log)
    scraper._start_itemproc_nowait("delivered")
    scraper._start_itemproc_nowait("s0")
    asyncio.run(scraper.start_itemproc_async("good", response=None))
    with pytest.raises(ValueError, match="pipeline bug"):
        asyncio.run(scraper.start_itemproc_async("bad", response=None))
    assert scraper.started == ["s0"]  # the item delivered before never reaches the pipelines
    assert log.events == [("start", "delivered"), ("start", "s0"), ("finished", "good"),
                          ("finished", "bad")]


def test_the_scraper_methods_the_processing_hook_wraps_exist() -> None:
    import inspect

    from scrapy.core.engine import ExecutionEngine

    assert callable(getattr(Scraper, "start_itemproc_async", None))
    assert callable(getattr(Scraper, "_start_itemproc_nowait", None))
    assert "self.start_itemproc_async(" in inspect.getsource(Scraper._process_spidermw_output_async)
    assert "_start_itemproc_nowait(" in inspect.getsource(ExecutionEngine)


def test_an_errbacks_output_is_told_apart_from_a_callbacks() -> None:
    """The errback's items are numbered apart: through the scraper's call_spider_async with a
    Failure (as the spider middlewares call it for an HttpError, with a Response passed on),
    or with the Failure itself passed to handle_spider_output_async."""
    from scrapy.http import Response
    from twisted.python.failure import Failure

    class Scraper(FakeScraper):
        async def call_spider_async(self, result: Any, request: Request) -> Any:
            return [{"from": "errback" if isinstance(result, Failure) else "callback"}]

    scraper, log = Scraper(), ItemLog()
    hook_spider_output(SimpleNamespace(scraper=scraper), lambda child, request: None, log)
    request = Request("http://127.0.0.1/p")
    response = Response(request.url, request=request)
    failure = Failure(ValueError("no"))

    async def through(result: Any, passed: Any) -> None:
        output = await scraper.call_spider_async(result, request)
        await scraper.handle_spider_output_async(output, request, passed)

    asyncio.run(through(response, response))  # a callback
    asyncio.run(through(failure, response))  # an errback behind the spider middlewares
    asyncio.run(scraper.handle_spider_output_async([{"x": 1}], request, failure))  # download error
    asyncio.run(through(response, response))  # a callback again: the mark does not stay
    prefixes = [event[2] for event in log.events if event[0] == "yielded"]
    assert prefixes == ["p", "e", "e", "p"]
