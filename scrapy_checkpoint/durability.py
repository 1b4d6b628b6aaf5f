"""When committed work becomes durable: one cadence for the tracker and the crawl.

:class:`GroupCommitter` owns a stage's journal writer and its background I/O
thread. Group commits, fsyncs, state-file writes and compactions are all due by
time or size; whoever drives a checkpoint (the asyncio tracker, the Scrapy
extension) calls :meth:`~scrapy_checkpoint.checkpoint.EnhancedCheckpoint.tick`
every :func:`timer_period` seconds so none of them waits longer than its
interval when updates stop arriving.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from .clock import monotonic, walltime
from .config import CheckpointConfig
from .errors import CheckpointError, CheckpointWriteError
from .io import BackgroundIO
from .journal.groups import COMMITTED_AT, GroupBuilder, check_fields, encode_group
from .journal.snapshot import snapshot_parts
from .live import LiveState
from .metrics import ProgressLog
from .state import CheckpointState, state_json
from .stores.base import JournalWriter, Loaded, Store

logger = logging.getLogger("scrapy_checkpoint")

#: Upper bounds (seconds) of the commit-latency histogram's buckets: Prometheus's default
#: buckets (``prometheus_client.Histogram.DEFAULT_BUCKETS``) from 0.5 ms up.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)

#: The timer never runs more often than this (seconds): a tick is cheap, not free.
MIN_TIMER_PERIOD = 0.05

_F = TypeVar("_F", bound=Callable[..., Any])


class CommitLatencies:
    """Durations of this process's group commits (hooks, encoding, write), in seconds: the
    last 4,096 for percentiles, and all of them by bucket (:data:`LATENCY_BUCKETS`)."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=4096)
        #: One count per LATENCY_BUCKETS bound, then one above them all.
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0

    def add(self, seconds: float) -> None:
        """One more commit that took ``seconds``."""
        self._recent.append(seconds)
        self._buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum += seconds

    def percentiles_us(self) -> dict[str, int] | None:
        """p50/p95/p99 of the recent commits, in microseconds; None before the first."""
        if not self._recent:
            return None
        ordered = sorted(self._recent)
        return {f"p{q}": round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)] * 1e6)
                for q in (50, 95, 99)}

    def histogram(self) -> dict[str, Any] | None:
        """Every commit by duration (see
        :attr:`~scrapy_checkpoint.state.CheckpointState.commit_latency_histogram`); None
        before the first."""
        if not any(self._buckets):
            return None
        cumulative, running = [], 0
        for n in self._buckets:
            running += n
            cumulative.append(running)
        return {"le": list(LATENCY_BUCKETS), "counts": cumulative[:-1], "count": running,
                "sum_seconds": round(self._sum, 6)}


def _stops_on_write_error(method: _F) -> _F:
    """Raise an OSError (or CheckpointWriteError) met by ``method`` as the
    CheckpointWriteError the job stops with (see :attr:`GroupCommitter.failure`)."""

    @functools.wraps(method)
    def wrapper(self: GroupCommitter, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OSError, CheckpointWriteError) as exc:
            raise self._write_error(exc) from None

    return cast(_F, wrapper)


def timer_period(config: CheckpointConfig) -> float:
    """Seconds between two ticks of a checkpoint's timer.

    Half the shortest of ``save_interval``, ``sync_interval`` and 1 s, and at least
    :data:`MIN_TIMER_PERIOD`: a commit or fsync that falls due waits at most half
    its interval more (1.0 s intervals, the defaults, give 0.5 s).
    """
    return max(MIN_TIMER_PERIOD, min(config.save_interval, config.sync_interval, 1.0) / 2)


class GroupCommitter:
    """Group commit for one stage: writes the group being built to the journal and
    decides when what was written is fsynced, summed up in the state file and
    compacted into a snapshot.

    The caller's thread only encodes a group and appends it (``os.write``, or one
    Redis call); every wait on the disk (fsync, the atomic state-file write, the
    snapshot) runs on the background I/O thread, in submission order. A failure
    there is raised by the next :meth:`commit` (or :meth:`drain`).

    A write that fails (a full disk, an I/O error, the directory deleted or replaced, a
    file that is a link) raises :class:`~scrapy_checkpoint.errors.CheckpointWriteError`
    from whichever method met it, and is kept in :attr:`failure` until a later commit
    reaches the journal again. What was committed before is kept, and the file store's
    journal is never left with a torn record that later groups would sit behind (its
    writer keeps the group it could not write and writes it first next time).

    ``progress`` gives the state file's content, and its throughput window is sampled
    with the processed count at most once a second, at commits and ticks. The
    checkpoint reads :attr:`group` and :attr:`last_commit` on its update path and
    calls :meth:`commit` when the group is due.
    """

    def __init__(self, config: CheckpointConfig, store: Store, progress: ProgressLog) -> None:
        self.config = config
        self.store = store
        #: The group being built: committed to the journal as one record.
        self.group = GroupBuilder()
        #: Monotonic time of the last commit (a group is due ``save_interval`` after it).
        self.last_commit = monotonic()
        #: The stage journaled (None until :meth:`open`).
        self.stage: str | None = None
        self._progress = progress
        self._rate = progress.rate
        self._live: LiveState | None = None
        self._writer: JournalWriter | None = None
        self._io: BackgroundIO | None = None
        self._generation = 0
        self._snapshot_bytes = 0
        self._commit_hooks: list[Callable[[], dict[str, Any] | None]] = []
        self._sync_hooks: list[Callable[[], list[int]]] = []
        self._gate: Callable[[], bool] | None = None
        self._latencies = CommitLatencies()
        self._last_sync = self.last_commit
        self._last_state = self.last_commit
        self._dirty = False  # groups appended since the last sync
        self._since_snapshot = False  # groups appended since the last snapshot
        self._sync_inflight = False
        #: The write failure raised last, until a commit reaches the journal again (None
        #: while writes succeed). Set, the job must stop (a crawl does at once).
        self.failure: CheckpointWriteError | None = None
        #: A failed fsync (the OS may have dropped what it could not write): every later
        #: commit is refused, the job must stop.
        self._fsync_failed: BaseException | None = None

    def _write_error(self, exc: OSError | CheckpointWriteError) -> CheckpointWriteError:
        """``exc``, met while writing, as the error the job stops with (kept in
        :attr:`failure`)."""
        if isinstance(exc, CheckpointWriteError):
            error = type(exc)(*exc.args)  # a short traceback: from the caller's call
        else:
            error = write_error(self.stage, self.store.location, exc, buffered=self._buffered)
        self.failure = error
        return error

    # -- opening and closing -----------------------------------------------------------

    def open(self, stage: str, live: LiveState, loaded: Loaded) -> None:
        """Append to ``stage``'s journal where ``loaded`` (what replay read) ends.

        Errors from :meth:`Store.open_segment` propagate, with nothing opened.
        """
        self._writer = self.store.open_segment(stage, loaded.generation,
                                               truncate_at=loaded.good_bytes, buffered=self._buffered)
        self.stage, self._live = stage, live
        self._generation, self._snapshot_bytes = loaded.generation, loaded.snapshot_bytes
        self._io = BackgroundIO(stage)
        self._attach_reader()

    def _attach_reader(self) -> None:
        """Read the pending units' request records through the store, including those the
        writer still holds."""
        assert self._live is not None
        assert self.stage is not None
        self._live.pending.reader = self.store.request_reader(self.stage, self._writer)

    @property
    def live(self) -> LiveState:
        """The stage's state in memory. Raises CheckpointError unless open."""
        if self._live is None:
            raise CheckpointError("The checkpoint is not open: call start() first.")
        return self._live

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._writer is not None

    def start_over(self) -> LiveState:
        """Delete everything the store holds for the stage and journal again from
        generation 0 (the caller holds the stage's lock). Returns the new, empty state."""
        assert self.stage is not None
        assert self._writer is not None
        assert self._io is not None
        self._io.drain()
        self._writer.close()
        self.store.remove(self.stage)
        self._live = LiveState(CheckpointState(stage=self.stage))
        self._generation, self._snapshot_bytes = 0, 0
        self._writer = self.store.open_segment(self.stage, 0, truncate_at=0, buffered=self._buffered)
        self._attach_reader()
        self.group.clear()
        self.group.updates = 0
        return self._live

    @_stops_on_write_error
    def put_request(self, code: int, data: bytes) -> int:
        """Write the request record of pending unit ``code`` (``data``: what redoes it) with
        the next group; returns its ref. Raises as :meth:`commit`."""
        writer = self._writer
        if writer is None:
            raise CheckpointError("The checkpoint is not open: call start() first.")
        return writer.put_request(code, data)

    @_stops_on_write_error
    def finish(self) -> None:
        """Commit, snapshot what the journal holds past the last snapshot, write the
        state file, wait for the I/O thread and fsync: all on disk when it returns.
        Re-raises the first failure of the I/O thread."""
        self.commit(monotonic())
        if self._since_snapshot:
            self.compact()
        self.write_state()
        assert self._io is not None
        assert self._writer is not None
        self._io.drain()
        self._writer.fsync()
        waiting = getattr(self._writer, "backlog", 0)  # groups a store could not be sent yet
        if waiting:
            raise CheckpointWriteError(
                f"Cannot record the end of stage {self.stage!r}: {self.store.location} is "
                f"unreachable, and the last {waiting} journal group(s) of this run (its last "
                f"updates and its status) never reached it. They are not in the checkpoint: "
                f"the next run finds the stage as it was at its last recorded commit and does "
                f"their units again. Bring the store back, then run the same command again.")

    def close(self) -> None:
        """Close the journal writer and stop the I/O thread (without committing: call
        :meth:`finish` first). Does nothing if not open. Everything is released even if a
        write fails; a failure not raised before is raised then (what the writer still
        held is dropped, as if the process had died)."""
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        error: OSError | CheckpointWriteError | None = None
        try:
            writer.close()
        except (OSError, CheckpointWriteError) as exc:
            error = exc
        if self._io is not None:
            try:
                self._io.close()
            except (OSError, CheckpointWriteError) as exc:
                error = error or exc
        self._live = None
        if error is not None and self.failure is None:
            raise self._write_error(error) from None

    # -- hooks and readings ---------------------------------------------------------------

    def add_commit_hook(self, fn: Callable[[], dict[str, Any] | None]) -> None:
        """See :meth:`~scrapy_checkpoint.checkpoint.EnhancedCheckpoint.add_commit_hook`."""
        self._commit_hooks.append(fn)

    def set_commit_gate(self, fn: Callable[[], bool] | None) -> None:
        """See :meth:`~scrapy_checkpoint.checkpoint.EnhancedCheckpoint.set_commit_gate`."""
        self._gate = fn

    def add_sync_hook(self, fn: Callable[[], list[int]]) -> None:
        """See :meth:`~scrapy_checkpoint.checkpoint.EnhancedCheckpoint.add_sync_hook`."""
        self._sync_hooks.append(fn)

    @property
    def journal_bytes(self) -> int | None:
        """Bytes in the current journal segment (None when not open)."""
        return self._writer.size if self._writer is not None else None

    def commit_latency_histogram(self) -> dict[str, Any] | None:
        """See :meth:`CommitLatencies.histogram`."""
        return self._latencies.histogram()

    def commit_latency_us(self) -> dict[str, int] | None:
        """See :meth:`CommitLatencies.percentiles_us`."""
        return self._latencies.percentiles_us()

    # -- the cadence ---------------------------------------------------------------------------

    @_stops_on_write_error
    def commit(self, now: float, *, due: bool = False) -> None:
        """Write the group being built to the journal, if it holds anything (``now``:
        monotonic seconds). Then fsync, write the state file or compact if one is due.

        ``due``: a commit the cadence asks for (size or time), which the commit gate (see
        :meth:`set_commit_gate`) may put off; other commits (status changes, close) are
        never put off. Raises the I/O thread's first failure, and whatever the writer's
        append raises (the group is dropped then, never sent twice).
        """
        writer = self._writer
        if writer is None:
            return
        group = self.group
        if group.is_empty():
            return
        if due and self._gate is not None and not self._gate():
            return  # the group grows on; the next update or tick asks again
        self._refuse_after_fsync_failure()
        if self._io is not None:
            self._io.raise_error()  # a failed fsync or snapshot must stop the run, not hide
        began = monotonic()
        live = self._live
        assert live is not None
        for hook in self._commit_hooks:
            extra = hook()
            if extra:
                try:  # a value replay would refuse must never reach the journal
                    check_fields(extra)
                except ValueError as exc:
                    raise CheckpointError(
                        f"Stage {self.stage!r}: a commit hook gave a value the journal cannot "
                        f"hold ({exc}); nothing of it was written.") from None
                live.apply([], [], extra)  # so snapshots carry it too
                group.add_fields(extra)
        committed_at = walltime()
        live.updated_ts = committed_at
        payload = group.seal((live.last_item, live.last_index, live.batch_id), committed_at)
        live.done.now = int(committed_at)  # as replay does (LiveState.apply)
        writer.append(payload)
        self.failure = None
        self.last_commit = now
        self._latencies.add(monotonic() - began)
        self._dirty = True
        self._since_snapshot = True
        if now - self._rate.last_sample >= self._rate.EVERY:
            self._rate.add(now, live.processed)
        self.maybe_sync(now)
        if now - self._last_state >= self.config.state_interval:
            self.write_state()
        if writer.size > max(self.config.compact_min_bytes, self._snapshot_bytes):
            self.compact()

    @_stops_on_write_error
    def tick(self) -> None:
        """Timer work: commit, fsync and refresh the state file when due; sample the rate.
        Cheap when nothing is due; does nothing when not open."""
        if self._live is None or self._writer is None:
            return
        now = monotonic()
        if now - self.last_commit >= self.config.save_interval:
            self.commit(now, due=True)
        self.maybe_sync(now)
        if now - self._last_state >= self.config.state_interval:
            self.write_state()
        if now - self._rate.last_sample >= self._rate.EVERY:
            self._rate.add(now, self._live.processed)

    @_stops_on_write_error
    def write_fields(self, fields: dict[str, Any]) -> None:
        """Journal ``fields`` now as a group of their own, apart from the group being built
        (which may be waiting for the commit gate). The caller has applied them to the live
        state; they must not depend on the units of the group being built."""
        writer = self._writer
        if writer is None:
            return
        self._refuse_after_fsync_failure()
        if self._io is not None:
            self._io.raise_error()
        writer.append(encode_group([], [], {**fields, COMMITTED_AT: walltime()}))
        self.failure = None
        self._dirty = True
        self._since_snapshot = True

    @_stops_on_write_error
    def make_durable(self) -> None:
        """Commit, and queue a state-file write and an fsync (does not wait for them)."""
        self.commit(monotonic())
        self.write_state()
        self.sync(force=True)

    @_stops_on_write_error
    def drain(self) -> None:
        """Block until the queued disk work is done; re-raise its first failure."""
        if self._io is not None:
            self._io.drain()

    def maybe_sync(self, now: float) -> None:
        """In ``fsync`` durability, queue an fsync if groups were appended and none was
        queued for ``sync_interval`` seconds (``now``: monotonic seconds)."""
        if (self._dirty and not self._sync_inflight and self.config.durability == "fsync"
                and now - self._last_sync >= self.config.sync_interval):
            self.sync()

    @_stops_on_write_error
    def sync(self, force: bool = False) -> None:
        """Hand buffered frames to the OS and queue an fsync (in ``fsync`` mode or forced).

        The sync hooks' file descriptors are fsynced first, in the same I/O task.
        """
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
            future.add_done_callback(self._sync_done)

    def _sync_done(self, future: Any) -> None:
        self._sync_inflight = False
        if future.exception() is not None:
            self._fsync_failed = future.exception()

    def _refuse_after_fsync_failure(self) -> None:
        if self._fsync_failed is not None:
            raise CheckpointWriteError(
                f"An fsync of the checkpoint of stage {self.stage!r} failed "
                f"({self._fsync_failed}): what it held may not be on disk, so nothing more is "
                f"recorded. Fix the disk, then run the same command again to resume.")

    def write_state(self) -> None:
        """Queue a write of the state file (its bytes are made now, on this thread)."""
        if self._io is None or self.stage is None:
            return
        self._last_state = monotonic()
        state = self._progress.state(self.live, self.commit_latency_us())
        state.commit_latency_histogram = self.commit_latency_histogram()
        data = state_json(state)
        self._io.submit(self.store.write_state, self.stage, data.encode())

    @_stops_on_write_error
    def compact(self) -> None:
        """Start a new journal segment and queue a snapshot of everything committed."""
        writer, io, live = self._writer, self._io, self._live
        assert writer is not None
        assert io is not None
        assert live is not None
        assert self.stage is not None
        gen = self._generation + 1
        header, done_bytes = live.snapshot_header(gen), live.done.to_bytes()
        times_bytes = live.done.times_bytes()
        # The frontier's arrays are lent, not copied (a million pending units are 32 MB):
        # the store takes the snapshot's bytes here, on this thread, before they change
        # (fsync and rename run on the I/O thread). Taken before the new segment is
        # opened: if they cannot be (a full disk), nothing has changed.
        pending_parts = live.pending.to_parts(copy=False)
        size = len(done_bytes) + len(times_bytes or b"") + sum(map(len, pending_parts))
        try:
            staged = self.store.stage_snapshot(self.stage, gen, snapshot_parts(
                header, done_bytes, times_bytes, pending_parts))
        finally:
            _release(pending_parts)
        try:
            writer.flush()
            self._writer = self.store.open_segment(self.stage, gen, truncate_at=None,
                                                   buffered=self._buffered)
        except BaseException:
            self.store.discard_snapshot(staged)
            raise
        freed = live.pending.take_freed()
        self._attach_reader()
        # The next compaction is due once the journal outgrows this snapshot: the bytes
        # written per unit stay constant however large the frontier grows.
        self._generation = gen
        self._snapshot_bytes = size
        self._since_snapshot = False
        io.submit(self._finish_compaction, writer, self._writer, gen, staged, freed)

    def _finish_compaction(self, old: JournalWriter, new: JournalWriter, gen: int,
                           staged: Any, freed: Sequence[int]) -> None:
        # Runs on the I/O thread, in order: the old segment is durable, then the
        # snapshot; only then may retention delete what the snapshot replaces.
        assert self.stage is not None
        if old is not new:  # a store with one journal (Redis) keeps its writer
            try:
                old.fsync()
            except OSError as exc:
                self._fsync_failed = exc
                self.store.discard_snapshot(staged)
                raise
            old.close()
        self.store.write_snapshot(self.stage, gen, staged, freed)
        self.store.retain(self.stage, self.config.keep_snapshots)

    @property
    def _buffered(self) -> bool:
        return self.config.durability == "none"


def _release(parts: list[bytes | memoryview]) -> None:
    """Give back the memory ``parts`` lent (the arrays can grow again)."""
    for part in parts:
        if isinstance(part, memoryview):
            part.release()


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


__all__ = ["MIN_TIMER_PERIOD", "GroupCommitter", "timer_period"]


def write_error(stage: str | None, location: object, exc: OSError, *,
                buffered: bool = False) -> CheckpointWriteError:
    """The error a job stops with when writing its checkpoint (in ``location``, the store's)
    or one of its outputs failed with ``exc``: what could not be written, why, and what to do.
    ``buffered``: the journal's groups are buffered in the process (``durability="none"``),
    so the last ones committed may not have reached the disk and are lost with the job."""
    what = exc.strerror or str(exc)
    own = not exc.filename or _inside(str(exc.filename), location)
    written = (f"the checkpoint of stage {stage!r} ({exc.filename or location})" if own
               else f"{str(exc.filename)!r}, an output of stage {stage!r}")
    fix = _fix(exc.errno, what, "the checkpoint directory" if own else "the output's directory")
    kept = ("Everything committed before is kept" if not buffered else
            "What reached the disk before is kept, but with durability 'none' the last "
            "commits still buffered in this process (up to 1 MiB) are lost: their units run "
            "again")
    return CheckpointWriteError(
        f"Cannot write {written}: {what}. {kept}; {fix}, then run the same command again "
        f"to resume.")


def _fix(code: int | None, what: str, where: str) -> str:
    """What to do about a write that failed with ``code`` in ``where``."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space"
    if "not a regular file" in what:
        return "move it away"
    if code == errno.EROFS:
        return (f"{where} is on a read-only file system: remount it read-write or use a "
                f"directory on a writable one")
    if code in (errno.EACCES, errno.EPERM):
        return (f"make {where} (and each directory above it) writable and searchable for this "
                f"user, run as its owner, or use a directory this user may create and write")
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a directory: use another directory"
    if code == errno.ENOENT:
        return f"create {where} (or a missing directory above it), or use another directory"
    return "fix the cause"


def _inside(path: str, location: object) -> bool:
    """True if ``path`` is in the store's directory (False for a store that is no directory)."""
    if not isinstance(location, str | os.PathLike) or "://" in str(location):
        return False
    try:
        root = os.path.abspath(location)
        return os.path.commonpath([root, os.path.abspath(path)]) == root
    except ValueError:
        return False
