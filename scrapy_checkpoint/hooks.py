"""User hooks of a checkpoint: functions called when a stage starts, progresses,
completes or fails. Sync or async; a failing hook is logged, never raised."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import EnhancedCheckpoint

logger = logging.getLogger("scrapy_checkpoint")

#: ``fn(checkpoint)`` or, for ``failure``, ``fn(checkpoint, error)``; may return an awaitable.
Hook = Callable[..., Any]
#: The events, in the order a stage meets them: ``progress`` every ``log_every`` items.
HOOK_EVENTS = ("start", "progress", "complete", "failure")


class Hooks:
    """The hooks registered for each event, and the async ones still running.

    An async hook runs as a task of the running event loop (:meth:`wait` awaits
    those still running), or, outside any loop, to completion at once with
    :func:`asyncio.run`.
    """

    def __init__(self, **first: Hook | None) -> None:
        """``first`` maps events to a first hook each (None: none), e.g. ``start=fn``."""
        self._hooks: dict[str, list[Hook]] = {name: [] for name in HOOK_EVENTS}
        self._tasks: set[asyncio.Task[Any]] = set()
        for event, fn in first.items():
            if fn is not None:
                self.on(event, fn)

    def on(self, event: str, fn: Hook) -> None:
        """Register ``fn`` for ``event`` (one of :data:`HOOK_EVENTS`, else ValueError)."""
        if event not in self._hooks:
            raise ValueError(f"Unknown hook {event!r}; use one of {', '.join(HOOK_EVENTS)}.")
        self._hooks[event].append(fn)

    def emit(self, event: str, checkpoint: EnhancedCheckpoint, *args: Any) -> None:
        """Call ``fn(checkpoint, *args)`` for each hook of ``event``, in registration
        order; an exception is logged (with the stage's name) and the next hook runs."""
        for fn in self._hooks[event]:
            try:
                result = fn(checkpoint, *args)
                if inspect.isawaitable(result):
                    self._run_awaitable(result)
            except Exception:
                logger.exception("Stage %s: %s hook %r failed", checkpoint.stage, event, fn)

    def _run_awaitable(self, result: Awaitable[Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_as_coro(result))
            return
        task = loop.create_task(_as_coro(result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Await the async hooks still running (their exceptions are not raised)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _as_coro(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


__all__ = ["HOOK_EVENTS", "Hook", "Hooks"]
