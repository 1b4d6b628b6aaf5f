"""EnhancedCheckpoint: the lifecycle, counters, skip logic and save policy of one stage.

Knows nothing of Scrapy, Twisted or asyncio: the tracker and the Scrapy
extension drive it. All disk waits (fsync, atomic state writes, snapshots)
happen on its background I/O thread; the caller's thread only appends
committed groups to the journal with ``os.write``.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import inspect
import logging
import os
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from .clock import monotonic, utcnow, walltime
from .config import CheckpointConfig
from .errors import CheckpointError, ConfigError, InputChangedError
from .io import BackgroundIO
from .journal.groups import encode_group
from .journal.keys import UnitKey, key_code
from .journal.snapshot import encode_snapshot
from .live import LiveState
from .metrics import Metrics, RateWindow
from .state import ACTIVE_STATUSES, CheckpointState, Owner, Status, check_transition
from .stores import open_store
from .stores.base import JournalWriter, Lock, Store, check_stage_name

logger = logging.getLogger("scrapy_checkpoint")

Hook = Callable[..., Any]
HOOK_EVENTS = ("start", "progress", "complete", "failure")


def file_hash(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class EnhancedCheckpoint:
    """Crash-safe progress of one stage.

    >>> cp = EnhancedCheckpoint("data/checkpoints", "stage2")   # doctest: +SKIP
    >>> cp.start(total_items=len(rows), input_file="rows.csv")  # doctest: +SKIP
    >>> for i, row in enumerate(rows):                          # doctest: +SKIP
    ...     if cp.should_skip(i):
    ...         continue
    ...     handle(row)
    ...     cp.update(processed=1, successful=1, index=i)
    >>> cp.complete(); cp.close()                               # doctest: +SKIP

    Options are the fields of :class:`~scrapy_checkpoint.config.CheckpointConfig`.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] = "checkpoints",
        stage: str | None = None,
        *,
        config: CheckpointConfig | None = None,
        backend: str | None = None,
        store: Store | None = None,
        on_start: Hook | None = None,
        on_progress: Hook | None = None,
        on_complete: Hook | None = None,
        on_failure: Hook | None = None,
        **options: Any,
    ) -> None:
        self.config = CheckpointConfig.from_options(config, **options)
        self._owns_store = store is None
        self.store: Store = (store if store is not None
                             else open_store(_backend_location(backend, checkpoint_dir)))
        self.stage: str | None = check_stage_name(stage) if stage is not None else None
        self._hooks: dict[str, list[Hook]] = {name: [] for name in HOOK_EVENTS}
        for name, fn in (("start", on_start), ("progress", on_progress),
                         ("complete", on_complete), ("failure", on_failure)):
            if fn is not None:
                self._hooks[name].append(fn)
        self._hook_tasks: set[asyncio.Task[Any]] = set()
        self._live: LiveState | None = None
        self._lock: Lock | None = None
        self._writer: JournalWriter | None = None
        self._io: BackgroundIO | None = None
        self._generation = 0
        self._snapshot_bytes = 0
        self._running = False
        self._started = False
        # The group being built: committed to the journal as one record.
        self._g_done: list[int] = []
        self._g_failed: list[int] = []
        self._g_fields: dict[str, Any] = {}
        self._g_counts = [0, 0, 0, 0]
        self._g_updates = 0
        self._g_added: list[list[Any]] = []
        self._g_started: list[int] = []
        self._g_handed: list[int] = []
        self._commit_hooks: list[Callable[[], dict[str, Any] | None]] = []
        self._sync_hooks: list[Callable[[], list[int]]] = []
        self._latencies: deque[float] = deque(maxlen=4096)
        now = monotonic()
        self._last_commit = now
        self._last_sync = now
        self._last_state = now
        self._dirty = False
        self._since_snapshot = False  # groups appended since the last snapshot
        self._sync_inflight = False
        self._rate = RateWindow(self.config.throughput_window)
        self._next_log = 0
        self._warned_duplicate = False
        #: Units found already done by :meth:`should_skip` in this process.
        self.resumed_skips = 0
        #: Bytes of damaged journal dropped when the stage was opened.
        self.dropped_bytes = 0
        self._created = False
        self._restored_from_state: CheckpointState | None = None
        self._log_lines = True

    # -- reading ---------------------------------------------------------------------

    @property
    def live(self) -> LiveState:
        if self._live is None:
            raise CheckpointError("The checkpoint is not open: call start() first.")
        return self._live

    @property
    def state(self) -> CheckpointState:
        """The current state (including updates not yet committed)."""
        m = self.metrics()
        state = self.live.to_state(throughput=m.throughput, eta_seconds=m.eta_seconds)
        state.commit_latency_us = self.commit_latency_us()
        return state

    @property
    def status(self) -> Status:
        return self.live.info.status

    @property
    def metadata(self) -> dict[str, Any]:
        """Stage-specific data; change it with :meth:`set_metadata`."""
        return dict(self.live.info.metadata)

    def metrics(self) -> Metrics:
        live = self.live
        start = live.info.progress.start_time
        elapsed = (utcnow() - start).total_seconds() if start else 0.0
        return Metrics(
            total=live.info.progress.total_items,
            processed=live.processed,
            successful=live.successful,
            failed=live.failed,
            skipped=live.skipped,
            throughput=self._rate.rate(monotonic(), live.processed),
            elapsed_seconds=elapsed,
        )

    def progress_line(self) -> str:
        return self.metrics().progress_line()

    def log_progress(self) -> None:
        logger.info("[%s] %s", self.stage, self.progress_line())

    def should_skip(self, index_or_key: UnitKey) -> bool:
        """True if this unit was finished (successfully or not) by any earlier run."""
        if key_code(index_or_key) in self.live.done:
            self.resumed_skips += 1
            return True
        return False

    def is_done(self, index_or_key: UnitKey) -> bool:
        """Like :meth:`should_skip`, without counting a skip."""
        return key_code(index_or_key) in self.live.done

    def is_stale(self, max_age_hours: float | None = None) -> bool:
        """True if the stage has not been updated for ``max_age_hours`` (default: ``ttl_hours``)."""
        hours = self.config.ttl_hours if max_age_hours is None else max_age_hours
        return self.state.updated_at < utcnow() - timedelta(hours=hours)

    def validate_input_file(self, path: str | os.PathLike[str]) -> tuple[bool, str]:
        """Compare ``path`` with the input file the checkpoint was made with."""
        try:
            digest = file_hash(path)
        except OSError as exc:
            return False, f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}"
        recorded = self.live.info.input_file_hash
        if recorded is None:
            return True, "no input file hash recorded yet"
        if digest != recorded:
            return False, f"content hash {digest[:19]}... differs from recorded {recorded[:19]}..."
        return True, "unchanged"

    # -- lifecycle ------------------------------------------------------------------------

    def open(self, stage: str | None = None) -> None:
        """Take the stage's lock and load its state. ``start()`` calls this for you.

        Raises :class:`CheckpointLockedError` (nothing written) if a live process owns it.
        """
        if self._live is not None:
            return
        if stage is not None:
            self.stage = check_stage_name(stage)
        if self.stage is None:
            raise CheckpointError("No stage given: pass it to EnhancedCheckpoint(...) or start().")
        stage = self.stage
        store = self.store
        lock = store.lock(stage, Owner.current())
        try:
            loaded = store.load(stage)
            live = LiveState.from_loaded(stage, loaded)
            _, state_problems = store.read_state(stage)
            for problem in state_problems:
                logger.warning("Stage %s: state file %s", stage, problem)
            if (loaded.snapshot is None and not loaded.payloads):
                previous, _ = store.read_state(stage)
                if previous is not None:
                    logger.warning(
                        "Stage %s: its journal is missing; counters come from the state file "
                        "and finished units will be redone.", stage)
                    live = LiveState(previous)
                    self._restored_from_state = previous
            for problem in loaded.problems:
                logger.warning("Stage %s: %s", stage, problem)
            if loaded.dropped_bytes or loaded.unreachable:
                store.set_aside(stage, loaded)
            self.dropped_bytes = loaded.dropped_bytes
            self._writer = store.open_segment(stage, loaded.generation, truncate_at=loaded.good_bytes,
                                              buffered=self.config.durability == "none")
        except BaseException:
            lock.release()
            raise
        self._lock, self._live = lock, live
        self._generation, self._snapshot_bytes = loaded.generation, loaded.snapshot_bytes
        self._io = BackgroundIO(stage)
        self._created = loaded.exists
        if self._restored_from_state is not None:
            self._record({"init": self._restored_from_state.model_dump(mode="json")})
        _close_at_exit(self)

    def start(
        self,
        stage: str | None = None,
        total_items: int | None = None,
        input_file: str | os.PathLike[str] | None = None,
        output_file: str | os.PathLike[str] | None = None,
        *,
        reset: bool = False,
        retry_failed: bool = False,
    ) -> CheckpointState:
        """Open the stage and mark it running, resuming whatever an earlier run left.

        A stage found ``running`` (its process died) is logged, moved to
        ``recovering`` and resumed. ``reset=True`` starts over; ``retry_failed=True``
        makes units that finished with a failure run again.
        """
        if self._running:
            return self.state
        self.open(stage)
        stage = self.stage
        assert stage is not None
        live = self.live
        in_hash = None
        if input_file is not None:
            in_hash = file_hash(input_file)
            recorded = live.info.input_file_hash
            if not reset and self._created and recorded is not None and recorded != in_hash:
                raise InputChangedError(stage, os.fspath(input_file),
                                        f"hash {in_hash[:19]}... != recorded {recorded[:19]}...")
        if reset and self._created:
            self._reset_stage()
            live = self.live
        if not self._created:
            self._record({"init": CheckpointState(stage=stage).model_dump(mode="json")})
            self._created = True
            live = self.live
        previous = live.info.status
        if previous in ACTIVE_STATUSES:
            logger.warning("Detected incomplete checkpoint for %s. Resuming from %d items "
                           "(%d done, %d pending, %d failed).", stage, live.processed,
                           len(live.done), len(live.pending), live.failed)
            self._set_status(Status.RECOVERING, rec=live.info.recoveries + 1)
        elif previous in (Status.PAUSED, Status.FAILED):
            logger.info("Resuming %s stage %s from %d items.", previous.value, stage, live.processed)
        elif previous is Status.COMPLETED:
            logger.info("Stage %s was completed; running it again: its %d finished units are "
                        "skipped (reset to start over).", stage, len(live.done))
        fields: dict[str, Any] = {"own": Owner.current().model_dump(mode="json")}
        if total_items is not None:
            fields["t"] = int(total_items)
        if input_file is not None:
            fields["in"] = [os.fspath(input_file), in_hash]
        if output_file is not None:
            fields["out"] = os.fspath(output_file)
        if live.info.progress.start_time is None:
            fields["start"] = walltime()
        if retry_failed and live.failed_units:
            n = len(live.failed_units)
            fields["rf"] = sorted(live.failed_units)
            fields["c"] = [-n, 0, -n, 0]
            logger.info("Stage %s: %d failed units will run again.", stage, n)
        self._record(fields)
        self._set_status(Status.RUNNING)
        self._started = True
        self._rate.add(monotonic(), live.processed)
        every = self.config.log_every
        self._next_log = (live.processed // every + 1) * every if every else 0
        self._emit("start")
        return self.state

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
        """Record progress; with ``index`` or ``key`` also mark that unit done.

        Returns False (and changes nothing) if the unit was already done.
        A unit with ``failed`` and no ``successful`` is done-with-failure.
        """
        unit = key if key is not None else index
        code = None if unit is None else key_code(unit)
        return self.finish_unit(code, processed, successful, failed, skipped, last_item, index,
                                batch_id)

    def finish_unit(
        self,
        code: int | None,
        processed: int = 0,
        successful: int = 0,
        failed: int = 0,
        skipped: int = 0,
        last_item: Any = None,
        index: int | None = None,
        batch_id: Any = None,
    ) -> bool:
        """:meth:`update` for a unit given by its code (see :func:`key_code`)."""
        if not self._running:
            raise CheckpointError(f"Stage {self.stage!r} is not running: call start() first.")
        live = self._live
        assert live is not None
        if code is not None:
            done = live.done
            if code in done:
                if not self._warned_duplicate:
                    self._warned_duplicate = True
                    logger.warning("Stage %s: a unit (%s) was already done; repeated updates of "
                                   "a unit are ignored.", self.stage, last_item or index or code)
                return False
            done.add_new(code)
            if failed and not successful:
                live.failed_units[code] = live.pending.pop(code, None)
                live.started.discard(code)
                self._g_failed.append(code)
            else:
                if live.pending:
                    live.pending.pop(code, None)
                    live.started.discard(code)
                self._g_done.append(code)
        if processed or successful or failed or skipped:
            live.processed += processed
            live.successful += successful
            live.failed += failed
            live.skipped += skipped
            g = self._g_counts
            g[0] += processed
            g[1] += successful
            g[2] += failed
            g[3] += skipped
        if last_item is not None:
            live.last_item = last_item if isinstance(last_item, str) else str(last_item)
        if index is not None:
            live.last_index = index
        if batch_id is not None:
            live.batch_id = str(batch_id)
        self._g_updates += 1
        now = monotonic()
        if self._g_updates >= self.config.save_every or now - self._last_commit >= self.config.save_interval:
            self._commit(now)
        if self._next_log and live.processed >= self._next_log:
            every = self.config.log_every
            self._next_log = (live.processed // every + 1) * every
            if self._log_lines:
                self.log_progress()
            self._emit("progress")
        return True

    def add_unit(self, code: int, payload: Any) -> None:
        """Record a new pending unit with what is needed to redo it (JSON-serialisable)."""
        live = self.live
        if code in live.done or code in live.pending:
            return
        live.pending[code] = payload
        self._g_added.append([code, payload])

    def hand_off(self, codes: list[int]) -> None:
        """Pending units given to another process (a shared stage's worker): no longer
        pending here, and not done either. Recorded with the next commit."""
        live = self.live
        for code in codes:
            if code in live.pending:
                del live.pending[code]
                live.started.discard(code)
                self._g_handed.append(code)

    def start_unit(self, code: int) -> None:
        """Record that a pending unit was handed to a worker (it is in flight)."""
        live = self.live
        if code in live.pending and code not in live.started:
            live.started.add(code)
            self._g_started.append(code)

    def add_commit_hook(self, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Call ``fn()`` before each group is written; the fields it returns join the group.

        The Scrapy integration flushes its durable outputs here and records their
        lengths, so a group never names output bytes that are not written yet.
        """
        self._commit_hooks.append(fn)

    def add_sync_hook(self, fn: Callable[[], list[int]]) -> None:
        """``fn()`` returns file descriptors to fsync before each journal fsync, so a
        journaled output length is never on disk before the output's bytes."""
        self._sync_hooks.append(fn)

    def record_output(self, path: str, base: int, length: int) -> None:
        """Record a durable output file's starting and committed length, and commit now."""
        self._record({"fo": {path: [base, length]}})
        self._commit(monotonic())

    @property
    def journal_bytes(self) -> int | None:
        """Bytes in the current journal segment (None when the checkpoint is not open)."""
        return self._writer.size if self._writer is not None else None

    def commit_latency_us(self) -> dict[str, int] | None:
        """p50/p95/p99 of recent group commits (hooks + encode + write), in microseconds."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return {f"p{q}": round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)] * 1e6)
                for q in (50, 95, 99)}

    def set_total(self, total_items: int) -> None:
        self._record({"t": int(total_items)})

    def set_metadata(self, **values: Any) -> None:
        """Merge JSON-serialisable ``values`` into the stage's metadata."""
        merged = {**self.live.info.metadata, **values}
        self._record({"m": merged})

    def record_error(self, error: BaseException | str) -> None:
        """Count an error and keep its message and time (the status is unchanged)."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        count = self.live.info.error_count + 1
        self._record({"e": [message, count, walltime()]})

    def complete(self) -> None:
        self._set_status(Status.COMPLETED)
        logger.info("[%s] Completed. %s", self.stage, self.progress_line())
        self._emit("complete")

    def fail(self, error: BaseException | str) -> None:
        self.record_error(error)
        self._set_status(Status.FAILED)
        logger.error("[%s] Failed: %s", self.stage, self.live.info.error_message)
        self._emit("failure", error)

    def pause(self) -> None:
        self._set_status(Status.PAUSED)
        logger.info("[%s] Paused; run again to resume. %s", self.stage, self.progress_line())

    def save(self, force: bool = False) -> None:
        """Commit buffered updates now; with ``force`` also rewrite the state file and
        wait until everything is on disk (this blocks: the tracker runs that part in a
        worker thread)."""
        self._commit(monotonic())
        if force:
            self.request_durable()
            self.drain_io()

    def request_durable(self) -> None:
        """Commit, and queue a state-file write and an fsync (does not wait)."""
        self._commit(monotonic())
        self._write_state()
        self._sync(force=True)

    def drain_io(self) -> None:
        """Block until the queued disk work is done; re-raise its first failure."""
        if self._io is not None:
            self._io.drain()

    def disable_progress_log(self) -> None:
        """Stop the periodic progress log line (a progress bar shows it instead);
        ``on_progress`` hooks still run."""
        self._log_lines = False

    def tick(self) -> None:
        """Timer work: commit, fsync and refresh the state file when due. Cheap when nothing is."""
        if self._live is None or self._writer is None:
            return
        now = monotonic()
        if now - self._last_commit >= self.config.save_interval:
            self._commit(now)
        self._maybe_sync(now)
        if now - self._last_state >= self.config.state_interval:
            self._write_state()
        if now - self._rate.last_sample >= 1.0:
            self._rate.add(now, self.live.processed)

    def close(self) -> None:
        """Commit, snapshot, write the state file, wait for the disk, release the lock.

        A stage still running is left ``paused`` (it resumes on the next start).
        """
        if self._live is None or self._writer is None:
            return
        try:
            if self._running:
                self.pause()
            self._commit(monotonic())
            if self._since_snapshot:
                self._compact()
            self._write_state()
            assert self._io is not None
            self._io.drain()
            self._writer.fsync()
        finally:
            self._writer.close()
            self._writer = None
            if self._io is not None:
                self._io.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            self._live = None
            closer = getattr(self.store, "close", None)
            if self._owns_store and closer is not None:
                closer()

    def __enter__(self) -> EnhancedCheckpoint:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self._running:
            if isinstance(exc, Exception):
                self.fail(exc)
            else:
                self.pause()
        self.close()

    # -- hooks -------------------------------------------------------------------------------

    def on(self, event: str, fn: Hook) -> None:
        """Register ``fn(checkpoint)`` (``fn(checkpoint, error)`` for ``failure``), sync or async."""
        if event not in self._hooks:
            raise ValueError(f"Unknown hook {event!r}; use one of {', '.join(HOOK_EVENTS)}.")
        self._hooks[event].append(fn)

    def _emit(self, event: str, *args: Any) -> None:
        for fn in self._hooks[event]:
            try:
                result = fn(self, *args)
                if inspect.isawaitable(result):
                    self._run_awaitable(result)
            except Exception:
                logger.exception("Stage %s: %s hook %r failed", self.stage, event, fn)

    def _run_awaitable(self, result: Awaitable[Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_as_coro(result))
            return
        task = loop.create_task(_as_coro(result))
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)

    async def wait_hooks(self) -> None:
        """Await async hooks still running (the tracker does this on exit)."""
        while self._hook_tasks:
            await asyncio.gather(*list(self._hook_tasks), return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------

    def _record(self, fields: dict[str, Any]) -> None:
        """Apply ``fields`` to the live state and add them to the current group."""
        self.live.apply([], [], fields)
        g = self._g_fields
        if "c" in fields:
            c = fields["c"]
            for i in range(4):
                self._g_counts[i] += c[i]
            fields = {k: v for k, v in fields.items() if k != "c"}
        if "init" in fields:
            self._g_fields = g = {}
            self._g_done.clear()
            self._g_failed.clear()
            self._g_added.clear()
            self._g_started.clear()
            self._g_counts = [0, 0, 0, 0]
        g.update(fields)

    def _set_status(self, new: Status, **extra: Any) -> None:
        live = self.live
        assert self.stage is not None
        check_transition(self.stage, live.info.status, new)
        fields: dict[str, Any] = {"st": new.value}
        if "rec" in extra:
            fields["rec"] = extra["rec"]
        self._record(fields)
        self._running = new is Status.RUNNING
        self._commit(monotonic())
        self._write_state()
        self._sync(force=True)

    def _commit(self, now: float) -> None:
        writer = self._writer
        if writer is None:
            return
        fields = self._g_fields
        counts = self._g_counts
        if not (self._g_updates or fields or self._g_done or self._g_failed or any(counts)
                or self._g_added or self._g_started or self._g_handed):
            return
        if self._io is not None:
            self._io.raise_error()  # a failed fsync or snapshot must stop the run, not hide
        began = monotonic()
        live = self.live
        for hook in self._commit_hooks:
            extra = hook()
            if extra:
                live.apply([], [], extra)  # so snapshots carry it too
                fields.update(extra)
        if self._g_added:
            fields["a"] = self._g_added
            self._g_added = []
        if self._g_started:
            fields["s"] = self._g_started
            self._g_started = []
        if self._g_handed:
            fields["h"] = self._g_handed
            self._g_handed = []
        if any(counts):
            fields["c"] = counts
        if self._g_updates:
            fields["l"], fields["i"], fields["b"] = live.last_item, live.last_index, live.batch_id
        ts = walltime()
        fields["ts"] = ts
        live.updated_ts = ts
        payload = encode_group(self._g_done, self._g_failed, fields)
        # Detach the group first: if the append fails, it must not be sent again with the next.
        self._g_done, self._g_failed, self._g_fields = [], [], {}
        self._g_counts = [0, 0, 0, 0]
        self._g_updates = 0
        writer.append(payload)
        self._last_commit = now
        self._latencies.append(monotonic() - began)
        self._dirty = True
        self._since_snapshot = True
        if now - self._rate.last_sample >= 1.0:
            self._rate.add(now, live.processed)
        self._maybe_sync(now)
        if now - self._last_state >= self.config.state_interval:
            self._write_state()
        if writer.size > max(self.config.compact_min_bytes, self._snapshot_bytes):
            self._compact()

    def _maybe_sync(self, now: float) -> None:
        if (self._dirty and not self._sync_inflight and self.config.durability == "fsync"
                and now - self._last_sync >= self.config.sync_interval):
            self._sync()

    def _sync(self, force: bool = False) -> None:
        """Hand buffered frames to the OS and queue an fsync (in ``fsync`` mode or forced)."""
        writer, io = self._writer, self._io
        if writer is None or io is None:
            return
        writer.flush()
        self._dirty = False
        self._last_sync = monotonic()
        if self.config.durability == "fsync" or force:
            self._sync_inflight = True
            fds = [fd for hook in self._sync_hooks for fd in hook()]
            future = io.submit(_sync_all, fds, writer)
            future.add_done_callback(lambda _: setattr(self, "_sync_inflight", False))

    def _write_state(self) -> None:
        if self._io is None or self.stage is None:
            return
        self._last_state = monotonic()
        data = self.state.model_dump_json(indent=2).encode()
        self._io.submit(self.store.write_state, self.stage, data)

    def _compact(self) -> None:
        """Write a snapshot of everything committed and start a new journal segment."""
        writer, io, live = self._writer, self._io, self.live
        assert writer is not None
        assert io is not None
        assert self.stage is not None
        gen = self._generation + 1
        # Only the copies are made here; encoding and checksums run on the I/O thread.
        header, done_bytes = live.snapshot_header(gen), live.done.to_bytes()
        writer.flush()
        self._writer = self.store.open_segment(self.stage, gen, truncate_at=None,
                                               buffered=self.config.durability == "none")
        self._generation, self._snapshot_bytes = gen, len(done_bytes)
        self._since_snapshot = False
        io.submit(self._finish_compaction, writer, self._writer, gen, header, done_bytes)

    def _finish_compaction(self, old: JournalWriter, new: JournalWriter, gen: int,
                           header: dict[str, Any], done_bytes: bytes) -> None:
        # Runs on the I/O thread, in order: the old segment is durable, then the
        # snapshot; only then may retention delete what the snapshot replaces.
        assert self.stage is not None
        blob = encode_snapshot(header, done_bytes)
        if old is not new:  # a store with one journal (Redis) keeps its writer
            old.fsync()
            old.close()
        self.store.write_snapshot(self.stage, gen, blob)
        self.store.retain(self.stage, self.config.keep_snapshots)

    def _reset_stage(self) -> None:
        assert self.stage is not None
        assert self._writer is not None
        assert self._io is not None
        logger.info("Stage %s: reset, starting over.", self.stage)
        self._io.drain()
        self._writer.close()
        self.store.remove(self.stage)
        self._live = LiveState(CheckpointState(stage=self.stage))
        self._generation, self._snapshot_bytes = 0, 0
        self._writer = self.store.open_segment(self.stage, 0, truncate_at=0,
                                               buffered=self.config.durability == "none")
        self._g_done, self._g_failed, self._g_fields = [], [], {}
        self._g_counts, self._g_updates = [0, 0, 0, 0], 0
        self._g_added, self._g_started = [], []
        self._created = False


def _backend_location(backend: str | None, checkpoint_dir: Any) -> Any:
    if backend is None or backend == "file":
        return checkpoint_dir
    if backend in ("redis", "rediss") or "://" not in backend:
        raise ConfigError(f"Unknown backend {backend!r}: use 'file' or a Redis URL such as "
                          f"redis://127.0.0.1:6379/0.")
    return backend


def _sync_all(fds: list[int], writer: JournalWriter) -> None:
    """Outputs first, then the journal, in one task: a length journaled before the last
    fsync is on disk with the bytes it names (between fsyncs the OS may write either first)."""
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:  # closed meanwhile (a closed feed): already synced
            if exc.errno != 9:
                raise
    writer.sync()


async def _as_coro(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


_open_checkpoints: weakref.WeakSet[EnhancedCheckpoint] = weakref.WeakSet()


def _close_at_exit(cp: EnhancedCheckpoint) -> None:
    _open_checkpoints.add(cp)


@atexit.register
def _close_all() -> None:
    # A normal interpreter exit must not lose buffered updates.
    for cp in list(_open_checkpoints):
        try:
            cp.close()
        except Exception:
            logger.exception("Closing checkpoint %s at exit failed", cp.stage)


__all__ = ["EnhancedCheckpoint", "file_hash"]
