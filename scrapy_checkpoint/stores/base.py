"""What the checkpoint core needs from a store: the :class:`Store`, :class:`JournalWriter`
and :class:`Lock` protocols. ``FileStore``, ``RedisStore``, ``PostgresStore`` and
``MemoryStore`` provide them; the core and the Scrapy pieces never know which one they
use."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from ..journal.doneset import DoneSet
from ..journal.groups import Group
from ..journal.pending import RequestReader
from ..state import CheckpointState, Owner

#: A valid stage name, matched whole (fullmatch: "$" would let a final newline in).
_STAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Endings a stage name may not have: the file store uses them for its own files.
_RESERVED = (".json", ".bak", ".lock", ".tmp", ".corrupt")


def is_stage_name(name: str) -> bool:
    """True if ``name`` is a valid stage name (see :func:`check_stage_name`)."""
    return isinstance(name, str) and bool(_STAGE_RE.fullmatch(name)) and not name.endswith(_RESERVED)


def check_stage_name(stage: str) -> str:
    """``stage`` if it is a valid stage name (safe as a file name and a Redis key part).

    Raises :class:`~scrapy_checkpoint.errors.ConfigError` naming the rule otherwise.
    """
    if not is_stage_name(stage):
        raise ConfigError(
            f"Invalid stage name {stage!r}: use 1-128 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit and not ending in {', '.join(_RESERVED)} "
            f"(e.g. 'stage1_discovery')."
        )
    return stage


@dataclass
class Loaded:
    """What a store holds for one stage, read by :meth:`Store.load` before replay.

    ``generation`` and ``good_bytes`` are positions in the store's own units, handed
    back to :meth:`Store.open_segment` unchanged: for the file store a segment number
    and a byte offset in it, for the Redis store the last sequence number and a count
    of journal records, for the memory store a segment number and a count of its groups.
    """

    #: Header of the newest valid snapshot (None: replay from an empty stage).
    snapshot: dict[str, Any] | None
    #: The snapshot's done-set (empty without a snapshot).
    done: DoneSet
    snapshot_generation: int
    #: Size of the snapshot in bytes, as stored (0 without one).
    snapshot_bytes: int
    #: Decoded groups of the journal after the snapshot, in order.
    payloads: list[Group] = field(default_factory=list)
    #: Segment to append to and the position where its good records end.
    generation: int = 0
    good_bytes: int = 0
    #: Bytes after the last good record (damaged or torn) that replay did not use.
    dropped_bytes: int = 0
    #: Files of generations after the point where replay stopped (to move aside).
    unreachable: list[Path] = field(default_factory=list)
    #: What was found damaged and what recovery does about it, for the log.
    problems: list[str] = field(default_factory=list)
    #: True when at least one file (or key) of the stage exists.
    exists: bool = False
    #: The store lost the stage's data while a process was running it (a Redis restarted
    #: empty): what happened, for the error that keeps it from starting from zero silently.
    vanished: str | None = None
    #: Reads the stage's request records (the payloads of its pending units) on demand.
    requests: RequestReader | None = None


class JournalWriter(Protocol):
    """Appends group payloads to one stage's journal, in order; each append is whole or
    absent after any crash.

    Used from the checkpoint's thread, except :meth:`sync` which runs on its background
    I/O thread. Only the holder of the stage's :class:`Lock` has a writer.
    """

    #: Bytes in the current segment (the file store counts its header and frame
    #: headers; the Redis store the payloads since the writer was made or rotated).
    #: The checkpoint compacts once it passes ``compact_min_bytes``.
    size: int

    def append(self, payload: bytes) -> None:
        """Append one group (:func:`~scrapy_checkpoint.journal.groups.encode_group` bytes)
        as one record, after every earlier one.

        Unbuffered, the record has reached the OS (or Redis) when this returns, so it
        survives the death of the process, not necessarily of the machine; buffered
        (``durability="none"``), it may wait in the process until :meth:`flush`. A crash
        leaves the record whole or absent: a torn one fails its checksum and is dropped
        (with everything after it) on the next load, never applied in part; a retried one
        is never applied twice. Raises OSError (file), CheckpointError (Redis away for
        longer than its buffer holds) or CheckpointLockedError (the lock was lost).
        """

    def put_request(self, code: int, data: bytes) -> int:
        """Add the request record of pending unit ``code`` (``data``: what redoes it, e.g.
        a crawl's request as JSON) and return its ref (:mod:`~..journal.pending`), at most
        ``MAX_REF``. The record reaches the store with the next group, before it, and is
        read back by ref through :meth:`Store.request_reader` (from the writer's buffer
        until then). Raises as :meth:`append`."""

    def flush(self) -> None:
        """Hand every buffered record to the OS (or Redis). Raises as :meth:`append`."""

    def sync(self) -> None:
        """Make the records that reached the OS durable (fsync). Runs on the background
        I/O thread, possibly after a compaction closed this writer: it then returns
        quietly (what it held was synced before it was closed)."""

    def fsync(self) -> None:
        """:meth:`flush`, then make everything durable now, on the caller's thread."""

    def close(self) -> None:
        """Flush and release the writer's resources (a file descriptor). Idempotent."""


class Lock(Protocol):
    """A stage's exclusive lock, held by one process (see :meth:`Store.lock`)."""

    def release(self, *, unlink: bool = False) -> None:
        """Give the lock up; idempotent. ``unlink`` also deletes the lock's file (the file
        store, when the stage is removed). If the process dies holding it, the lock goes
        with it: the OS drops the file lock; a Redis lease expires (at once for a dead
        process on the same host). The Redis lock logs a failure to release (its lease
        then expires) instead of raising it."""


class Store(Protocol):
    """Where stages live: a stage's journal, snapshots, readable state and lock.

    Stage names are valid (:func:`check_stage_name`). Every method that changes a
    stage is called by the holder of its :class:`Lock` (except :meth:`lock` itself);
    the readers (:meth:`stages`, :meth:`live_owner`, :meth:`load`, :meth:`read_state`,
    :meth:`disk_usage`) take no lock, change nothing and are safe while a process
    writes the stage. Store errors (OSError, redis-py's or psycopg's errors) propagate
    unless a method says otherwise.
    """

    #: Where the stages live, for messages (a directory, or a Redis or PostgreSQL URL
    #: without its password).
    location: str

    def stages(self) -> list[str]:
        """Names of the stages the store holds, sorted (files a user put there that are
        not stages are ignored)."""

    def lock(self, stage: str, owner: Owner) -> Lock:
        """Take ``stage``'s exclusive lock for ``owner`` (this process) and record it.

        Atomic: at most one live process holds a stage. A lock left by a dead process is
        taken over. Raises :class:`~scrapy_checkpoint.errors.CheckpointLockedError`,
        naming the holder, if a live process holds it; nothing else is changed then.
        """

    def live_owner(self, stage: str) -> Owner | None:
        """The owner if a live process holds ``stage``'s lock now, else None."""

    def load(self, stage: str) -> Loaded:
        """Read the newest valid snapshot of ``stage`` and the journal records after it.

        A stage never written loads empty (``exists`` False). Damage it can work around
        (a torn or corrupt tail, a damaged snapshot with an older one to fall back on) is
        reported in ``problems``, ``dropped_bytes`` and ``unreachable`` and recovery goes
        on from the last good record. Raises
        :class:`~scrapy_checkpoint.errors.CorruptCheckpointError` only when no
        consistent state can be rebuilt.
        """

    def request_reader(self, stage: str, writer: JournalWriter | None = None) -> RequestReader:
        """A reader of ``stage``'s request records (by the refs :meth:`JournalWriter.put_request`
        returned); with ``writer`` (this process's) it also reads those still buffered.
        :meth:`load` puts one without a writer in ``loaded.requests``."""

    def set_aside(self, stage: str, loaded: Loaded) -> None:
        """Keep what :meth:`load` could not use (``loaded.dropped_bytes``,
        ``loaded.unreachable``) where no later load reads it (``*.corrupt`` files, the
        Redis ``corrupt`` list), before the writer cuts it from the journal. Never deletes
        data: a crash here may leave it set aside twice, not lost."""

    def open_segment(self, stage: str, gen: int, *, truncate_at: int | None,
                     buffered: bool) -> JournalWriter:
        """A writer appending to ``stage``'s journal.

        On open, ``gen`` and ``truncate_at`` are ``loaded.generation`` and
        ``loaded.good_bytes``: appending resumes where the good records end, and what
        follows is cut (after :meth:`set_aside`). At a compaction ``gen`` is the next
        generation and ``truncate_at`` None: a new segment starts, and the records
        before it are those the snapshot of ``gen`` will cover. After :meth:`remove`,
        ``gen`` and ``truncate_at`` are 0. ``buffered`` (``durability="none"``) lets the
        writer keep records in the process until it flushes.
        """

    def stage_snapshot(self, stage: str, gen: int, parts: Sequence[bytes | memoryview]) -> Any:
        """Take the bytes of snapshot ``gen`` (:func:`~scrapy_checkpoint.journal.snapshot.
        snapshot_parts`) now, on the caller's thread: ``parts`` may lend memory that
        changes once the call returns (the frontier's arrays, not copied). Returns what
        :meth:`write_snapshot` then takes as its ``blob`` on the I/O thread, or
        :meth:`discard_snapshot` if it is not written. Raises OSError as writing does.
        This one joins the parts (one copy); the file store writes them to the snapshot's
        temp file instead (no copy in memory)."""
        return b"".join(parts)

    def discard_snapshot(self, staged: Any) -> None:
        """Give up a :meth:`stage_snapshot` that will not be written (what it made is
        removed)."""

    def write_snapshot(self, stage: str, gen: int, blob: Any,
                       freed: Sequence[int] = ()) -> None:
        """Store ``blob`` (:func:`~scrapy_checkpoint.journal.snapshot.encode_snapshot`
        bytes, :func:`~scrapy_checkpoint.journal.snapshot.snapshot_parts`, or what
        :meth:`stage_snapshot` returned) as the state at
        the start of journal generation ``gen``. ``freed``: refs of
        request records no unit needed from the snapshot before this one on (a store that
        keeps records apart from its journal, Redis, deletes them once no kept snapshot
        can need them; the file store's retention deletes whole segments instead).

        Atomic: a reader sees the previous snapshot or this one, whole. Runs on the I/O
        thread once the segment before ``gen`` is durable; a crash before it completes
        leaves the previous snapshot and the journal after it, which replay the same
        state. The Redis store drops the records the snapshot covers in the same step
        (and skips a snapshot while records it would cover are still buffered).
        """

    def retain(self, stage: str, keep: int) -> None:
        """Delete all but the newest ``keep`` snapshots and the journal segments only the
        deleted ones need (the Redis store keeps two snapshots whatever ``keep``). A
        crash leaves some old files for the next call."""

    def write_state(self, stage: str, data: bytes) -> None:
        """Replace the readable state (``data``: a CheckpointState as JSON, UTF-8).

        Atomic: a reader sees the old state or the new, whole (the file store keeps the
        previous one as a backup). The state is a summary, not the record: losing a write
        loses nothing (the Redis store logs an unreachable Redis and goes on).
        """

    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]:
        """The readable state as last written (None if there is none or it is damaged),
        with the problems found; the file store falls back to its backup."""

    def remove(self, stage: str) -> None:
        """Delete every key or file of ``stage`` except its lock (and the owner record the
        lock names). Redis does it in one transaction; the file store deletes the readable
        state first, then renames the journal's directory away in one step: a crash
        leaves the stage whole (its journal) or removed, never an older state."""

    def disk_usage(self, stage: str) -> dict[str, int]:
        """Bytes the stage takes: ``journal_bytes``, ``snapshot_bytes``, ``state_bytes``
        (for Redis, its ``MEMORY USAGE`` of the keys)."""
