"""One background thread per checkpoint for the blocking I/O (fsync, atomic
state writes, snapshots), so the caller's thread (an event loop, the Twisted
reactor) never waits on the disk. Tasks run in submission order."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("scrapy_checkpoint")


class BackgroundIO:
    """A single worker thread (made on first use) running blocking disk tasks in order.

    A task's failure is kept (and logged at DEBUG: whoever drives the checkpoint
    reports it once); :meth:`raise_error`, :meth:`drain` and :meth:`close` raise the
    first one (once).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self.error: BaseException | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``fn(*args)`` after every task submitted before (at interpreter exit,
        when the thread is gone, run it now on this thread)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"checkpoint-io-{self._name}")
        try:
            future = self._pool.submit(fn, *args)
        except RuntimeError:  # interpreter exit: the pool is gone, do it here
            future = Future()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
        future.add_done_callback(self._record_error)
        return future

    def _record_error(self, future: Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            logger.debug("Checkpoint I/O failed for %s: %s", self._name, exc)
            if self.error is None:
                self.error = exc

    def drain(self) -> None:
        """Wait for every task submitted so far; re-raise the first failure."""
        if self._pool is not None:
            # At interpreter exit the pool is shut down and has run everything.
            with contextlib.suppress(RuntimeError):
                self._pool.submit(lambda: None).result()
        self.raise_error()

    def raise_error(self) -> None:
        """Raise the first failure of a task, if any (then forget it)."""
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc

    def close(self) -> None:
        """Wait for the queued tasks, stop the thread, raise the first failure. A later
        :meth:`submit` starts a new thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.raise_error()
