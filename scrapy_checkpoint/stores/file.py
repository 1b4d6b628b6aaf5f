"""The file store: one directory holds every stage of a pipeline.

Layout for stage ``s`` in ``<dir>``::

    s.json                 human-readable state (atomic writes)
    s.json.bak             the previous state file
    s.lock                 the OS lock one writer holds; names the owner
    s/snapshot-<gen>.bin   snapshot generation <gen> (state at the start of journal <gen>)
    s/journal-<gen>.log    journal segment <gen>
    s/*.corrupt            damaged bytes moved aside, never deleted by us
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import struct
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import CheckpointLockedError, CorruptCheckpointError
from ..journal.doneset import DoneSet
from ..journal.frames import SEGMENT_MAGIC, SegmentScan, frame, scan_segment
from ..journal.groups import INIT, SEGMENT_OF, Group, decode_group, segment_tag
from ..journal.snapshot import decode_snapshot
from ..state import CheckpointState, Owner
from .base import Loaded, is_stage_name

logger = logging.getLogger("scrapy_checkpoint")

_GEN_RE = re.compile(r"^(snapshot|journal)-(\d{8})\.(bin|log)$")

def read_regular(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file. Raises OSError (FileNotFoundError,
    PermissionError, ...) as reading does, and NotARegularFileError for a directory, FIFO,
    device or socket: opened without blocking, so a FIFO never hangs the reader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(path, info.st_mode)
        chunks = []
        while chunk := os.read(fd, 1 << 24):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class NotARegularFileError(OSError):
    """A directory, FIFO, device or socket where a stage's file should be."""

    def __init__(self, path: Path, mode: int) -> None:
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", str(path))


def _unreadable(stage: str, exc: OSError) -> CorruptCheckpointError:
    """The error for a file of ``stage`` that cannot be read (nothing is changed)."""
    path = exc.filename or "a file"
    reason = exc.strerror or str(exc)
    extra = ""
    with contextlib.suppress(OSError):
        info = os.stat(path)
        extra = f" (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)})"
    return CorruptCheckpointError(
        f"Cannot read {path}{extra} of stage {stage!r}: {reason}. Nothing was changed. Run "
        f"as the user who owns the checkpoint, fix the file's permissions, or move the "
        f"file away.")


class StageLock:
    """An exclusive ``flock`` on ``<stage>.lock``; the OS drops it when the process dies."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self, *, unlink: bool = False) -> None:
        """See :meth:`Lock.release`; ``unlink`` deletes the lock file first."""
        if self._fd < 0:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def _flock_briefly(fd: int, patience: float = 0.2) -> None:
    """Take the exclusive lock, waiting a moment: a reader (``live_owner``) holds a shared
    lock for a few microseconds and must not make a starting writer fail."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, backup: Path | None = None) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, whole.

    Temp file, fsync, hard-link the current file to ``backup``, rename, fsync the
    directory.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if backup is not None and path.exists():
        bak_tmp = backup.with_name(f".{backup.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            bak_tmp.unlink()
        os.link(path, bak_tmp)
        os.replace(bak_tmp, backup)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class SegmentWriter:
    """Appends frames to one segment file with ``os.write`` (no Python buffer).

    In ``none`` durability frames are kept in the process up to ``buffer_limit``
    bytes; otherwise each group reaches the OS when it is committed, so it
    survives the death of the process. Fsync is the caller's decision.
    """

    def __init__(self, path: str, *, truncate_at: int | None = None, buffered: bool = False,
                 buffer_limit: int = 1 << 20, tag: bytes | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        size = os.fstat(self._fd).st_size
        if truncate_at is not None and truncate_at < size:
            os.ftruncate(self._fd, truncate_at)
            size = truncate_at
        if size == 0:  # a new segment: the magic, then its name tag (``tag``) if given
            head = SEGMENT_MAGIC + (frame(tag) if tag is not None else b"")
            _write_all(self._fd, head)
            size = len(head)
        self.size = size
        self._buffered = buffered
        self._buffer_limit = buffer_limit
        self._buf = bytearray()

    @property
    def fd(self) -> int:
        """The segment's file descriptor (-1 once closed)."""
        return self._fd

    def append(self, payload: bytes) -> None:
        """Frame ``payload`` (length, crc32) and write it (see :meth:`JournalWriter.append`)."""
        data = frame(payload)
        self.size += len(data)
        if self._buffered:
            self._buf += data
            if len(self._buf) >= self._buffer_limit:
                self.flush()
        else:
            _write_all(self._fd, data)

    def flush(self) -> None:
        """Write the buffered frames (``none`` durability) with ``os.write``."""
        if self._buf:
            _write_all(self._fd, bytes(self._buf))
            self._buf.clear()

    def fsync(self) -> None:
        """:meth:`flush`, then fsync the segment."""
        self.flush()
        os.fsync(self._fd)

    def sync(self) -> None:
        """fsync what reached the OS (from the I/O thread; a closed segment was synced)."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno != 9:  # EBADF: rotated and closed meanwhile
                raise

    def close(self) -> None:
        """Flush and close the file (no fsync). Idempotent."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FileStore:
    """Stages kept as files under one directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    # -- paths ---------------------------------------------------------------

    def state_path(self, stage: str) -> Path:
        """``<dir>/<stage>.json``, the readable state."""
        return self.directory / f"{stage}.json"

    def backup_path(self, stage: str) -> Path:
        """``<dir>/<stage>.json.bak``, the previous readable state."""
        return self.directory / f"{stage}.json.bak"

    def lock_path(self, stage: str) -> Path:
        """``<dir>/<stage>.lock``, the lock file (it names the owner)."""
        return self.directory / f"{stage}.lock"

    def data_dir(self, stage: str) -> Path:
        """``<dir>/<stage>/``, the journal segments and snapshots."""
        return self.directory / stage

    def segment_path(self, stage: str, gen: int) -> Path:
        """Journal segment ``gen`` of ``stage``."""
        return self.data_dir(stage) / f"journal-{gen:08d}.log"

    def snapshot_path(self, stage: str, gen: int) -> Path:
        """Snapshot ``gen`` of ``stage`` (the state at the start of segment ``gen``)."""
        return self.data_dir(stage) / f"snapshot-{gen:08d}.bin"

    def stages(self) -> list[str]:
        """Names of every stage with a state file or data directory."""
        if not self.directory.is_dir():
            return []
        names: set[str] = set()
        for entry in self.directory.iterdir():
            name = entry.name
            if (entry.is_file() and name.endswith(".json") and not name.startswith(".")
                    and self._is_state_file(entry, name[: -len(".json")])):
                names.add(name[: -len(".json")])
            elif entry.is_dir() and any(_GEN_RE.match(p.name) for p in entry.iterdir()):
                names.add(name)
        return sorted(n for n in names if is_stage_name(n))

    @staticmethod
    def _is_state_file(path: Path, stage: str) -> bool:
        """A ``.json`` in the directory is a stage only if it says so (user files are left alone)."""
        try:
            with path.open("rb") as f:
                head = f.read(4096)
        except OSError:
            return False
        return b'"schema_version"' in head and f'"stage": "{stage}"'.encode() in head.replace(
            b'"stage":"', b'"stage": "')

    def _generations(self, stage: str, kind: str) -> list[int]:
        directory = self.data_dir(stage)
        if not directory.is_dir():
            return []
        gens = []
        for p in directory.iterdir():
            m = _GEN_RE.match(p.name)
            if m and m.group(1) == kind:
                gens.append(int(m.group(2)))
        return sorted(gens)

    # -- ownership -----------------------------------------------------------

    def lock(self, stage: str, owner: Owner) -> StageLock:
        """Take the stage's lock or raise :class:`CheckpointLockedError`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(stage)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                _flock_briefly(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = self.read_lock_owner(stage)
                raise CheckpointLockedError(
                    stage,
                    holder.pid if holder else None,
                    holder.host if holder else None,
                    holder.started_at.isoformat() if holder else None,
                ) from None
            # The file may have been unlinked by a reset between open and flock.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.model_dump_json().encode(), 0)
        return StageLock(path, fd)

    def read_lock_owner(self, stage: str) -> Owner | None:
        """The owner the lock file names, alive or not (None if unreadable)."""
        try:
            return Owner.model_validate_json(read_regular(self.lock_path(stage)))
        except (OSError, ValueError):
            return None

    def live_owner(self, stage: str) -> Owner | None:
        """The owner if a live process holds the stage's lock, else None. Takes no lock."""
        path = self.lock_path(stage)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        try:
            # A shared lock conflicts with the writer's exclusive one, and only
            # while it is alive.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.read_lock_owner(stage) or Owner(pid=-1, host="?", started_at=_epoch())
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # -- the human-readable state file ----------------------------------------

    def write_state(self, stage: str, data: bytes) -> None:
        """See :meth:`Store.write_state`: :func:`atomic_write`, the old file kept as backup."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path(stage), data, backup=self.backup_path(stage))

    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]:
        """The state file, or its backup if it is damaged (with a warning)."""
        problems: list[str] = []
        for path in (self.state_path(stage), self.backup_path(stage)):
            try:
                raw = read_regular(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{path.name} cannot be read ({exc.strerror or exc})")
                continue
            try:
                state = CheckpointState.model_validate_json(raw)
            except ValidationError as exc:
                problems.append(f"{path.name} is damaged ({exc.error_count()} problem(s): "
                                f"{exc.errors()[0]['msg']})")
                continue
            if problems:
                problems.append(f"using the backup {path.name}")
            return state, problems
        return None, problems

    # -- snapshots and journal -------------------------------------------------

    def load(self, stage: str) -> Loaded:
        """Read the newest valid snapshot and the journal after it. Read-only, never raises
        for damage it can work around (it reports it in ``problems``).

        A snapshot or segment that names another stage or generation, and a segment
        missing between two others, end replay like a torn record (the files from there
        on are set aside by :meth:`set_aside`). A file that cannot be read (permissions,
        a directory or FIFO in its place) raises CorruptCheckpointError: nothing is
        treated as damage, so nothing readable is ever cut.
        """
        try:
            return self._load(stage)
        except OSError as exc:  # unreadable, not damaged: refuse, change nothing
            raise _unreadable(stage, exc) from None

    def _load(self, stage: str) -> Loaded:
        snaps = self._generations(stage, "snapshot")
        segs = self._generations(stage, "journal")
        exists = bool(snaps or segs) or self.state_path(stage).exists()
        header: dict[str, Any] | None = None
        done = DoneSet()
        base_gen, snap_bytes = 0, 0
        problems: list[str] = []
        unreachable: list[Path] = []
        for gen in reversed(snaps):
            path = self.snapshot_path(stage, gen)
            try:
                data = read_regular(path)
            except FileNotFoundError:  # removed by a writer's retention meanwhile
                continue
            try:
                header, done = decode_snapshot(data)
                _check_snapshot_owner(header, stage, gen)
            except (ValueError, struct.error) as exc:
                header, done = None, DoneSet()
                problems.append(f"{path.name} is damaged ({exc}); trying an older one")
                unreachable.append(path)
                continue
            base_gen, snap_bytes = gen, len(data)
            break
        if header is None and (snaps or segs) and (not segs or segs[0] != 0):
            raise CorruptCheckpointError(
                f"Every snapshot of stage {stage!r} in {self.data_dir(stage)} is damaged or "
                f"missing and the journal does not reach back to the start, so its state "
                f"cannot be rebuilt. The files are left as they are; move them away or reset "
                f"the stage to start over."
            )
        loaded = Loaded(header, done, base_gen, snap_bytes, exists=exists, problems=problems,
                        unreachable=unreachable, generation=base_gen)
        stopped = False
        expected = base_gen
        for gen in [g for g in segs if g >= base_gen]:
            path = self.segment_path(stage, gen)
            if not stopped and gen != expected:
                problems.append(
                    f"{self.segment_path(stage, expected).name} is missing: the journal stops "
                    f"before it; {path.name} and the files after it are set aside")
                stopped = True
            if stopped:
                loaded.unreachable.append(path)
                loaded.dropped_bytes += path.stat().st_size
                continue
            try:
                scan = scan_segment(read_regular(path), decode_group)
            except FileNotFoundError as exc:  # removed meanwhile (a reset): stop before it
                scan = SegmentScan(problem=str(exc))
            stranger = _stranger(scan.payloads, stage, gen)
            if stranger:
                problems.append(f"{path.name} {stranger}: the journal stops before it; it and "
                                f"the files after it are set aside")
                loaded.unreachable.append(path)
                loaded.dropped_bytes += path.stat().st_size
                if gen == base_gen:  # nothing of ours in it: a new segment replaces it
                    loaded.generation, loaded.good_bytes = gen, 0
                stopped = True
                continue
            if scan.payloads and SEGMENT_OF in scan.payloads[0].fields:
                del scan.payloads[0]  # the tag: nothing to apply
            loaded.payloads.extend(scan.payloads)
            loaded.generation, loaded.good_bytes = gen, scan.good_bytes
            expected = gen + 1
            if scan.problem:
                loaded.dropped_bytes += scan.dropped_bytes
                problems.append(
                    f"{path.name}: {scan.problem} at byte {scan.good_bytes}; "
                    f"dropped {scan.dropped_bytes} byte(s) after the last good record"
                )
                stopped = True
        # Snapshots newer than the replay point describe states we did not reach.
        loaded.unreachable.extend(
            self.snapshot_path(stage, g) for g in snaps if g > loaded.generation
            and self.snapshot_path(stage, g) not in loaded.unreachable
        )
        return loaded

    def set_aside(self, stage: str, loaded: Loaded) -> None:
        """Keep damaged or unreachable bytes as ``*.corrupt`` files before a writer
        continues, so nothing on disk is ever destroyed by recovery."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if loaded.dropped_bytes:
            seg = self.segment_path(stage, loaded.generation)
            if seg.exists() and seg.stat().st_size > loaded.good_bytes:
                with seg.open("rb") as f:
                    f.seek(loaded.good_bytes)
                    tail = f.read()
                (seg.parent / f"{seg.name}.tail-{stamp}.corrupt").write_bytes(tail)
        for path in loaded.unreachable:
            if path.exists():
                path.rename(path.with_name(f"{path.name}.{stamp}.corrupt"))

    def open_segment(self, stage: str, gen: int, *, truncate_at: int | None,
                     buffered: bool) -> SegmentWriter:
        """See :meth:`Store.open_segment`: segment file ``gen``, cut at ``truncate_at`` bytes."""
        self.data_dir(stage).mkdir(parents=True, exist_ok=True)
        return SegmentWriter(str(self.segment_path(stage, gen)), truncate_at=truncate_at,
                             buffered=buffered, tag=segment_tag(stage, gen))

    def write_snapshot(self, stage: str, gen: int, blob: bytes) -> None:
        """See :meth:`Store.write_snapshot` (:func:`atomic_write`)."""
        atomic_write(self.snapshot_path(stage, gen), blob)

    def retain(self, stage: str, keep: int) -> None:
        """Keep the newest ``keep`` snapshots and the journal segments they need."""
        snaps = self._generations(stage, "snapshot")
        if len(snaps) <= keep:
            return
        oldest_kept = snaps[-keep]
        for gen in snaps[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                self.snapshot_path(stage, gen).unlink()
        for gen in self._generations(stage, "journal"):
            if gen < oldest_kept:
                with contextlib.suppress(FileNotFoundError):
                    self.segment_path(stage, gen).unlink()

    # -- whole stages ------------------------------------------------------------

    def remove(self, stage: str) -> None:
        """Delete every file of the stage. The caller holds the lock."""
        shutil.rmtree(self.data_dir(stage), ignore_errors=True)
        for path in (self.state_path(stage), self.backup_path(stage)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def disk_usage(self, stage: str) -> dict[str, int]:
        """See :meth:`Store.disk_usage` (file sizes)."""
        usage = {"journal_bytes": 0, "snapshot_bytes": 0, "state_bytes": 0}
        directory = self.data_dir(stage)
        if directory.is_dir():
            for p in directory.iterdir():
                m = _GEN_RE.match(p.name)
                if m:
                    key = "journal_bytes" if m.group(1) == "journal" else "snapshot_bytes"
                    usage[key] += p.stat().st_size
        for p in (self.state_path(stage), self.backup_path(stage)):
            if p.exists():
                usage["state_bytes"] += p.stat().st_size
        return usage


def _check_snapshot_owner(header: dict[str, Any], stage: str, gen: int) -> None:
    """Raise ValueError if a snapshot's header names another stage or generation."""
    other = header["state"].get("stage")
    if other != stage:
        raise ValueError(f"it belongs to stage {other!r}")
    if header.get("generation", gen) != gen:
        raise ValueError(f"it is generation {header['generation']}, not {gen}")


def _stranger(groups: list[Group], stage: str, gen: int) -> str | None:
    """Why a segment's groups do not belong to generation ``gen`` of ``stage`` (None if
    they may): its name tag says otherwise, or it (re)creates another stage."""
    if groups and SEGMENT_OF in groups[0].fields:
        tag = groups[0].fields[SEGMENT_OF]
        if tag["stage"] != stage:
            return f"belongs to stage {tag['stage']!r}"
        if tag["gen"] != gen:
            return f"is generation {tag['gen']} (copied or renamed)"
    for group in groups:
        init = group.fields.get(INIT)
        if init is not None and init.get("stage") != stage:
            return f"belongs to stage {init.get('stage')!r}"
    return None


def _epoch() -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(0, timezone.utc)
