"""The file store: one directory holds every stage of a pipeline.

Layout for stage ``s`` in ``<dir>``::

    s.json                 human-readable state (atomic writes)
    s.json.bak             the previous state file
    s.lock                 the OS lock one writer holds; names the owner
    s/snapshot-<gen>.bin   snapshot generation <gen> (state at the start of journal <gen>)
    s/journal-<gen>.log    journal segment <gen>: groups, and the request records of the
                           pending units they add (kept while a unit needs its record)
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
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import (
    CheckpointLockedError,
    CheckpointWriteError,
    CorruptCheckpointError,
    UnreadableCheckpointError,
)
from ..journal.arrays import load_json
from ..journal.doneset import DoneSet
from ..journal.frames import FRAME_HEAD, SEGMENT_MAGIC, SegmentScan, frame, scan_segment
from ..journal.groups import (
    BATCH_MARK,
    INIT,
    REQUEST_MARK,
    REQUEST_OVERHEAD,
    SEGMENT_OF,
    Group,
    decode_record,
    decode_request,
    encode_request,
    segment_tag,
)
from ..journal.pending import OFFSET_BITS
from ..journal.snapshot import (
    PLACES,
    decode_snapshot,
    encode_snapshot,  # noqa: F401 (beside decode_snapshot, for scripts)
)
from ..state import CheckpointState, Owner
from .base import (
    Loaded,
    check_stage_name,  # noqa: F401 (where scripts naming a stage find it)
    is_stage_name,
)
from .files import (
    DataDirs,
    check_lock,
    check_removable,
    create_temp,
    dir_id,
    directory_lost,
    is_data_dir,
    link_temp,
    mode_of,
    open_nofollow,
    regular_mode,
    remove_leftovers,
    unlink_quietly,
)

logger = logging.getLogger("scrapy_checkpoint")

_GEN_RE = re.compile(r"^(snapshot|journal)-(\d{8})\.(bin|log)$")

def read_regular(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file. Raises OSError (FileNotFoundError,
    PermissionError, ...) as reading does, and NotARegularFileError for a directory, FIFO,
    device or socket: opened without blocking, so a FIFO never hangs the reader. A file
    read in one ``os.read`` (its size, and one byte to see it end) is returned as read:
    chunks joined would hold it twice at once (a journal segment or snapshot of tens of
    megabytes, at a resume)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(path, info.st_mode)
        data = os.read(fd, info.st_size + 1)
        if len(data) == info.st_size:  # the whole file: one byte more was asked for
            return data
        chunks = [data]  # it changed since fstat, or a read stopped at 2 GiB: read on
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


def _unreadable(stage: str, exc: OSError, *, write: bool = False) -> UnreadableCheckpointError:
    """The error for a file of ``stage`` that cannot be read (or, ``write``, opened to be
    written; nothing is changed)."""
    path = exc.filename or "a file"
    reason = exc.strerror or str(exc)
    extra = ""
    with contextlib.suppress(OSError):
        info = os.stat(path)
        extra = f" (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)})"
    kept = ("The stage is not damaged, and nothing was changed." if isinstance(exc, PermissionError)
            else "Nothing was changed.")
    return UnreadableCheckpointError(
        f"Cannot {'write' if write else 'read'} {path}{extra} of stage {stage!r}: {reason}. "
        f"{kept} Run "
        f"as the user who owns the checkpoint, fix the file's permissions, or move the "
        f"file away.")


def _tail_missing(store: FileStore, stage: str, gen: int) -> str:
    """The problem of a stage whose newest snapshot is ``gen`` and which has no segment from
    ``gen`` on: a compaction makes segment N before it writes snapshot N, so it was deleted."""
    return (f"{store.segment_path(stage, gen).name}, the journal after the newest snapshot "
            f"{store.snapshot_path(stage, gen).name}, is missing (deleted): what was committed "
            f"after that snapshot is not in the checkpoint, and those units run again")


def _open_lock(stage: str, path: Path, flags: int, *, follow: bool = False) -> int:
    """Open ``stage``'s lock file (through a link only with ``follow``, to read whether it
    is held); a lock file the user may not open raises the one-paragraph error of
    :func:`_unreadable`, and so does a directory, FIFO, device or socket in its place
    when it is opened to be held (not without ``follow``: nothing is written to it)."""
    try:
        fd = os.open(path, flags) if follow else open_nofollow(path, flags, 0o644)
    except PermissionError as exc:
        raise _unreadable(stage, exc, write=bool(flags & (os.O_WRONLY | os.O_RDWR))) from None
    except IsADirectoryError:
        raise _unreadable(stage, NotARegularFileError(path, stat.S_IFDIR)) from None
    mode = os.fstat(fd).st_mode
    if not follow and not stat.S_ISREG(mode):
        os.close(fd)
        raise _unreadable(stage, NotARegularFileError(path, mode))
    return fd


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


def _write_owner(fd: int, owner: Owner) -> None:
    """Name ``owner`` in the lock file ``fd`` holds; if that fails (a full disk), close it
    (which drops the lock) and raise."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.model_dump_json().encode(), 0)
    except OSError:
        os.close(fd)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Sequence[bytes | memoryview], *,
                 backup: Path | None = None, mode: int | None = None) -> None:
    """Write ``data`` (bytes, or parts written one after the other) to ``path`` so a reader
    sees the old or the new file, whole.

    A temp file with an unpredictable name beside ``path`` (created exclusively, never
    through a link), fsync, hard-link the current file to ``backup``, rename, fsync the
    directory. The file keeps the mode of the one it replaces; a new one gets ``mode``
    (by default 0o644 less the umask). A failure removes the temp file; one a crash
    leaves is removed by the next :meth:`FileStore.lock` of the stage. Raises
    CheckpointWriteError if ``path`` is a symbolic link, OSError as writing does.
    """
    StagedWrite(path, data, mode=mode).install(backup=backup)


def is_checkpoint_file(store: object, path: str | os.PathLike[str],
                       stage: str | None = None) -> bool:
    """True if ``path`` (a link in its directories followed) is a file of file store
    ``store``: a stage's state, backup or lock file, or anything in a stage's data
    directory (``stage``'s too, known yet or not). Always False for other stores. An
    output or an export written there would replace recorded progress."""
    if not isinstance(store, FileStore):
        return False
    root = os.path.realpath(store.directory)
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    name = os.path.basename(os.fspath(path))
    if os.path.commonpath([root, parent]) != root:
        return False
    stages = {*store.stages(), *([stage] if stage else [])}
    if parent != root:  # in a stage's data directory
        return os.path.relpath(parent, root).split(os.sep)[0] in stages
    return any(name in (f"{s}.json", f"{s}.json.bak", f"{s}.lock") for s in stages)


class StagedWrite:
    """An :func:`atomic_write` in two steps: the bytes go to the temp file when it is made
    (on the caller's thread: ``data`` may be memory that is only valid during the call),
    :meth:`install` (fsync, rename) comes later, or :meth:`discard`. Raises as
    :func:`atomic_write`; a failure removes the temp file."""

    def __init__(self, path: Path, data: bytes | Sequence[bytes | memoryview], *,
                 mode: int | None = None) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            found = regular_mode(path)
            if not stat.S_ISREG(found):  # a directory, FIFO...: named, not replaced
                raise NotARegularFileError(path, found)
            mode = stat.S_IMODE(found)
        self._fd, self._tmp = create_temp(path, 0o644 if mode is None else mode)
        try:
            if mode is not None:
                os.fchmod(self._fd, mode)  # exactly the user's mode, whatever the umask
            for part in [data] if isinstance(data, bytes) else data:
                _write_all(self._fd, part)
        except BaseException:
            self.discard()
            raise

    def install(self, *, backup: Path | None = None) -> None:
        """Make the written file ``path`` (see :func:`atomic_write`)."""
        path, tmp = self.path, self._tmp
        try:
            try:
                os.fsync(self._fd)
            finally:
                self._close()
            if backup is not None and os.path.isdir(backup) and not os.path.islink(backup):
                raise NotARegularFileError(backup, stat.S_IFDIR)
            if backup is not None and os.path.lexists(path):
                bak_tmp = link_temp(path, backup)
                try:
                    os.replace(bak_tmp, backup)
                except BaseException:
                    unlink_quietly(bak_tmp)
                    raise
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        _fsync_dir(path.parent)

    def discard(self) -> None:
        """Give the write up: the temp file is removed."""
        self._close()
        unlink_quietly(self._tmp)

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


#: Bytes of request records a writer that does not buffer its groups (``flush`` and
#: ``fsync`` durability) keeps before writing them: small, so the buffer stays a heap
#: block of its own size rather than a megabyte grown and shrunk at every commit.
RECORD_BUFFER = 1 << 16

#: A batch frame's header as first buffered: length and crc32 to come, then the mark.
_BATCH_HEAD = bytes(FRAME_HEAD.size) + BATCH_MARK


class SegmentWriter:
    """Appends frames to one segment file with ``os.write`` (no Python buffer).

    In ``none`` durability frames are kept in the process up to ``buffer_limit``
    bytes; otherwise each group reaches the OS when it is committed, so it
    survives the death of the process, and request records wait for the next group
    or reach the OS once :data:`RECORD_BUFFER` bytes of them are buffered. Fsync is
    the caller's decision.

    The buffer is written from where it is (no copy): a copy of up to a megabyte per
    commit, freed after the write, made glibc's malloc raise its mmap threshold to its
    size, after which such blocks came from the heap and fragmented it.

    A write that fails (a full disk, an I/O error) cuts the file back to the end of its
    last whole frame, so no later frame ever sits behind a torn one, and keeps the
    frames it could not write: the next append or flush writes them first (a retry once
    there is space loses nothing and writes nothing twice). If the cut itself fails, or
    an fsync failed (the OS may have dropped the data), or the segment was deleted or its
    directory replaced, nothing more is written: every later append raises.
    """

    def __init__(self, path: str, *, truncate_at: int | None = None, buffered: bool = False,
                 buffer_limit: int = 1 << 20, tag: bytes | None = None, gen: int = 0,
                 lock: tuple[Path, tuple[int, int]] | None = None) -> None:
        self.path = path
        #: The stage's lock file held while writing, and its identity (see check_lock).
        self._lock = lock
        #: The segment's generation (the high bits of the refs of its request records).
        self.gen = gen
        self._fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
        #: Where the open batch of request records starts in ``_buf`` (None: none open).
        self._batch: int | None = None
        #: Bytes in the file that end with a whole frame (where a failed write cuts back to).
        self._written = size
        #: The error every later write raises, once nothing more may be written.
        self._broken: OSError | CheckpointWriteError | None = None
        self._dir = os.path.dirname(path) or "."
        self._dir_id = dir_id(self._dir)

    @property
    def fd(self) -> int:
        """The segment's file descriptor (-1 once closed)."""
        return self._fd

    def append(self, payload: bytes) -> None:
        """Frame ``payload`` (length, crc32) and write it (see :meth:`JournalWriter.append`).

        Raises OSError if the write fails (the frame is kept and written by the next
        append or flush), CheckpointWriteError if the segment was deleted or its directory
        replaced."""
        data = frame(payload)
        self.size += len(data)
        self._close_batch()
        if self._buffered or self._buf:
            self._buf += data
            if not self._buffered or len(self._buf) >= self._buffer_limit:
                self.flush()
        else:
            try:
                self._write(data)
            except OSError:
                self._buf += data
                raise

    def put_request(self, code: int, data: bytes) -> int:
        """Add a request record for unit ``code`` (see :meth:`JournalWriter.put_request`):
        buffered, it is written with the next group, in a batch frame with the other
        records before it; returns its ref (generation, offset of its own frame)."""
        if self._broken is not None:
            raise type(self._broken)(*self._broken.args)
        if self._batch is None:  # the batch's frame header and mark, filled in when closed
            self._batch = len(self._buf)
            self._buf += _BATCH_HEAD
            self.size += len(_BATCH_HEAD)
        framed = frame(encode_request(code, data))
        ref = (self.gen << OFFSET_BITS) | self.size
        self.size += len(framed)
        self._buf += framed
        if len(self._buf) >= (self._buffer_limit if self._buffered
                              else min(self._buffer_limit, RECORD_BUFFER)):
            self.flush()
        return ref

    def _close_batch(self) -> None:
        """Fill in the open batch's frame header (its length and checksum)."""
        start = self._batch
        if start is None:
            return
        self._batch = None
        with memoryview(self._buf) as buf:
            body = buf[start + 8:]
            FRAME_HEAD.pack_into(buf, start, len(body), zlib.crc32(body))
            body.release()

    def unwritten(self, ref: int, size: int) -> bytes | None:
        """The ``size`` bytes at ``ref`` if they are still in the buffer, else None."""
        offset = ref & ((1 << OFFSET_BITS) - 1)
        if ref >> OFFSET_BITS != self.gen or offset < self._written:
            return None
        start = offset - self._written
        return bytes(self._buf[start:start + size])

    def flush(self) -> None:
        """Write the buffered frames (``none`` durability, or kept after a failed write)
        with ``os.write``; on failure they stay buffered (see the class doc)."""
        self._close_batch()
        if self._buf:
            self._write(self._buf)
            self._buf.clear()

    def _write(self, data: bytes | bytearray) -> None:
        """Write whole frames at the end of the file, or cut back and raise."""
        if self._broken is not None:
            raise type(self._broken)(*self._broken.args)
        self.check_place()
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._written)  # O_APPEND: the next write lands here
            except OSError as cut:
                self._broken = OSError(cut.errno, f"a torn frame after byte {self._written} "
                                       f"could not be cut ({cut.strerror})", self.path)
            raise exc
        self._written += len(data)

    def check_place(self) -> None:
        """Raise CheckpointWriteError if the segment is no longer linked in the directory it
        was opened in, under its name (deleted, renamed away or replaced: by another file or
        a link; or the directory deleted or replaced)."""
        try:
            info = os.fstat(self._fd)
            found = os.lstat(self.path)
            gone = (info.st_nlink == 0 or found.st_ino != info.st_ino
                    or found.st_dev != info.st_dev or dir_id(self._dir) != self._dir_id)
        except FileNotFoundError:
            gone = True
        if gone:
            self._broken = directory_lost(Path(self._dir), Path(self.path))
            raise type(self._broken)(*self._broken.args)
        try:
            check_lock(self._lock)
        except CheckpointWriteError as exc:
            self._broken = exc
            raise

    def fsync(self) -> None:
        """:meth:`flush`, then fsync the segment."""
        self.flush()
        self._fsync()

    def sync(self) -> None:
        """fsync what reached the OS (from the I/O thread; a closed segment was synced)."""
        if self._fd < 0:  # closed before this queued sync ran (a close after a failed write)
            return
        try:
            self._fsync()
        except OSError as exc:
            if exc.errno != errno.EBADF:  # rotated and closed meanwhile
                raise

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                # The OS may have dropped the pages it could not write: what the file
                # shows may not be on disk, and no later fsync would tell.
                self._broken = OSError(exc.errno, f"an fsync failed ({exc.strerror}): the "
                                       f"OS may have dropped what it could not write", self.path)
            raise

    def close(self) -> None:
        """Flush and close the file (no fsync). Idempotent. The file is closed even if the
        flush fails (what it could not write is dropped, as if the process had died)."""
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` with ``os.write``. Views of ``data`` are released on return and
    on failure: a bytearray (the writer's buffer) can grow again after either."""
    with memoryview(data) as whole:
        done, size = 0, len(whole)
        while done < size:
            with whole[done:] as rest:
                done += os.write(fd, rest)


class FileRequestReader:
    """Reads a stage's request records from its journal segments (``pread``), and from
    its writer's buffer for records not yet written (:attr:`writer`)."""

    def __init__(self, store: FileStore, stage: str) -> None:
        self._store, self._stage = store, stage
        self._fds: dict[int, int] = {}
        #: The stage's writer, when this process writes it.
        self.writer: SegmentWriter | None = None

    def read(self, ref: int, length: int, code: int) -> bytes:
        """See :meth:`RequestReader.read`."""
        size = FRAME_HEAD.size + REQUEST_OVERHEAD + length
        raw = self.writer.unwritten(ref, size) if self.writer is not None else None
        if raw is None:
            raw = os.pread(self._fd(ref >> OFFSET_BITS), size, ref & ((1 << OFFSET_BITS) - 1))
        if len(raw) != size:
            raise ValueError("request record cut short")
        n, crc = FRAME_HEAD.unpack_from(raw, 0)
        body = memoryview(raw)[FRAME_HEAD.size:]
        if n != len(body) or zlib.crc32(body) != crc:
            raise ValueError("request record damaged (length or checksum)")
        return decode_request(body, code)

    def _fd(self, gen: int) -> int:
        fd = self._fds.get(gen)
        if fd is None:
            if len(self._fds) >= 8:
                self.close()
            fd = self._fds[gen] = open_nofollow(self._store.segment_path(self._stage, gen),
                                                os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Close the files it keeps open (reopened when needed)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


class FileStore:
    """Stages kept as files under one directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(os.path.abspath(directory))  # the same files after a chdir
        self.location = str(Path(directory))
        self._dirs = DataDirs()

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
            elif entry.is_dir() and is_stage_name(name) and is_data_dir(entry, name, _GEN_RE):
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
        """Take the stage's lock or raise :class:`CheckpointLockedError`; then remove the temp
        files and the half-removed data a crash of an earlier holder left. Raises
        CheckpointWriteError if the lock file is a symbolic link."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(stage)
        while True:
            fd = _open_lock(stage, path, os.O_RDWR | os.O_CREAT)
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
        _write_owner(fd, owner)
        remove_leftovers(self.directory, self.data_dir(stage), stage)
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
            fd = _open_lock(stage, path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                            follow=True)
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
        """See :meth:`Store.write_state`: :func:`atomic_write`, the old file kept as backup.
        Raises CheckpointWriteError if the stage's directory was deleted or replaced since
        it was opened (nothing is recreated)."""
        if self._dirs.is_open(stage):
            self._dirs.check(stage, self.data_dir(stage))
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(self.state_path(stage), data, backup=self.backup_path(stage))
        except FileNotFoundError:
            self._dirs.check(stage, self.data_dir(stage))  # deleted meanwhile: say so
            raise

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
                        unreachable=unreachable, generation=base_gen,
                        requests=self.request_reader(stage))
        stopped = False
        expected = base_gen
        if header is not None and not any(g >= base_gen for g in segs):
            problems.append(_tail_missing(self, stage, base_gen))
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
                scan = scan_segment(read_regular(path), decode_record,
                                    skip=(REQUEST_MARK, BATCH_MARK))
            except FileNotFoundError as exc:  # removed meanwhile (a reset): stop before it
                scan = SegmentScan(problem=str(exc))
            scan.payloads = [group for group in scan.payloads if group is not None]
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
        """See :meth:`Store.open_segment`: segment file ``gen``, cut at ``truncate_at`` bytes.

        Never through a link (CheckpointWriteError). A compaction's new segment is created
        exclusively, with the mode of the one before, in the directory the stage was opened
        in: if that was deleted or replaced, CheckpointWriteError (nothing is recreated)."""
        if truncate_at is None:
            self._dirs.create_segment(stage, self.segment_path(stage, gen),
                                      self.segment_path(stage, gen - 1))
        else:
            self._dirs.open(stage, self.data_dir(stage))
        return SegmentWriter(str(self.segment_path(stage, gen)), truncate_at=truncate_at,
                             buffered=buffered, tag=segment_tag(stage, gen), gen=gen,
                             lock=self._dirs.lock_of(stage))

    def request_reader(self, stage: str, writer: Any = None) -> FileRequestReader:
        """See :meth:`Store.request_reader`."""
        reader = FileRequestReader(self, stage)
        reader.writer = writer
        return reader

    def stage_snapshot(self, stage: str, gen: int,
                       parts: Sequence[bytes | memoryview]) -> StagedWrite:
        """See :meth:`Store.stage_snapshot`: the parts go to the snapshot's temp file (a
        :class:`StagedWrite`; a new snapshot gets the mode of the segment before it, taken
        before segment ``gen`` is made)."""
        self._dirs.check(stage, self.data_dir(stage))
        return StagedWrite(self.snapshot_path(stage, gen), parts,
                           mode=mode_of(self.segment_path(stage, gen - 1)))

    def discard_snapshot(self, staged: Any) -> None:
        """See :meth:`Store.discard_snapshot`: the temp file goes."""
        if isinstance(staged, StagedWrite):
            staged.discard()

    def write_snapshot(self, stage: str, gen: int, blob: Any,
                       freed: Sequence[int] = ()) -> None:
        """See :meth:`Store.write_snapshot` (:func:`atomic_write`; a new snapshot gets the
        mode of its segment)."""
        self._dirs.check(stage, self.data_dir(stage))
        if isinstance(blob, StagedWrite):
            blob.install()
            return
        atomic_write(self.snapshot_path(stage, gen), blob,
                     mode=mode_of(self.segment_path(stage, gen)))

    def retain(self, stage: str, keep: int) -> None:
        """Keep the newest ``keep`` snapshots and the journal segments they need: those
        from the oldest kept one on, and older ones holding request records of their
        pending or failed units (their ``places``)."""
        snaps = self._generations(stage, "snapshot")
        if len(snaps) <= keep:
            return
        oldest_kept = snaps[-keep]
        needed: set[int] = set()
        for gen in snaps[-keep:]:
            places = _snapshot_places(self.snapshot_path(stage, gen))
            if places is None:  # unreadable: keep every segment it might need
                return
            needed.update(places)
        for gen in snaps[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                self.snapshot_path(stage, gen).unlink()
        for gen in self._generations(stage, "journal"):
            if gen < oldest_kept and gen not in needed:
                with contextlib.suppress(FileNotFoundError):
                    self.segment_path(stage, gen).unlink()

    # -- whole stages ------------------------------------------------------------

    def remove(self, stage: str) -> None:
        """Delete every file of the stage. The caller holds the lock.

        In an order that leaves the stage whole or removed wherever a crash cuts it, never
        an older state: the state file and its backup first (the journal alone is the
        whole stage), then the data directory is renamed away in one step and deleted
        (what a crash leaves of it, the next :meth:`lock` deletes). Raises
        CheckpointWriteError, deleting nothing, if the data directory is a symbolic link,
        a file, or holds files that are not the stage's (see :func:`check_removable`).
        """
        data = self.data_dir(stage)
        check_removable(data, stage)  # a link, a user's file or folder: nothing deleted
        for path in (self.state_path(stage), self.backup_path(stage)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._dirs.forget(stage)
        trash = self.directory / f".{stage}.removing-{os.urandom(8).hex()}"
        try:
            _fsync_dir(self.directory)
            os.rename(data, trash)
        except FileNotFoundError:
            return
        _fsync_dir(self.directory)
        shutil.rmtree(trash, ignore_errors=True)

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


def _snapshot_places(path: Path) -> list[int] | None:
    """The ``places`` a snapshot's header names (segments holding its units' request
    records), read without its sections; None if it cannot be read."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.pread(fd, 16, 0)
        if len(head) != 16:
            return None
        hlen, crc = struct.unpack_from("<II", head, 8)
        data = os.pread(fd, hlen, 16)
        if len(data) != hlen or zlib.crc32(data) != crc:
            return None
        places = load_json(data).get(PLACES, [])
        return [int(p) for p in places]
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    finally:
        os.close(fd)


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
