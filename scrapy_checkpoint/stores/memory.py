"""The memory store: the same journal, snapshots and state as the file store, in this
process's memory. **Nothing is kept across processes**: when the process ends, every
stage it held is gone. For tests and short jobs that need resume within one process
(a tracker run again after an exception, a test that closes and reopens a stage), not
for surviving a crash.

``memory://`` is a store of its own, seen by no other; ``memory://NAME`` is the one
store of that name in this process, shared by every :class:`MemoryStore` opened with it
(a tracker and a manager, a checkpoint closed and opened again) until
:func:`forget_memory_store`.

Stage ``s`` is kept as the file store keeps it, with the same bytes:

- journal segments by generation, each a list of group payloads
  (:func:`~scrapy_checkpoint.journal.groups.encode_group` bytes) and a list of request
  records (:func:`~scrapy_checkpoint.journal.groups.encode_request` bytes); a record's
  ref is ``generation << OFFSET_BITS | (position + 1)``, so a snapshot's ``places``
  name the segments retention must keep, as for the file store;
- snapshots by generation (:mod:`~scrapy_checkpoint.journal.snapshot` bytes);
- the readable state (a CheckpointState as JSON);
- the lock: the :class:`MemoryLock` holding it and its owner.

Every change is one step under the store's mutex, so a reader sees a group, a
snapshot or a state whole or not at all. Nothing is ever torn, so nothing is set aside.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..errors import CheckpointError, CheckpointLockedError, CorruptCheckpointError
from ..journal.doneset import DoneSet
from ..journal.groups import REQUEST_OVERHEAD, decode_group, decode_request, encode_request
from ..journal.pending import OFFSET_BITS
from ..journal.snapshot import PLACES, decode_header, decode_snapshot
from ..state import CheckpointState, Owner
from .base import Loaded, Store, check_stage_name

_POSITION = (1 << OFFSET_BITS) - 1


@dataclass
class _Segment:
    groups: list[bytes] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)


@dataclass
class _Stage:
    """What a stage holds, lock aside (:meth:`MemoryStore.remove` drops it whole)."""

    segments: dict[int, _Segment] = field(default_factory=dict)
    #: generation -> (snapshot bytes, the generations its units' request records are in)
    snapshots: dict[int, tuple[bytes, list[int]]] = field(default_factory=dict)
    state: bytes | None = None


class _Shelf:
    """The stages of one store, and their locks, behind one mutex."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.stages: dict[str, _Stage] = {}
        self.holders: dict[str, tuple[MemoryLock, Owner]] = {}


_NAMED: dict[str, _Shelf] = {}
_NAMED_MUTEX = threading.Lock()


def forget_memory_store(name: str) -> None:
    """Drop the named store ``memory://name`` and everything it holds (no-op if there is
    none). A :class:`MemoryStore` still open on it keeps its stages; the next one opened
    with the name starts empty."""
    with _NAMED_MUTEX:
        _NAMED.pop(name, None)


class MemoryLock:
    """A stage's lock in a memory store: held by this object until :meth:`release`."""

    def __init__(self, shelf: _Shelf, stage: str) -> None:
        self._shelf, self._stage = shelf, stage

    @property
    def held(self) -> bool:
        """True while this object holds the stage's lock."""
        holder = self._shelf.holders.get(self._stage)
        return holder is not None and holder[0] is self

    def release(self, *, unlink: bool = False) -> None:
        """See :meth:`~.base.Lock.release` (``unlink`` has no meaning here). Idempotent."""
        with self._shelf.mutex:
            if self.held:
                del self._shelf.holders[self._stage]


class MemoryJournalWriter:
    """Appends groups to one segment of a memory stage; every record is in the store when
    the call returns (nothing is buffered: ``flush``, ``sync`` and ``fsync`` do nothing).

    ``size`` counts the bytes of the groups and request records put in the segment since
    the writer was made (as the file store counts its segment's).
    Raises CheckpointLockedError once ``lock`` no longer holds the stage.
    """

    def __init__(self, shelf: _Shelf, stage: str, gen: int, segment: _Segment,
                 lock: MemoryLock) -> None:
        self._shelf, self._stage, self._gen = shelf, stage, gen
        self._segment, self._lock = segment, lock
        self.size = 0

    def _check_lock(self) -> None:
        if not self._lock.held:
            raise CheckpointLockedError(self._stage, None, None, None)

    def append(self, payload: bytes) -> None:
        """See :meth:`~.base.JournalWriter.append`."""
        with self._shelf.mutex:
            self._check_lock()
            self._segment.groups.append(bytes(payload))
        self.size += len(payload)

    def put_request(self, code: int, data: bytes) -> int:
        """See :meth:`~.base.JournalWriter.put_request`: in the store at once (a record no
        group names is never read)."""
        record = encode_request(code, data)
        with self._shelf.mutex:
            self._check_lock()
            self._segment.requests.append(record)
            position = len(self._segment.requests)
        if position > _POSITION:
            raise CheckpointError(f"Stage {self._stage!r}: over {_POSITION} request records in "
                                  f"one journal segment; lower compact_min_bytes.")
        self.size += len(record)
        return self._gen << OFFSET_BITS | position

    def flush(self) -> None:
        """Nothing is buffered."""

    def sync(self) -> None:
        """Memory has nothing to make durable."""

    def fsync(self) -> None:
        """Nothing is buffered, and memory has nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""


class MemoryRequestReader:
    """Reads a memory stage's request records by ref (see the module docstring)."""

    def __init__(self, shelf: _Shelf, stage: str) -> None:
        self._shelf, self._stage = shelf, stage

    def read(self, ref: int, length: int, code: int) -> bytes:
        """See :meth:`~scrapy_checkpoint.journal.pending.RequestReader.read` (ValueError for
        a record that is not there)."""
        gen, position = ref >> OFFSET_BITS, ref & _POSITION
        with self._shelf.mutex:
            stage = self._shelf.stages.get(self._stage)
            segment = stage.segments.get(gen) if stage is not None else None
            records = segment.requests if segment is not None else []
            record = records[position - 1] if 0 < position <= len(records) else None
        if record is None:
            raise ValueError(f"request record {ref} of stage {self._stage!r} is not in memory")
        if len(record) != REQUEST_OVERHEAD + length:
            raise ValueError(f"request record {ref} has the wrong length")
        return decode_request(record, code)


class MemoryStore(Store):
    """Stages kept in this process's memory (see the module docstring): nothing survives
    the process.

    ``name`` None: a store of its own; a name (``memory://NAME``): the one store of that
    name in this process, shared with every other opened with it.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or None
        if self.name is None:
            self._shelf = _Shelf()
        else:
            with _NAMED_MUTEX:
                self._shelf = _NAMED.setdefault(self.name, _Shelf())
        self.location = f"memory://{self.name or ''}"

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    def _stage(self, stage: str) -> _Stage:
        """``stage``'s data, made if missing (call with the mutex held)."""
        return self._shelf.stages.setdefault(stage, _Stage())

    # -- ownership ---------------------------------------------------------------------

    def stages(self) -> list[str]:
        """See :meth:`Store.stages`."""
        with self._shelf.mutex:
            return sorted(self._shelf.stages)

    def lock(self, stage: str, owner: Owner) -> MemoryLock:
        """See :meth:`Store.lock`: refused with CheckpointLockedError, naming the owner,
        while another :class:`MemoryLock` holds ``stage`` (in this process: there is no
        other)."""
        check_stage_name(stage)
        with self._shelf.mutex:
            holder = self._shelf.holders.get(stage)
            if holder is not None:
                held = holder[1]
                raise CheckpointLockedError(stage, held.pid, held.host, held.started_at.isoformat())
            lock = MemoryLock(self._shelf, stage)
            self._shelf.holders[stage] = (lock, owner)
            return lock

    def live_owner(self, stage: str) -> Owner | None:
        """See :meth:`Store.live_owner`."""
        with self._shelf.mutex:
            holder = self._shelf.holders.get(stage)
        return holder[1] if holder is not None else None

    # -- state -------------------------------------------------------------------------

    def write_state(self, stage: str, data: bytes) -> None:
        """See :meth:`Store.write_state`."""
        with self._shelf.mutex:
            self._stage(stage).state = bytes(data)

    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]:
        """See :meth:`Store.read_state`."""
        with self._shelf.mutex:
            held = self._shelf.stages.get(stage)
            raw = held.state if held is not None else None
        if raw is None:
            return None, []
        try:
            return CheckpointState.model_validate_json(raw), []
        except ValidationError as exc:
            return None, [f"the state in memory is damaged ({exc.error_count()} problem(s))"]

    # -- journal and snapshots ---------------------------------------------------------

    def load(self, stage: str) -> Loaded:
        """See :meth:`Store.load`: the newest snapshot and the groups of the segments from
        its generation on. ``generation`` is the last segment, ``good_bytes`` its number
        of groups. Raises CorruptCheckpointError if a snapshot or group does not decode
        (memory that was changed by something else than this store)."""
        with self._shelf.mutex:
            held = self._shelf.stages.get(stage)
            if held is None:
                return Loaded(None, DoneSet(), 0, 0, requests=self.request_reader(stage))
            base = max(held.snapshots, default=0)
            blob = held.snapshots[base][0] if held.snapshots else None
            segments = [(gen, list(held.segments[gen].groups))
                        for gen in sorted(held.segments) if gen >= base]
        try:
            header, done = decode_snapshot(blob) if blob is not None else (None, DoneSet())
            payloads = [decode_group(group) for _, groups in segments for group in groups]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(
                f"Stage {stage!r} in {self.location} cannot be decoded ({exc}); reset it to "
                f"start over.") from None
        generation, groups = segments[-1] if segments else (base, [])
        return Loaded(header, done, base, len(blob or b""), payloads=payloads,
                      generation=generation, good_bytes=len(groups), exists=True,
                      requests=self.request_reader(stage))

    def request_reader(self, stage: str, writer: Any = None) -> MemoryRequestReader:
        """See :meth:`Store.request_reader` (records are in the store as soon as they are
        put: ``writer`` is not needed)."""
        return MemoryRequestReader(self._shelf, stage)

    def set_aside(self, stage: str, loaded: Loaded) -> None:
        """See :meth:`Store.set_aside`: :meth:`load` never drops anything."""

    def open_segment(self, stage: str, gen: int, *, truncate_at: int | None,
                     buffered: bool) -> MemoryJournalWriter:
        """See :meth:`Store.open_segment` (``truncate_at`` counts groups; ``buffered`` has
        no meaning here). Raises CheckpointError unless a :class:`MemoryLock` of this
        store holds ``stage``."""
        with self._shelf.mutex:
            holder = self._shelf.holders.get(stage)
            if holder is None:
                raise CheckpointError(f"Stage {stage!r} is not locked in {self.location}.")
            segments = self._stage(stage).segments
            segment = segments.setdefault(gen, _Segment())
            if truncate_at is not None:
                del segment.groups[truncate_at:]
            return MemoryJournalWriter(self._shelf, stage, gen, segment, holder[0])

    def write_snapshot(self, stage: str, gen: int, blob: Any,
                       freed: Sequence[int] = ()) -> None:
        """See :meth:`Store.write_snapshot` (``freed`` is not needed: :meth:`retain` keeps
        the segments the kept snapshots' ``places`` name)."""
        data = blob if isinstance(blob, bytes) else b"".join(blob)
        places = [int(p) for p in decode_header(data).get(PLACES, [])]
        with self._shelf.mutex:
            self._stage(stage).snapshots[gen] = (data, places)

    def discard_snapshot(self, staged: Any) -> None:
        """See :meth:`Store.discard_snapshot`: nothing was made."""

    def retain(self, stage: str, keep: int) -> None:
        """See :meth:`Store.retain`: the newest ``keep`` snapshots, the segments from the
        oldest of them on, and older segments holding request records they need."""
        with self._shelf.mutex:
            held = self._shelf.stages.get(stage)
            if held is None or len(held.snapshots) <= keep:
                return
            gens = sorted(held.snapshots)
            needed = {place for gen in gens[-keep:] for place in held.snapshots[gen][1]}
            for gen in gens[:-keep]:
                del held.snapshots[gen]
            for gen in [g for g in held.segments if g < gens[-keep] and g not in needed]:
                del held.segments[gen]

    # -- whole stages ------------------------------------------------------------------

    def remove(self, stage: str) -> None:
        """See :meth:`Store.remove`: one step; the lock stays with its holder."""
        with self._shelf.mutex:
            self._shelf.stages.pop(stage, None)

    def segments(self, stage: str) -> list[int]:
        """The generations of the journal segments ``stage`` holds, oldest first (those
        :meth:`retain` kept)."""
        with self._shelf.mutex:
            held = self._shelf.stages.get(stage)
            return sorted(held.segments) if held is not None else []

    def disk_usage(self, stage: str) -> dict[str, int]:
        """See :meth:`Store.disk_usage`: the bytes held (payloads, not Python's overhead)."""
        with self._shelf.mutex:
            held = self._shelf.stages.get(stage) or _Stage()
            journal = sum(len(r) for s in held.segments.values() for r in s.groups + s.requests)
            return {"journal_bytes": journal,
                    "snapshot_bytes": sum(len(blob) for blob, _ in held.snapshots.values()),
                    "state_bytes": len(held.state or b"")}


__all__ = ["MemoryJournalWriter", "MemoryLock", "MemoryRequestReader", "MemoryStore",
           "forget_memory_store"]
