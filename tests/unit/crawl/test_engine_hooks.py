"""The hooks on the engine's private request lifecycle."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from scrapy import Request

from scrapy_checkpoint.crawl.engine_hooks import hook_request_lifecycle, wake


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
