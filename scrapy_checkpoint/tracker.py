"""AsyncCheckpointTracker: crash-safe progress for an asyncio stage.

Imports neither Scrapy nor Twisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .bar import ProgressBar, is_terminal
from .checkpoint import EnhancedCheckpoint
from .config import CheckpointConfig
from .durability import timer_period
from .errors import CheckpointError, CheckpointWriteError, WorkerDiskFullError, is_disk_full
from .journal.keys import UnitKey
from .metrics import Metrics
from .state import CheckpointState, Status
from .stores import cli_command
from .stores.base import Store

logger = logging.getLogger("scrapy_checkpoint")

#: Failed items :meth:`AsyncCheckpointTracker.map` logs one line each in a run (with
#: ``on_error="record"``); later ones are counted, and the last error is in the state.
LOGGED_FAILURES = 20

#: The line that stands for the traceback of a Ctrl-C that paused a stage.
INTERRUPTED = ("Interrupted: the checkpoint is saved; run the same command again to resume "
               "where it stopped.")

T = TypeVar("T")


@dataclass
class MapResult:
    """What one :meth:`AsyncCheckpointTracker.map` call did in this run."""

    succeeded: int = 0
    failed: int = 0
    #: Items already finished by an earlier run, not run again.
    skipped: int = 0


class AsyncCheckpointTracker(Generic[T]):
    """Wraps an asyncio processing loop so a crash loses nothing and redoes nothing finished.

    >>> async with AsyncCheckpointTracker("data/checkpoints", "stage3") as tracker:  # doctest: +SKIP
    ...     tracker.start(total_items=len(rows), input_file="rows.jsonl")
    ...     for i, row in enumerate(rows):
    ...         if tracker.should_skip(i):
    ...             continue
    ...         await handle(row)
    ...         tracker.update(processed=1, successful=1, last_item=row["id"], index=i)

    Leaving the block normally marks the stage ``completed``; an exception marks it
    ``failed`` (and is re-raised); cancellation, Ctrl-C or ``SystemExit`` marks it
    ``paused``. If the checkpoint cannot be written (a full disk: ``update()`` raises
    :class:`~scrapy_checkpoint.errors.CheckpointWriteError`), nothing more is recorded:
    the stage is left at its last commit, as after a crash, and the error propagates.
    Subclasses may override :meth:`on_success` and :meth:`on_failure`.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] = "checkpoints",
        stage: str = "default",
        *,
        config: CheckpointConfig | None = None,
        backend: str | None = None,
        store: Store | None = None,
        progress_bar: bool | None = None,
        **options: Any,
    ) -> None:
        try:
            self.checkpoint = EnhancedCheckpoint(checkpoint_dir, stage, config=config,
                                                 backend=backend, store=store, **options)
        except CheckpointError:  # a bad stage name or option: its message says what to do
            _quiet_uncaught()
            raise
        self.stage = stage
        self._progress_bar = is_terminal(sys.stderr) if progress_bar is None else progress_bar
        self._bar: ProgressBar | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._log_handler: logging.Handler | None = None

    # -- the context manager ----------------------------------------------------------

    async def __aenter__(self) -> AsyncCheckpointTracker[T]:
        self._log_handler = _show_log_if_unconfigured()
        # Taking the lock and replaying the journal read files: keep them off the loop.
        try:
            await asyncio.to_thread(self.checkpoint.open)
        except BaseException as exc:
            _remove_handler(self._log_handler)
            self._log_handler = None
            if isinstance(exc, CheckpointError):  # locked, damaged, unreachable: said in full
                _quiet_uncaught()
            raise
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        cp = self.checkpoint
        try:
            if isinstance(exc, WorkerDiskFullError) and cp.running:  # stopped, not broken
                _quiet_uncaught()
                cp.pause()
            elif cp.write_failure is not None and exc is not None:  # nothing more recorded
                _quiet_uncaught()  # the program ends with the error's paragraph alone
                if isinstance(exc, Exception):
                    await self.on_failure(exc)
            elif cp.running:
                if exc is None:
                    cp.complete()
                    await self.on_success()
                elif isinstance(exc, Exception):
                    cp.fail(exc)
                    await self.on_failure(exc)
                else:  # cancelled, Ctrl-C, SystemExit: stopped, not broken
                    cp.pause()
                    if not isinstance(exc, SystemExit):
                        _quiet_uncaught()
            await cp.wait_hooks()
        except CheckpointWriteError:  # raised by the last commits (complete, fail, pause)
            _quiet_uncaught()
            raise
        finally:
            self._stop_bar()
            try:
                await asyncio.to_thread(cp.abandon if cp.write_failure is not None
                                        else cp.close)
            except CheckpointWriteError:  # the close's own commits could not be recorded
                _quiet_uncaught()
                raise
            finally:
                _remove_handler(self._log_handler)
                self._log_handler = None
        return False

    async def on_success(self) -> None:
        """Called after the stage is marked completed. Override in a subclass."""

    async def on_failure(self, error: BaseException) -> None:
        """Called after the stage is marked failed. Override in a subclass."""

    # -- the loop's calls (synchronous and cheap) ------------------------------------------

    def start(
        self,
        total_items: int | None = None,
        input_file: str | os.PathLike[str] | None = None,
        output_file: str | os.PathLike[str] | None = None,
        *,
        reset: bool = False,
        retry_failed: bool = False,
    ) -> CheckpointState:
        """Mark the stage running; see :meth:`EnhancedCheckpoint.start`."""
        try:
            state = self.checkpoint.start(None, total_items, input_file, output_file,
                                          reset=reset, retry_failed=retry_failed)
        except CheckpointError:  # input changed, a lost checkpoint, a bad total: said in full
            _quiet_uncaught()
            raise
        if self._progress_bar:
            self._start_bar()
        return state

    def should_skip(self, index_or_key: UnitKey) -> bool:
        """See :meth:`EnhancedCheckpoint.should_skip`."""
        return self.checkpoint.should_skip(index_or_key)

    def update(
        self,
        processed: int = 0,
        successful: int = 0,
        failed: int = 0,
        skipped: int = 0,
        last_item: Any = None,
        index: int | None = None,
        key: UnitKey | None = None,
        batch_id: Any = None,
    ) -> bool:
        """See :meth:`EnhancedCheckpoint.update`."""
        return self.checkpoint.update(processed, successful, failed, skipped, last_item, index,
                                      key, batch_id)

    def set_metadata(self, **values: Any) -> None:
        """See :meth:`EnhancedCheckpoint.set_metadata`."""
        self.checkpoint.set_metadata(**values)

    def record_error(self, error: BaseException | str) -> None:
        """See :meth:`EnhancedCheckpoint.record_error`."""
        self.checkpoint.record_error(error)

    @property
    def state(self) -> CheckpointState:
        """The current state (see :attr:`EnhancedCheckpoint.state`)."""
        return self.checkpoint.state

    @property
    def status(self) -> Status:
        """The stage's status."""
        return self.checkpoint.status

    def metrics(self) -> Metrics:
        """See :meth:`EnhancedCheckpoint.metrics`."""
        return self.checkpoint.metrics()

    def print_progress(self) -> None:
        """Print the progress line now."""
        print(f"[{self.stage}] {self.checkpoint.progress_line()}", flush=True)

    async def save(self, force: bool = False) -> None:
        """Commit buffered updates; with ``force`` wait until they are on disk (off the loop)."""
        self.checkpoint.save()
        if force:
            self.checkpoint.request_durable()
            await asyncio.to_thread(self.checkpoint.drain_io)

    # -- the common case ---------------------------------------------------------------------

    async def map(
        self,
        worker: Callable[[T], Awaitable[Any]],
        items: Iterable[T] | AsyncIterable[T],
        *,
        concurrency: int = 10,
        key: Callable[[T], UnitKey] | None = None,
        on_error: Literal["record", "raise"] = "record",
    ) -> MapResult:
        """Run ``await worker(item)`` for every item not finished before, ``concurrency`` at a time.

        Units are keyed by ``key(item)`` or, without ``key``, by position. An item
        whose worker raises is recorded as failed (``on_error="record"``: a WARNING line
        names the item and the exception, for the first :data:`LOGGED_FAILURES` of a run,
        then one line says how many more are only counted) or stops
        the run (``"raise"``: no new item starts, the items in flight finish and are
        recorded, then the exception propagates; the failed item runs again next
        time). Starts the stage if ``start()`` was not called.
        """
        cp = self.checkpoint
        if not cp.running:
            total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
            self.start(total_items=total)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        result = MapResult()
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []
        #: The checkpoint could not record an item (a full disk, its directory deleted):
        #: no new item starts (its work would be done and not recorded), and map raises it.
        unrecorded: list[CheckpointError] = []
        done_before = len(cp.live.done)
        repeated = [0]  # items that ran with the key of an item done meanwhile (not counted)

        def record(index: int, unit: UnitKey, exc: Exception | None) -> None:
            if exc is None:
                if not cp.update(processed=1, successful=1, last_item=unit, index=index,
                                 key=unit):
                    repeated[0] += 1
                result.succeeded += 1
                return
            cp.record_error(exc)
            if not cp.update(processed=1, failed=1, last_item=unit, index=index, key=unit):
                repeated[0] += 1
            result.failed += 1
            if result.failed <= LOGGED_FAILURES:
                logger.warning("[%s] Item %r failed: %s: %s", self.stage, unit,
                               type(exc).__name__, exc)
                if result.failed == LOGGED_FAILURES:
                    command = cli_command(cp.store, f"show {self.stage}")
                    logger.warning("[%s] Further failures are counted, not logged; %s has "
                                   "the count and the last error.", self.stage,
                                   f"`{command}`" if command else "the stage's state")

        async def run_one(index: int, item: T, unit: UnitKey) -> None:
            try:
                failure: Exception | None = None
                try:
                    await worker(item)
                except Exception as exc:
                    if is_disk_full(exc):  # not the item's fault: it runs again next time
                        unrecorded.append(_worker_disk_full(self.stage, unit, exc))
                        return
                    if on_error == "raise":
                        errors.append(exc)
                        return
                    failure = exc
                record(index, unit, failure)
            except CheckpointError as exc:
                unrecorded.append(exc)
            finally:
                slots.release()

        try:
            async for index, item in _enumerate(items):
                unit: UnitKey = key(item) if key is not None else index
                if cp.should_skip(unit):
                    result.skipped += 1
                    continue
                await slots.acquire()
                if errors or unrecorded:
                    slots.release()
                    break
                task = asyncio.ensure_future(run_one(index, item, unit))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException:
            pending = list(tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        if unrecorded:
            raise unrecorded[0]
        if errors:
            raise errors[0]
        _warn_shared_keys(self.stage, repeated[0], result.skipped - done_before)
        return result

    # -- timers and the progress bar -----------------------------------------------------------

    async def _tick_forever(self) -> None:
        cfg = self.checkpoint.config
        period = timer_period(cfg)
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(CheckpointWriteError):  # the next update() raises it
                self.checkpoint.tick()
            if self._bar is not None:
                self._refresh_bar()

    def _start_bar(self) -> None:
        if self._bar is not None:
            return
        self.checkpoint.disable_progress_log()
        self._bar = ProgressBar(self.stage)
        self._bar.start(self.checkpoint.metrics())

    def _refresh_bar(self) -> None:
        if self._bar is not None:
            self._bar.update(self.checkpoint.metrics())

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop(self.checkpoint.metrics())
            self._bar = None


def _show_log_if_unconfigured() -> logging.Handler | None:
    """When the program configured no logging at all (no handler on the root logger or on
    ``scrapy_checkpoint``, no level set), show the checkpoint's INFO lines (progress, resume,
    completion, failures) on stderr as a command-line tool would: Python alone would show
    WARNING and above only, and nothing of the progress. Returns the handler added (None:
    logging is the program's)."""
    if logger.handlers or logger.level != logging.NOTSET or logging.getLogger().handlers:
        return None
    if sys.stderr is None:  # started with stderr closed: there is nowhere to show them
        return None
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def _remove_handler(handler: logging.Handler | None) -> None:
    """Undo :func:`_show_log_if_unconfigured`."""
    if handler is not None:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _worker_disk_full(stage: str, unit: UnitKey, exc: BaseException) -> WorkerDiskFullError:
    return WorkerDiskFullError(
        f"Item {unit!r} of stage {stage!r} could not be done, a disk is full: "
        f"{type(exc).__name__}: {exc}. It is not recorded as failed, and no item after it "
        f"was started (those already running finished); the stage is paused with everything "
        f"done before kept. Free disk space, then run the same command again to resume: the "
        f"items not done run then.")


def _quiet_uncaught() -> None:
    """The program's end, when the exception that left a tracker's block is not caught: a
    Ctrl-C that paused a stage prints :data:`INTERRUPTED`, a checkpoint that could not be
    written (:class:`~scrapy_checkpoint.errors.CheckpointWriteError`) its one paragraph
    (what happened, what is kept, what to do), another CheckpointError (a stage locked,
    damaged or lost, a changed input: raised entering the block or by ``start()``) as
    ``ClassName: message``, each instead of a traceback through the program and this
    package. Other exceptions, and any the program catches, are untouched;
    the exit status stays what Python gives them (130 for Ctrl-C, 1 otherwise)."""
    previous = sys.excepthook
    if getattr(previous, "_scrapy_checkpoint", False):
        return

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            print(INTERRUPTED, file=sys.stderr, flush=True)
            return
        if issubclass(exc_type, CheckpointWriteError):
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            return
        if issubclass(exc_type, CheckpointError):  # its message says what to do
            print(f"{exc_type.__name__}: {exc}", file=sys.stderr, flush=True)
            return
        previous(exc_type, exc, tb)

    excepthook._scrapy_checkpoint = True  # type: ignore[attr-defined]
    sys.excepthook = excepthook


def _warn_shared_keys(stage: str, repeated: int, skipped: int) -> None:
    """Say that items of one map shared keys: ``repeated`` ran after an item with their key
    was done (their update changed nothing); more items were skipped (``skipped``) than
    units were done before the map, so at least that many were skipped for a key done by
    another item of the same map, without running. Each key must name one item."""
    skipped = max(skipped, 0)
    if repeated or skipped:
        logger.warning(
            "[%s] %d item(s) of this map had the key of another item of it, so their work was "
            "not done or not counted (%d skipped without running, %d ran and were not "
            "counted): key(item) must give each item its own key.", stage, repeated + skipped,
            skipped, repeated)


async def _enumerate(items: Iterable[T] | AsyncIterable[T]) -> Any:
    index = 0
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield index, item
            index += 1
    else:
        for item in items:
            yield index, item
            index += 1


__all__ = ["AsyncCheckpointTracker", "MapResult"]
