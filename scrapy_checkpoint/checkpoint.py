"""EnhancedCheckpoint: the lifecycle, status, counters and skip logic of one stage.

Knows nothing of Scrapy, Twisted or asyncio: the tracker and the Scrapy
extension drive it. It records each change in the live state and in the group
being built; its :class:`~scrapy_checkpoint.durability.GroupCommitter` decides
when that group is journaled and made durable (all disk waits happen on a
background I/O thread), and :class:`~scrapy_checkpoint.hooks.Hooks` runs the
user's hooks.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import operator
import os
import stat
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from .clock import monotonic, utcnow, walltime
from .config import CheckpointConfig
from .durability import GroupCommitter, write_error
from .errors import CheckpointError, CheckpointWriteError, ConfigError, InputChangedError
from .hooks import Hook, Hooks
from .journal.groups import (
    ATTACHED,
    COUNTERS,
    DROPPED,
    ERROR,
    INIT,
    INPUT_FILE,
    LOST,
    METADATA,
    OUTPUT_FILE,
    OUTPUTS,
    OWNER,
    RECOVERIES,
    REFRESH_BEFORE,
    RETRY_FAILED,
    START_TIME,
    STATUS,
    TOTAL,
    GroupBuilder,
)
from .journal.keys import UnitKey, key_code
from .journal.pending import NO_REF, clamp_priority
from .live import LiveState, recover
from .metrics import Metrics, ProgressLog
from .state import ACTIVE_STATUSES, CheckpointState, Owner, Status, check_transition
from .stores import cli_command, open_backend
from .stores.base import Lock, Store, check_stage_name

logger = logging.getLogger("scrapy_checkpoint")
_JSON = json.JSONEncoder(separators=(",", ":"))


class NotARegularInputError(OSError):
    """An input file that is a pipe, FIFO, socket or device: hashing it would
    block, or consume what the program is about to read (``<(zcat rows.gz)``, /dev/stdin)."""


def file_hash(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's content. Raises OSError if it cannot be read, and
    :class:`NotARegularInputError` (read nothing) if it is not a regular file."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer: no wait
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularInputError(
                errno.EINVAL, "it is not a regular file (a pipe, FIFO, socket or device), "
                "and reading it to check it would consume or wait for its content", str(path))
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return f"sha256:{digest.hexdigest()}"


class InputUnreadableError(ConfigError, OSError):
    """An input file start() cannot read: a ConfigError, and an OSError as before."""


def _input_hash(stage: str, path: str | os.PathLike[str], recorded: str | None) -> str:
    """:func:`file_hash` of the input file ``path``; raises InputChangedError if a hash
    was ``recorded`` and this one differs, ConfigError (an OSError too) if it cannot be
    read."""
    try:
        digest = file_hash(path)
    except OSError as exc:
        fix = ("write it to a regular file first (zcat rows.gz > rows.txt), give that file "
               "(or no input_file)" if isinstance(exc, NotARegularInputError)
               else "fix the path (or the file's permissions)")
        raise InputUnreadableError(
            f"Input file {os.fspath(path)!r} of stage {stage!r} cannot be read: "
            f"{exc.strerror or exc}. Nothing was recorded; {fix} and run again.") from None
    if recorded is not None and recorded != digest:
        raise InputChangedError(stage, os.fspath(path),
                                f"hash {digest[:19]}... != recorded {recorded[:19]}...")
    return digest


def _compare_hash(digest: str, recorded: str | None) -> tuple[bool, str]:
    """``(ok, reason)``: whether an input file whose :func:`file_hash` is ``digest`` is the
    one recorded (``recorded`` None: none was)."""
    if recorded is None:
        return True, "no input file hash recorded yet"
    if digest != recorded:
        return False, f"content hash {digest[:19]}... differs from recorded {recorded[:19]}..."
    return True, "unchanged"


class StageReadings:
    """What a checkpoint lets you read: the stage's state, its metrics, which units are
    done. :class:`EnhancedCheckpoint` is the one to use; this half of it only reads."""

    config: CheckpointConfig
    stage: str | None
    resumed_skips: int
    _live: LiveState | None
    _started: bool
    _running: bool
    _progress: ProgressLog
    _committer: GroupCommitter

    @property
    def live(self) -> LiveState:
        """The stage's state in memory. Raises CheckpointError unless open."""
        if self._live is None:
            raise CheckpointError("The checkpoint is not open: call start() first.")
        return self._live

    @property
    def state(self) -> CheckpointState:
        """The current state (including updates not yet committed)."""
        return self._progress.state(self.live, self.commit_latency_us())

    @property
    def status(self) -> Status:
        """The stage's status. Raises CheckpointError unless open."""
        return self.live.info.status

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`complete`, :meth:`fail` or :meth:`pause`."""
        return self._running

    @property
    def closed(self) -> bool:
        """True once the checkpoint has been started and then closed (its run is over)."""
        return self._live is None and self._started

    @property
    def metadata(self) -> dict[str, Any]:
        """Stage-specific data; change it with :meth:`set_metadata`."""
        return dict(self.live.info.metadata)

    def metrics(self, total: int | None = None) -> Metrics:
        """Counters, throughput over ``throughput_window`` and elapsed time, now; ``total``
        in place of the recorded one (e.g. a crawl's units known at this moment)."""
        return self._progress.metrics(self.live, total)

    def progress_line(self, total: int | None = None) -> str:
        """See :meth:`Metrics.progress_line` (``total`` as in :meth:`metrics`)."""
        return self.metrics(total).progress_line()

    def log_progress(self) -> None:
        """Log the progress line (logger ``scrapy_checkpoint``, INFO)."""
        logger.info("[%s] %s", self.stage, self.progress_line())

    def should_skip(self, index_or_key: UnitKey) -> bool:
        """True if this unit was finished (successfully or not) by any earlier run."""
        done = key_code(index_or_key) in self.live.done
        self.resumed_skips += done
        return done

    def is_done(self, index_or_key: UnitKey) -> bool:
        """Like :meth:`should_skip`, without counting a skip."""
        return key_code(index_or_key) in self.live.done

    def is_stale(self, max_age_hours: float | None = None) -> bool:
        """True if the stage has not been updated for ``max_age_hours`` (default: ``ttl_hours``)."""
        hours = self.config.ttl_hours if max_age_hours is None else max_age_hours
        return self.state.updated_at < utcnow() - timedelta(hours=hours)

    def validate_input_file(self, path: str | os.PathLike[str]) -> tuple[bool, str]:
        """Compare ``path`` with the input file the checkpoint was made with: ``(ok, reason)``
        (an unreadable file is ``(False, why)``, not an error)."""
        try:
            digest = file_hash(path)
        except OSError as exc:
            return False, f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}"
        return _compare_hash(digest, self.live.info.input_file_hash)

    def refresh_count(self, refresh_before: int) -> int:
        """How many done units were done before ``refresh_before`` (Unix seconds): those a
        ``start(refresh_before=...)`` makes not done. The stage must be open."""
        return self.live.done.count_before(refresh_before)

    @property
    def journal_bytes(self) -> int | None:
        """Bytes in the current journal segment (None when the checkpoint is not open)."""
        return self._committer.journal_bytes

    def commit_latency_us(self) -> dict[str, int] | None:
        """p50/p95/p99 of recent group commits (hooks + encode + write), in microseconds."""
        return self._committer.commit_latency_us()

    @property
    def write_failure(self) -> CheckpointWriteError | None:
        """The checkpoint write that failed last, until a later commit reaches the journal
        again (None while writes succeed): the job must stop (see :meth:`abandon`)."""
        return self._committer.failure


class UnitRecords(StageReadings):
    """The part of :class:`EnhancedCheckpoint` that records units apart from finishing
    them: pending units with what redoes them (the frontier), hand-offs, losses and
    retries. Uses the checkpoint's group and committer."""

    _group: GroupBuilder
    _committer: GroupCommitter

    def _record(self, fields: dict[str, Any]) -> None:
        raise NotImplementedError

    def sync_journaled(self) -> None:
        """Wait until the groups journaled so far are on disk, whatever the durability mode;
        the group being built (which may be waiting for the commit gate) is not committed."""
        self._committer.sync(force=True)
        self._committer.drain()

    def add_unit(self, code: int, payload: Any, priority: int = 0) -> bool:
        """Record a new pending unit (unless it is done or pending), with what redoes it:
        ``payload`` (a JSON value, or its UTF-8 JSON text as bytes, e.g. a crawl's request)
        is written once, as a request record in the journal, and read back decoded on
        demand (``live.pending.get(code)``); None records a unit nothing can redo (its work
        is lost if it is not done in this run). ``priority`` orders resumed units (higher
        first; int32, larger values clamped). True if it was added. Raises
        CheckpointWriteError if the record cannot be written, TypeError if ``payload`` is
        not JSON-serialisable."""
        live = self.live
        if code in live.done or code in live.pending:
            return False
        self.add_new_unit(code, payload, priority)
        return True

    def add_new_unit(self, code: int, payload: Any, priority: int = 0) -> None:
        """:meth:`add_unit` of a unit the caller has just found neither done nor pending (a
        crawl's frontier looks at both before it builds the request's record)."""
        if payload is None:
            ref, length = NO_REF, 0
        else:
            data = payload if isinstance(payload, bytes) else _JSON.encode(payload).encode()
            ref, length = self._committer.put_request(code, data), len(data)
        priority = clamp_priority(priority)
        self.live.pending.add(code, ref, length, priority)
        self._group.added.append(code, ref, length, priority)

    def attach(self, name: str, value: Any) -> None:
        """Keep ``value`` (JSON) with the stage under ``name`` (``live.attached``), journaled
        with the next group; it replaces what was there."""
        self._record({ATTACHED: {name: value}})

    def hand_off(self, codes: list[int]) -> None:
        """Pending units given to another process: neither pending here nor done."""
        self._group.handed.extend(self.live.drop_pending(codes))

    def record_lost(self, reason: str, count: int, codes: list[int] | None = None) -> None:
        """Count ``count`` units whose work is lost, for ``reason`` (a short word such as
        ``unjournaled``); ``codes`` are pending units given up (no longer pending, not done).
        A stage with lost units ends ``incomplete`` instead of ``completed``. A negative
        ``count`` takes units back (their work is to be done again)."""
        fields: dict[str, Any] = {LOST: {reason: count}}
        if codes:
            fields[DROPPED] = list(codes)
        self._record(fields)

    def retry_units(self, codes: Iterable[int]) -> int:
        """Make the failed units among ``codes`` run again, as ``start(retry_failed=True)``
        does for every failed unit: no longer done nor counted, pending with what redoes
        them. Returns how many."""
        failed = self.live.failed_units
        again = sorted({code for code in codes if code in failed})
        if again:
            n = len(again)
            self._record({RETRY_FAILED: again, COUNTERS: [-n, 0, -n, 0]})
        return len(again)

    def start_unit(self, code: int) -> None:
        """Record that a pending unit was handed to a worker (it is in flight)."""
        if self.live.start_pending(code):
            self._group.started.append(code)


class EnhancedCheckpoint(UnitRecords):
    """Crash-safe progress of one stage.

    >>> cp = EnhancedCheckpoint("data/checkpoints", "stage2")   # doctest: +SKIP
    >>> cp.start(total_items=len(rows), input_file="rows.csv")  # doctest: +SKIP
    >>> for i, row in enumerate(rows):                          # doctest: +SKIP
    ...     if cp.should_skip(i):
    ...         continue
    ...     handle(row)
    ...     cp.update(processed=1, successful=1, index=i)
    >>> cp.complete(); cp.close()                               # doctest: +SKIP

    ``checkpoint_dir`` is where a file store keeps its stages; ``backend`` (None,
    ``"file"`` or a Redis URL) or a ready ``store`` choose another store. Options are
    the fields of :class:`~scrapy_checkpoint.config.CheckpointConfig` (ConfigError if
    one is invalid); ``on_start``... are hooks (see :meth:`on`). ``units`` names the
    stage's units in the log (a crawl's are ``"requests"``).
    """

    def __init__(self, checkpoint_dir: str | os.PathLike[str] = "checkpoints",
                 stage: str | None = None, *, config: CheckpointConfig | None = None,
                 backend: str | None = None, store: Store | None = None,
                 on_start: Hook | None = None, on_progress: Hook | None = None,
                 on_complete: Hook | None = None, on_failure: Hook | None = None,
                 units: str = "items", **options: Any) -> None:
        self.config = CheckpointConfig.from_options(config, **options)
        self._owns_store = store is None
        self.store: Store = store if store is not None else open_backend(backend, checkpoint_dir)
        self.stage: str | None = check_stage_name(stage) if stage is not None else None
        self._hooks = Hooks(start=on_start, progress=on_progress, complete=on_complete,
                            failure=on_failure)
        self._live: LiveState | None = None
        self._lock: Lock | None = None
        self._running = self._started = self._created = False
        self._vanished: str | None = None
        self._progress = ProgressLog(self.config.log_every, self.config.throughput_window)
        self._committer = GroupCommitter(self.config, self.store, self._progress)
        #: The group being built (the committer's; read on the update path).
        self._group = self._committer.group
        self._warned_duplicate = False
        self.units = units
        #: Units found already done by :meth:`should_skip` in this process.
        self.resumed_skips = 0
        #: Bytes of damaged journal dropped when the stage was opened.
        self.dropped_bytes = 0

    # -- lifecycle and updates ------------------------------------------------------------

    def open(self, stage: str | None = None) -> None:
        """Take the stage's lock and load its state (``start()`` calls this for you). Raises
        :class:`CheckpointLockedError` (nothing written) if a live process owns it."""
        if self._live is not None:
            return
        if stage is not None:
            self.stage = check_stage_name(stage)
        if self.stage is None:
            raise CheckpointError("No stage given: pass it to EnhancedCheckpoint(...) or start().")
        stage = self.stage
        try:  # a full disk: the lock's owner, a new segment's header, damage set aside
            lock = self.store.lock(stage, Owner.current())
        except OSError as exc:
            raise write_error(stage, self.store.location, exc) from None
        try:
            live, loaded = recover(self.store, stage)
            self.dropped_bytes = loaded.dropped_bytes
            if loaded.vanished is None:  # else nothing is written unless start() resets it
                self._committer.open(stage, live, loaded)
        except BaseException as exc:
            lock.release()
            if isinstance(exc, OSError):
                raise write_error(stage, self.store.location, exc) from None
            raise
        self._lock, self._live = lock, live
        self._created = loaded.exists
        self._vanished = loaded.vanished
        _close_at_exit(self)

    def start(self, stage: str | None = None, total_items: int | None = None,
              input_file: str | os.PathLike[str] | None = None,
              output_file: str | os.PathLike[str] | None = None, *,
              reset: bool = False, retry_failed: bool = False,
              refresh_before: int | None = None) -> CheckpointState:
        """Open the stage and mark it running, resuming whatever an earlier run left.

        A stage found ``running`` (its process died) is logged, moved to ``recovering``
        and resumed. ``reset=True`` starts over; ``retry_failed=True`` makes units that
        finished with a failure run again. ``refresh_before`` (Unix seconds) starts a new
        pass: units done before it are no longer done (nor counted), and durable outputs
        are recorded afresh (see :meth:`refresh_count`). Raises InputChangedError if
        ``input_file``'s content differs from the one recorded (unless ``reset``)."""
        if self._running:
            return self.state
        total_items = _checked_total(total_items)  # before anything is opened or written
        self.open(stage)
        stage = self.stage
        assert stage is not None
        if self._vanished is not None:
            if not reset:
                self.abandon()  # nothing written: the marker stays for the next run
                raise CheckpointError(self._vanished)
            self._start_vanished_over(stage)
        live = self.live
        in_hash = None if input_file is None else _input_hash(
            stage, input_file, live.info.input_file_hash if self._created and not reset else None)
        if reset and self._created:
            logger.info("Stage %s: reset, starting over.", stage)
            live = self._live = self._committer.start_over()
            self._created = False
        if not self._created:  # (re)created: the group applies to ``live`` in place
            if not reset:
                _warn_output_not_empty(stage, self.store.location, output_file)
            self._record({INIT: CheckpointState(stage=stage).model_dump(mode="json")})
            self._created = True
        _log_resume(stage, live, self.units)
        if live.info.status in ACTIVE_STATUSES:  # its process died
            self._set_status(Status.RECOVERING, recoveries=live.info.recoveries + 1)
        fields = _run_fields(stage, live, total_items, input_file, in_hash, output_file,
                             retry_failed)
        if refresh_before is not None:
            refresh = _refresh_fields(stage, live, refresh_before, retry_failed)
            if COUNTERS in fields:  # retry_failed's, then the pass's
                refresh[COUNTERS] = [a + b for a, b in zip(fields[COUNTERS], refresh[COUNTERS],
                                                           strict=True)]
            fields.update(refresh)
        self._record(fields)
        self._set_status(Status.RUNNING)
        self._started = True
        self._progress.begin(live.processed)
        self._hooks.emit("start", self)
        return self.state

    def _start_vanished_over(self, stage: str) -> None:
        """Reset a stage whose data the store lost (opened without a journal writer): delete
        what is left of it and open its journal afresh (the caller then creates it)."""
        self.store.remove(stage)
        live, loaded = recover(self.store, stage)
        self._committer.open(stage, live, loaded)
        self._live, self._created, self._vanished = live, False, None

    def update(self, processed: int = 0, successful: int = 0, failed: int = 0, skipped: int = 0,
               last_item: Any = None, index: int | None = None, key: UnitKey | None = None,
               batch_id: Any = None) -> bool:
        """Record progress (counts are deltas); with ``index`` or ``key`` also mark that unit
        done: with ``failed`` and no ``successful``, done-with-failure. Returns False (and
        changes nothing) if the unit was already done. Raises CheckpointError unless running.
        """
        unit = key if key is not None else index
        code = None if unit is None else key_code(unit)
        return self.finish_unit(code, processed, successful, failed, skipped, last_item, index,
                                batch_id)

    def finish_unit(self, code: int | None, processed: int = 0, successful: int = 0, failed: int = 0,
                    skipped: int = 0, last_item: Any = None, index: int | None = None,
                    batch_id: Any = None) -> bool:
        """:meth:`update` for a unit given by its code (see :func:`key_code`)."""
        if not self._running:
            raise CheckpointError(f"Stage {self.stage!r} is not running: call start() first.")
        live = self._live
        assert live is not None
        if ((processed | successful | failed | skipped) >> 40  # a huge (or negative) delta
                or (live.processed | live.successful | live.failed | live.skipped) >> 62):
            _check_counters(live, processed, successful, failed, skipped)  # or counter near 2**63
        group = self._group
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
                live.failed_units[code] = live.pending.pop_entry(code)
                live.started.discard(code)
                group.failed.append(code)
            else:
                if live.pending:
                    live.pending.discard(code)
                    live.started.discard(code)
                group.done.append(code)
        if processed or successful or failed or skipped:
            live.processed += processed
            live.successful += successful
            live.failed += failed
            live.skipped += skipped
            counts = group.counts
            counts[0] += processed
            counts[1] += successful
            counts[2] += failed
            counts[3] += skipped
        if last_item is not None:
            live.last_item = last_item if isinstance(last_item, str) else str(last_item)
        if index is not None:
            live.last_index = index
        if batch_id is not None:
            live.batch_id = str(batch_id)
        group.updates += 1
        now = monotonic()
        committer = self._committer
        if (group.updates >= self.config.save_every
                or now - committer.last_commit >= self.config.save_interval):
            committer.commit(now, due=True)
        progress = self._progress
        if progress.next_at and live.processed >= progress.next_at:
            if progress.passed(live.processed):
                self.log_progress()
            self._hooks.emit("progress", self)
        return True

    def add_commit_hook(self, fn: Callable[[], dict[str, Any] | None]) -> None:
        """Call ``fn()`` before each group is written; the fields it returns join the group
        (the Scrapy integration flushes its outputs and records their lengths here)."""
        self._committer.add_commit_hook(fn)

    def set_commit_gate(self, fn: Callable[[], bool] | None) -> None:
        """``fn()`` returns False while a commit the cadence asks for must wait: the group
        grows on and is committed at the first update or tick when ``fn()`` is True again
        (the Scrapy integration waits for a moment with no callback running, so the
        spider's state it journals belongs to done requests only). Status changes and
        :meth:`close` commit whatever ``fn()`` says. None removes the gate."""
        self._committer.set_commit_gate(fn)

    def add_sync_hook(self, fn: Callable[[], list[int]]) -> None:
        """``fn()`` returns file descriptors to fsync before each journal fsync, so a
        journaled output length is never on disk before the output's bytes."""
        self._committer.add_sync_hook(fn)

    def record_output(self, path: str, base: int, length: int,
                      document: dict[str, Any] | None = None) -> None:
        """Record a durable output's starting and committed length (bytes), and for a feed
        document what :data:`~.journal.groups.OUTPUTS` says, journaled now in a group of its
        own (the group being built may be waiting for the commit gate)."""
        fields = {OUTPUTS: {path: [base, length] if document is None else [base, length, document]}}
        self.live.apply([], [], fields)
        self._committer.write_fields(fields)

    def set_total(self, total_items: int) -> None:
        """Set the total number of items (for the percentage and the ETA). Raises
        ConfigError for a total that is not an integer from 0 to 2**63 - 1."""
        self._record({TOTAL: _checked_total(total_items)})

    def set_metadata(self, **values: Any) -> None:
        """Merge JSON-serialisable ``values`` into the stage's metadata."""
        merged = {**self.live.info.metadata, **values}
        self._record({METADATA: merged})

    def record_error(self, error: BaseException | str) -> None:
        """Count an error and keep its message and time (the status is unchanged)."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        count = self.live.info.error_count + 1
        self._record({ERROR: [message, count, walltime()]})

    def complete(self, caveat: str | None = None) -> None:
        """Mark the stage completed (durably) and run the ``complete`` hooks; a stage that lost
        work (:meth:`record_lost`) is marked ``incomplete`` instead, with a warning saying how
        much and why, and no hook runs. A stage with failed units (done with failure) is
        completed with a warning saying how many and how to do them again; one with a
        ``caveat`` (an output that may lack items) with a warning saying it."""
        lost = self.live.info.lost
        if any(lost.values()):
            self._set_status(Status.INCOMPLETE)
            logger.warning("[%s] Incomplete: the work of %d unit(s) was lost (%s). %s",
                           self.stage, sum(lost.values()), describe_lost(lost),
                           self.progress_line())
            return
        self._set_status(Status.COMPLETED)
        caveat = _completion_caveat(self, caveat)
        if caveat:  # not all of the work is as it should be: never a plain "Completed"
            logger.warning("[%s] %s", self.stage, caveat)
        else:
            logger.info("[%s] Completed. %s", self.stage, self.progress_line())
        self._hooks.emit("complete", self)

    def fail(self, error: BaseException | str) -> None:
        """Record ``error`` and mark the stage failed; runs the ``failure`` hooks."""
        self.record_error(error)
        self._set_status(Status.FAILED)
        logger.error("[%s] Failed: %s", self.stage, self.live.info.error_message)
        self._hooks.emit("failure", self, error)

    def pause(self) -> None:
        """Mark the stage paused: the next start resumes it."""
        self._set_status(Status.PAUSED)
        logger.info("[%s] Paused; run again to resume. %s", self.stage, self.progress_line())

    def save(self, force: bool = False) -> None:
        """Commit buffered updates now; with ``force`` also rewrite the state file and wait
        until everything is on disk (this blocks: the tracker runs it in a worker thread)."""
        self._committer.commit(monotonic())
        if force:
            self.request_durable()
            self.drain_io()

    def request_durable(self) -> None:
        """Commit, and queue a state-file write and an fsync (does not wait)."""
        self._committer.make_durable()

    def drain_io(self) -> None:
        """Block until the queued disk work is done; re-raise its first failure."""
        self._committer.drain()

    def disable_progress_log(self) -> None:
        """Stop the periodic progress line (a progress bar shows it); hooks still run."""
        self._progress.lines = False

    def tick(self) -> None:
        """Commit, fsync, write the state file when due: call it every ``timer_period()`` s."""
        self._committer.tick()

    def close(self) -> None:
        """Commit, snapshot, write the state file, wait for the disk, release the lock. A
        stage still running is left ``paused`` (it resumes on the next start)."""
        if self._live is None:
            return
        if not self._committer.is_open:  # opened on a stage the store lost: nothing to write
            self._release()
            return
        try:
            if self._running:
                self.pause()
            self._committer.finish()
        finally:
            self._release()

    def abandon(self) -> None:
        """Release the stage without committing what was not committed yet, as if the
        process had died there: the next start recovers it from the last commit (its
        units after that run again). For a run that cannot record a consistent state, or
        whose checkpoint cannot be written (:attr:`write_failure`): that failure is not
        raised again."""
        if self._live is None:
            return
        if not self._committer.is_open:  # see close()
            self._release()
            return
        known = self._committer.failure
        try:
            self._committer.drain()
        except CheckpointWriteError:
            if known is None:  # a failure not reported before
                raise
        finally:
            self._running = False
            self._release()

    def _release(self) -> None:
        """Close the journal, release the lock and (if it is ours) the store (all of them
        even if closing the journal raises a write failure)."""
        try:
            self._committer.close()
        finally:
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

    def on(self, event: str, fn: Hook) -> None:
        """Register ``fn(checkpoint)`` (``fn(checkpoint, error)`` for ``failure``), sync or
        async, for ``start``, ``progress``, ``complete`` or ``failure`` (else ValueError)."""
        self._hooks.on(event, fn)

    async def wait_hooks(self) -> None:
        """Await async hooks still running (the tracker does this on exit)."""
        await self._hooks.wait()

    def _record(self, fields: dict[str, Any]) -> None:
        """Apply ``fields`` to the live state and add them to the current group."""
        self.live.apply([], [], fields)
        self._group.add_fields(fields)

    def _set_status(self, new: Status, recoveries: int | None = None) -> None:
        assert self.stage is not None
        check_transition(self.stage, self.live.info.status, new)
        fields: dict[str, Any] = {STATUS: new.value}
        if recoveries is not None:
            fields[RECOVERIES] = recoveries
        self._record(fields)
        self._running = new is Status.RUNNING
        self._committer.make_durable()


def _ts_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _refresh_fields(stage: str, live: LiveState, refresh_before: int,
                    retry_failed: bool) -> dict[str, Any]:
    """The group fields of a new pass: ``rb``, and the counters of the units it releases
    taken off (failed units released by ``retry_failed`` are taken off already)."""
    done = live.done
    failed = 0
    for code in live.failed_units:
        t = done.time_of(code)
        if t is not None and t < refresh_before:
            failed += 1
    released = done.count_before(refresh_before)
    if retry_failed:  # released by rf before rb applies: neither counted nor done then
        released -= failed
        failed = 0
    delta = [-released, -min(released - failed, live.successful), -failed, 0]
    logger.debug("Stage %s: a new pass; %d unit(s) done before %s are done no more.",
                 stage, released, _ts_text(refresh_before))
    return {REFRESH_BEFORE: int(refresh_before), COUNTERS: delta}


def _log_resume(stage: str, live: LiveState, units: str) -> None:
    """Say what a start found: a crashed run, a paused or failed one, a completed one
    (``units`` names what the stage counts: items, requests)."""
    previous = live.info.status
    if previous in ACTIVE_STATUSES:
        logger.warning("Detected incomplete checkpoint for %s. Resuming from %d %s "
                       "(%d done, %d pending, %d failed).", stage, live.processed, units,
                       len(live.done), len(live.pending), live.failed)
    elif previous in (Status.PAUSED, Status.FAILED, Status.INCOMPLETE):
        logger.info("Resuming %s stage %s from %d %s.", previous.value, stage, live.processed,
                    units)
    elif previous is Status.COMPLETED:
        logger.info("Stage %s was completed; running it again: its %d finished units are "
                    "skipped (reset to start over).", stage, len(live.done))


def _completion_caveat(cp: EnhancedCheckpoint, caveat: str | None) -> str | None:
    """What a completion's line says instead of a plain "Completed": failed units (tried
    and not done, with how to do them again), items of the total never processed (the
    stage completed before them), or ``caveat``; None when the work is all done."""
    live, line = cp.live, cp.progress_line()
    if live.failed:
        command = cli_command(cp.store, f"requeue {cp.stage} --failed")
        redo = (f"`{command}` makes them pending again for the next run" if command
                else "a start with retry_failed=True does them again")
        return f"Completed with {live.failed} failed unit(s): tried, and not done. {redo}. {line}"
    total = live.info.progress.total_items
    finished = max(live.processed, live.successful + live.failed + live.skipped)
    if total is not None and finished < total:
        return (f"Completed, but {total - finished} of the {total} item(s) of its total were "
                f"not processed: it was completed before them (to leave unfinished work "
                f"resumable, end with an exception or Ctrl-C). {line}")
    return f"Every unit is done, but {caveat}" if caveat else None


def describe_lost(lost: dict[str, int]) -> str:
    """``unjournaled: 3, unrestorable: 144``: the lost units by reason."""
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(lost.items()) if n)


def _warn_output_not_empty(stage: str, location: str,
                           output_file: str | os.PathLike[str] | None) -> None:
    """A new stage whose output file already holds bytes: an earlier run's, if its
    checkpoint was deleted or its Redis emptied. Said once at start, with what to do:
    nothing tells this run which of that work is done, so it does it all again."""
    if output_file is None:
        return
    try:
        size = os.stat(output_file).st_size
    except (OSError, ValueError):
        return
    if size:
        logger.warning(
            "Stage %s has no checkpoint in %s, but its output file %s already holds %d "
            "byte(s). If an earlier run of this stage wrote them (its checkpoint deleted, or "
            "a Redis emptied), this run does all the work again and what it writes is added a "
            "second time: stop it and move the file away to start clean. If the file holds "
            "other work, nothing needs doing.", stage, location, os.fspath(output_file), size)


def _check_counters(live: LiveState, processed: int, successful: int, failed: int,
                    skipped: int) -> None:
    """Raise ConfigError, before anything is applied, if an update would take a counter
    past the signed 64-bit range every store keeps (nothing could record it)."""
    limit = 1 << 63
    for name, now, delta in (("processed", live.processed, processed),
                             ("successful", live.successful, successful),
                             ("failed", live.failed, failed), ("skipped", live.skipped, skipped)):
        if not -limit <= now + delta < limit:
            raise ConfigError(
                f"Invalid update {name}={delta!r}: the {name} counter would be {now + delta}, "
                f"outside the range a checkpoint keeps (-2**63 to 2**63 - 1). Nothing was "
                f"recorded for this update; pass counts of items (usually 1).")


def _checked_total(total_items: Any) -> int | None:
    """``total_items`` as an int, or None; ConfigError (one paragraph) if it is not a whole
    number from 0 to 2**63 - 1: a journal group never records a total no state can hold."""
    if total_items is None:
        return None
    try:
        total = operator.index(total_items)
    except TypeError:
        total = None
    if total is None or isinstance(total_items, bool) or not 0 <= total < 1 << 63:
        raise ConfigError(f"Invalid total_items={total_items!r}: give the number of items, a whole "
                          f"number from 0 to {(1 << 63) - 1}, or None when it is not known.")
    return total


def _run_fields(stage: str, live: LiveState, total_items: int | None,
                input_file: str | os.PathLike[str] | None, in_hash: str | None,
                output_file: str | os.PathLike[str] | None, retry_failed: bool) -> dict[str, Any]:
    """The group fields a start records: this process as owner, what :meth:`start` was
    given, the first start time, and the failed units released by ``retry_failed``."""
    fields: dict[str, Any] = {OWNER: Owner.current().model_dump(mode="json")}
    if total_items is not None:
        fields[TOTAL] = int(total_items)
    if input_file is not None:
        fields[INPUT_FILE] = [os.fspath(input_file), in_hash]
    if output_file is not None:
        fields[OUTPUT_FILE] = os.fspath(output_file)
    if live.info.progress.start_time is None:
        fields[START_TIME] = walltime()
    if retry_failed and live.failed_units:
        n = len(live.failed_units)
        fields[RETRY_FAILED] = sorted(live.failed_units)
        fields[COUNTERS] = [-n, 0, -n, 0]
        logger.info("Stage %s: %d failed units will run again.", stage, n)
    return fields


_open_checkpoints: weakref.WeakSet[EnhancedCheckpoint] = weakref.WeakSet()


def _close_at_exit(cp: EnhancedCheckpoint) -> None:
    _open_checkpoints.add(cp)


@atexit.register
def _close_all() -> None:
    # A normal interpreter exit must not lose buffered updates.
    for cp in list(_open_checkpoints):
        try:
            if cp.write_failure is not None:  # raised to its caller already
                cp.abandon()
            else:
                cp.close()
        except CheckpointWriteError as exc:  # said once, without a traceback
            logger.error("Closing checkpoint %s at exit failed: %s", cp.stage, exc)
        except Exception:
            logger.exception("Closing checkpoint %s at exit failed", cp.stage)


__all__ = ["EnhancedCheckpoint", "describe_lost", "file_hash"]
