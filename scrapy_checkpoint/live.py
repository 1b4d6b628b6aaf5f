"""The live state of a stage in memory, and replay of journal groups onto it.

``LiveState.apply`` is the single definition of what a group means; the
checkpoint records its own changes as groups and applies them the same way.
:func:`recover` rebuilds a stage from its store before a process writes it again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from .clock import utcnow
from .errors import CorruptCheckpointError
from .journal.arrays import load_json
from .journal.doneset import MAX_TIME, DoneSet
from .journal.groups import (
    ADDED,
    ATTACHED,
    BATCH_ID,
    COMMITTED_AT,
    COUNTERS,
    DROPPED,
    ERROR,
    HANDED,
    INIT,
    INPUT_FILE,
    LAST_INDEX,
    LAST_ITEM,
    LOST,
    MAX_COUNT,
    METADATA,
    OUTPUT_FILE,
    OUTPUTS,
    OWNER,
    RECOVERIES,
    REFRESH_BEFORE,
    RETRY_FAILED,
    STAGE_TOTALS,
    START_TIME,
    STARTED,
    STATUS,
    TOTAL,
    USER_STATE,
    Added,
)
from .journal.pending import MAX_REF, PendingIndex, place_of
from .journal.snapshot import DONE_NOW, INDEX_COUNTS, PENDING_INDEX, PLACES
from .metrics import Metrics, eta_total
from .state import CheckpointState, Owner, Progress, Status
from .stores.base import Loaded, Store

logger = logging.getLogger("scrapy_checkpoint")


#: An ETA further than this (seconds: about 100 years) is not shown as a date.
_MAX_ETA = 100 * 365 * 86400.0


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


class LiveState:
    """Counters kept as plain ints (the hot path), everything else in ``info``."""

    __slots__ = (
        "attached", "batch_id", "done", "failed", "failed_units", "info", "last_index",
        "last_item", "outputs", "pending", "processed", "skipped", "started", "successful",
        "totals", "updated_ts", "user_state",
    )

    def __init__(self, info: CheckpointState, done: DoneSet | None = None) -> None:
        self._set_info(info)
        self.done = done if done is not None else DoneSet()
        #: Units done with a failure -> what redoes them: ``(ref, length, priority)`` of
        #: their request record, a payload kept as JSON, or None (nothing).
        self.failed_units: dict[int, Any] = {}
        #: Units added and not done, and where what redoes each is (the frontier's index).
        self.pending = PendingIndex()
        #: Pending units that were handed to a worker (in flight) at some point.
        self.started: set[int] = set()
        #: Durable output file -> [its length when the stage first wrote it, committed length].
        self.outputs: dict[str, list[Any]] = {}
        #: Data a front end keeps with the stage, by name (JSON values; see ATTACHED).
        self.attached: dict[str, Any] = {}
        #: The user's own state (a JSON value; None: never recorded), see ``USER_STATE``.
        self.user_state: Any = None
        #: Totals over every run of the stage (name -> int), see ``STAGE_TOTALS``.
        self.totals: dict[str, int] = {}

    def _set_info(self, info: CheckpointState) -> None:
        self.info = info
        p = info.progress
        self.processed, self.successful = p.processed_items, p.successful_items
        self.failed, self.skipped = p.failed_items, p.skipped_items
        self.last_item, self.last_index, self.batch_id = (
            info.last_processed_item, info.last_processed_index, info.batch_id)
        self.updated_ts = info.updated_at.timestamp()

    # -- the frontier: pending units ------------------------------------------------

    def add_pending(self, code: int, ref: int, length: int = 0, priority: int = 0) -> bool:
        """Make unit ``code`` pending, its request record at ``ref`` (``length`` bytes; see
        :mod:`.journal.pending`), unless it is done or pending already. True if it was added."""
        if code in self.done:
            return False
        return self.pending.add(code, ref, length, priority)

    def start_pending(self, code: int) -> bool:
        """Mark a pending unit started (in flight). True if it was pending and not started."""
        if code in self.pending and code not in self.started:
            self.started.add(code)
            return True
        return False

    def drop_pending(self, codes: list[int]) -> list[int]:
        """Forget pending units (given to another process). Returns those that were pending."""
        dropped = []
        pending, started = self.pending, self.started
        for code in codes:
            if pending.discard(code):
                started.discard(code)
                dropped.append(code)
        return dropped

    # -- snapshots ----------------------------------------------------------------

    def snapshot_header(self, generation: int) -> dict[str, Any]:
        """A header made of copies: it is encoded on the I/O thread while the state moves on.
        The pending units go in the snapshot's index (``pending.to_bytes()``), except the
        payloads kept in memory (``inline``)."""
        failed = [[code, list(value) if type(value) is tuple else value]
                  for code, value in self.failed_units.items()]
        places = set(self.pending.places())
        places.update(place_of(value[0]) for value in self.failed_units.values()
                      if type(value) is tuple and value[0] <= MAX_REF)
        return {
            "generation": generation,
            "state": self.to_state().model_dump(mode="json"),
            "failed": failed,
            "inline": self.pending.inline_pairs(),
            PLACES: sorted(places),
            INDEX_COUNTS: self.pending.counts(),
            "started": sorted(self.started),
            "outputs": {path: list(lengths) for path, lengths in self.outputs.items()},
            "attached": dict(self.attached),
            # Replaced whole by each group, never changed in place: no copy needed.
            "user_state": self.user_state,
            "totals": self.totals,
            DONE_NOW: self.done.now,
        }

    @classmethod
    def from_loaded(cls, stage: str, loaded: Loaded) -> LiveState:
        """Rebuild the state: the snapshot, then every good group after it. The pending
        units' payloads are read through ``loaded.requests`` when asked for."""
        if loaded.snapshot is None:
            live = cls(CheckpointState(stage=stage), loaded.done)
        else:
            header = loaded.snapshot
            live = cls(CheckpointState.model_validate(header["state"]), loaded.done)
            live.failed_units = {int(code): tuple(value) if type(value) is list else value
                                 for code, value in header.get("failed", ())}
            index = header.get(PENDING_INDEX)
            if index is None:  # written before request records: the payloads themselves
                index = PendingIndex()
                for code, payload in header.get("pending", ()):
                    index.add_inline(int(code), payload)
            live.pending = index
            live.started = set(header.get("started", ()))
            live.outputs = dict(header.get("outputs", {}))
            live.attached = dict(header.get("attached", {}))
            live.user_state = header.get("user_state")
            live.totals = dict(header.get("totals") or {})
        live.pending.reader = loaded.requests
        for group in loaded.payloads:  # decoded (and so validated) by the store's scan
            live.apply(group.done, group.failed, group.fields, replay=True, added=group.added)
        if loaded.payloads:
            # Merged now: a code a crafted journal repeats is then counted once, so the count
            # and should_skip agree from the start (the merge is due soon anyway).
            live.done.compact()
        counts = (live.processed, live.successful, live.failed, live.skipped)
        if not all(-MAX_COUNT - 1 <= n <= MAX_COUNT for n in counts):
            raise CorruptCheckpointError(
                f"The journal of stage {stage!r} adds its counters up to {counts}, beyond a "
                f"64-bit count: it was not written by this package. Reset the stage to start "
                f"over.")
        return live

    # -- applying a group ------------------------------------------------------------

    def apply(self, done: Sequence[int], failed: Sequence[int], fields: dict[str, Any], *,
              replay: bool = False, added: Added | None = None) -> None:
        """Apply one group (``added``: the pending units it adds with their request
        records). In ``replay`` its done codes are known to be new (the writer refuses a
        unit that is already done), so they are added without a lookup, and so are its
        added units known not to be done (``add_unit`` refuses a done unit; a unit added
        and done in the same group is added first, as here)."""
        info = self.info
        if INIT in fields:
            # A stage (re)created: start from its initial state and nothing done.
            self._set_info(CheckpointState.model_validate(fields[INIT]))
            self.done, self.failed_units = DoneSet(now=self.done.now), {}
            self.pending = PendingIndex(self.pending.reader)
            self.started, self.outputs, self.attached = set(), {}, {}
            self.user_state, self.totals = None, {}
            info = self.info
        counters = fields.get(COUNTERS)
        if counters:
            self.processed += counters[0]
            self.successful += counters[1]
            self.failed += counters[2]
            self.skipped += counters[3]
        if LAST_ITEM in fields:
            self.last_item = fields[LAST_ITEM]
        if LAST_INDEX in fields:
            self.last_index = fields[LAST_INDEX]
        if BATCH_ID in fields:
            self.batch_id = fields[BATCH_ID]
        if COMMITTED_AT in fields:
            self.updated_ts = fields[COMMITTED_AT]
        if RETRY_FAILED in fields:  # failed units released for a retry
            released = fields[RETRY_FAILED]
            self.done.discard_many(released)
            for code in released:
                value = self.failed_units.pop(code, None)
                if value is not None:
                    self.pending.restore(code, value)
        if REFRESH_BEFORE in fields:  # a new pass of a completed stage (incremental)
            for code in self.done.drop_before(fields[REFRESH_BEFORE]):
                self.failed_units.pop(code, None)
            self.outputs = {}
        if ADDED in fields:  # written before request records: the payloads themselves
            for code, payload in fields[ADDED]:
                if code not in self.done:
                    self.pending.add_inline(code, payload)
        if added is not None:
            self.pending.add_many(added.codes, added.refs, added.lengths, added.priorities,
                                  () if replay else self.done)
        if STARTED in fields:
            self.started.update(fields[STARTED])
        if HANDED in fields:  # handed to another worker of a shared stage: not pending here
            for code in fields[HANDED]:
                self.pending.discard(code)
                self.started.discard(code)
        if OUTPUTS in fields:
            self.outputs.update(fields[OUTPUTS])
        if ATTACHED in fields:
            self.attached.update(fields[ATTACHED])
        if DROPPED in fields:  # lost: not pending, and not done
            for code in fields[DROPPED]:
                self.pending.discard(code)
                self.started.discard(code)
        if USER_STATE in fields:
            self.user_state = fields[USER_STATE]
        if STAGE_TOTALS in fields:
            self.totals = fields[STAGE_TOTALS]
        updates: dict[str, Any] = {}
        if LOST in fields:
            lost = dict(info.lost)
            for reason, n in fields[LOST].items():
                lost[reason] = lost.get(reason, 0) + n
                if not lost[reason]:  # taken back (its units run again)
                    del lost[reason]
            updates["lost"] = lost
        if STATUS in fields:
            updates["status"] = Status(fields[STATUS])
        if TOTAL in fields:
            info.progress.total_items = fields[TOTAL]
        if START_TIME in fields:
            info.progress.start_time = _ts(fields[START_TIME])
        if METADATA in fields:
            updates["metadata"] = fields[METADATA]
        if ERROR in fields:
            message, count, when = fields[ERROR]
            updates.update(error_message=message, error_count=count, last_error_time=_ts(when))
        if INPUT_FILE in fields:
            updates["input_file"], updates["input_file_hash"] = fields[INPUT_FILE]
        if OUTPUT_FILE in fields:
            updates["output_file"] = fields[OUTPUT_FILE]
        if OWNER in fields:
            updates["owner"] = Owner.model_validate(fields[OWNER])
        if RECOVERIES in fields:
            updates["recoveries"] = fields[RECOVERIES]
        for name, value in updates.items():
            setattr(info, name, value)
        pending, started = self.pending, self.started
        if replay:
            self.done.add_many_new(done)
        else:
            add, contains = self.done.add_new, self.done.__contains__
            for code in done:
                if not contains(code):
                    add(code)
        if pending:
            discard = pending.discard
            for code in done:
                discard(code)
                started.discard(code)
        add = self.done.add_new
        contains = self.done.__contains__
        for code in failed:
            if not contains(code):
                add(code)
            self.failed_units[code] = pending.pop_entry(code)
            started.discard(code)
        if COMMITTED_AT in fields:
            # Units done after this commit are stamped with its second; so are those the
            # next group records, on replay as when they were done.
            self.done.now = min(max(int(fields[COMMITTED_AT]), 0), MAX_TIME)

    def failed_payload(self, code: int) -> Any:
        """What redoes failed unit ``code`` (decoded JSON; None: nothing, or not failed).
        Raises as :meth:`PendingIndex.payload_bytes`."""
        value = self.failed_units.get(code)
        if type(value) is not tuple:
            return value
        ref, length, _ = value
        if self.pending.reader is None:
            raise OSError(f"no reader for the request record of unit {code}")
        return load_json(self.pending.reader.read(ref, length, code))

    @property
    def lost_total(self) -> int:
        """Units whose work was lost, all reasons."""
        return sum(self.info.lost.values())

    # -- the readable form -------------------------------------------------------------

    def metrics(self, throughput: float | None, total: int | None = None) -> Metrics:
        """The counters now, with ``throughput`` (items/s) and the seconds since the
        stage first started; ``total`` in place of the recorded one."""
        start = self.info.progress.start_time
        elapsed = (utcnow() - start).total_seconds() if start else 0.0
        estimate = self.attached.get("estimate") if total is None else None
        return Metrics(
            total=self.info.progress.total_items if total is None else total,
            processed=self.processed,
            successful=self.successful,
            failed=self.failed,
            skipped=self.skipped,
            throughput=throughput,
            elapsed_seconds=elapsed,
            # A crawl's recorded total is its estimate: '~' while that is uncertain, as the
            # CLI shows it (the line at a pause said "17.4% (66/379)" beside list's "~379").
            estimated=bool(isinstance(estimate, dict) and estimate.get("wide")),
            eta_total=eta_total(estimate),
            done=self.info.status is Status.COMPLETED,
        )

    def to_state(self, *, throughput: float | None = None,
                 eta_seconds: float | None = None) -> CheckpointState:
        """The state as users read it, a copy (``throughput`` in items/s, ``eta_seconds``
        from now)."""
        info = self.info
        updated = _ts(self.updated_ts) or info.updated_at
        eta = None
        if eta_seconds is not None and eta_seconds < _MAX_ETA:
            eta = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + eta_seconds,
                                         timezone.utc)
        progress = Progress(
            total_items=info.progress.total_items,
            processed_items=self.processed,
            successful_items=self.successful,
            failed_items=self.failed,
            skipped_items=self.skipped,
            start_time=info.progress.start_time,
            last_update_time=updated,
            estimated_completion_time=eta,
        )
        return info.model_copy(update={
            "progress": progress,
            "last_processed_item": self.last_item,
            "last_processed_index": self.last_index,
            "batch_id": self.batch_id,
            "updated_at": updated,
            "done_units": len(self.done),
            "pending_units": len(self.pending),
            "throughput": throughput,
        })


def recover(store: Store, stage: str) -> tuple[LiveState, Loaded]:
    """Rebuild ``stage`` from ``store`` to write it again (the caller holds its lock).

    Logs each problem found; moves damaged or unreachable bytes aside
    (:meth:`Store.set_aside`). Returns the state and what the store loaded (where the
    journal's good records end). A state file without its journal sets
    ``loaded.vanished`` (see :func:`journal_missing`): the start refuses the stage until
    it is reset. Raises :class:`~scrapy_checkpoint.errors.CorruptCheckpointError` when
    no consistent state can be rebuilt.
    """
    loaded = store.load(stage)
    live = LiveState.from_loaded(stage, loaded)
    previous, state_problems = store.read_state(stage)
    for problem in state_problems:
        logger.warning("Stage %s: state file %s", stage, problem)
    if (loaded.snapshot is None and not loaded.payloads and previous is not None
            and not _never_started(previous)):
        loaded.vanished = loaded.vanished or journal_missing(store, stage, previous)
    for problem in loaded.problems:
        logger.warning("Stage %s: %s", stage, problem)
    if loaded.dropped_bytes or loaded.unreachable:
        store.set_aside(stage, loaded)
    return live, loaded


def _never_started(state: CheckpointState) -> bool:
    """A state file of a stage opened and closed before its first start (its start refused:
    an input file not found): nothing was recorded, so a journal without groups lost none."""
    return (state.status is Status.INITIALIZED and not state.progress.processed_items
            and not state.done_units and not state.pending_units)


def journal_missing(store: Store, stage: str, state: CheckpointState) -> str:
    """What to tell the user when ``stage``'s journal and snapshots are gone while its state
    file (``state``) is not: a run wrote the journal before that file (the stage's first
    segment is made when it is opened), so they were deleted. Which units were finished is
    known only to the journal, so a resume would redo them and count them again (past the
    total: "Completed 100% (29/20)"); the state file may also lag the journal."""
    progress = state.progress
    where = getattr(store, "data_dir", None)
    place, cli = ((f"its directory {where(stage)} was deleted or emptied",
                   f"--dir {store.location}") if callable(where)
                  else ("they were deleted", "--backend URL"))
    return (
        f"The journal and snapshots of stage {stage!r} in {store.location} are missing "
        f"({place}), while its state file is there: last written at "
        f"{state.updated_at:%Y-%m-%d %H:%M:%S} UTC (status {state.status.value}), it records "
        f"{progress.processed_items} processed item(s), and the run may have done more after. "
        f"Which units were finished is known only to the journal, so the stage is not "
        f"resumed: it would do them again and count them twice. Nothing was changed. Put the "
        f"directory back to resume from it; or start the stage over (its finished work is "
        f"done again): scrapy-checkpoint {cli} reset {stage} (in a crawl: -s "
        f"CHECKPOINT_RESET=True; a tracker: start(..., reset=True)).")
