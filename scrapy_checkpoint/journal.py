"""The journal: append-only segments of framed, checksummed records.

A frame is ``<u32 payload length><u32 crc32(payload)><payload>``. A segment
starts with an 8-byte magic. Replay stops at the first frame that is short or
fails its checksum: every prefix of the journal is a consistent state, so the
tail after a torn write only means some units are redone.

Each payload is one *group* (see :func:`encode_group`): everything committed
at once, so a group is applied whole or not at all.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .state import Status

SEGMENT_MAGIC = b"SCKJRNL1"
_STATUSES = frozenset(s.value for s in Status)
_FRAME = struct.Struct("<II")
_GROUP_HEADER = struct.Struct("<I")
#: A frame longer than this is treated as garbage, not as a reason to allocate.
MAX_PAYLOAD = 1 << 30


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class SegmentScan:
    """What a segment holds: its good records and where they end."""

    payloads: list[Any] = field(default_factory=list)
    #: Offset just after the last good frame (where appending must resume).
    good_bytes: int = 0
    #: Bytes after ``good_bytes`` that were not replayed.
    dropped_bytes: int = 0
    #: Why replay stopped early, if it did.
    problem: str | None = None


def scan_segment(data: bytes, decode: Callable[[bytes], Any] | None = None) -> SegmentScan:
    """Split a segment into payloads, stopping at the first bad frame (or the first
    payload ``decode`` rejects with ValueError); with ``decode``, ``payloads`` holds what
    it returned. Never raises."""
    scan = SegmentScan()
    if len(data) < len(SEGMENT_MAGIC) or not data.startswith(SEGMENT_MAGIC):
        scan.dropped_bytes = len(data)
        if data:
            scan.problem = "segment header missing or damaged"
        return scan
    pos = len(SEGMENT_MAGIC)
    end = len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < _FRAME.size:
            scan.problem = "torn frame header"
            break
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        if length > MAX_PAYLOAD or start + length > end:
            scan.problem = "torn or oversized frame"
            break
        payload = view[start : start + length]
        if zlib.crc32(payload) != crc:
            scan.problem = "checksum mismatch"
            break
        record: Any = bytes(payload) if decode is None else payload
        if decode is not None:
            try:
                record = decode(record)
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                scan.problem = f"unreadable record ({exc})"
                break
        scan.payloads.append(record)
        pos = start + length
    scan.good_bytes = pos
    scan.dropped_bytes = end - pos
    return scan


# -- groups ------------------------------------------------------------------


def _codes_bytes(codes: list[int]) -> bytes:
    a = array("Q", codes)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def _codes_from(data: memoryview) -> array[int]:
    # Kept as an array (8 bytes a code): replay may hold many groups at once.
    a = array("Q")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def encode_group(done: list[int], failed: list[int], fields: dict[str, Any]) -> bytes:
    """One group: counters and other fields as JSON, unit codes as packed uint64.

    ``done`` holds the codes of units finished successfully, ``failed`` those
    finished with a failure (also done: they are skipped unless retried).
    """
    header = dict(fields)
    header["d"] = len(done)
    header["f"] = len(failed)
    head = _ENCODER.encode(header).encode()
    return b"".join((_GROUP_HEADER.pack(len(head)), head, _codes_bytes(done), _codes_bytes(failed)))


@dataclass
class Group:
    done: array[int]
    failed: array[int]
    fields: dict[str, Any]


def decode_group(payload: bytes | memoryview) -> Group:
    """Inverse of :func:`encode_group`. Raises ValueError on a malformed payload."""
    (hlen,) = _GROUP_HEADER.unpack_from(payload, 0)
    start = _GROUP_HEADER.size
    fields = json.loads(bytes(payload[start : start + hlen]))
    if not isinstance(fields, dict):
        raise ValueError("group header is not an object")
    n_done, n_failed = int(fields.pop("d")), int(fields.pop("f"))
    view = memoryview(payload)[start + hlen :]
    if len(view) != 8 * (n_done + n_failed):
        raise ValueError("group key section has the wrong length")
    if "st" in fields and fields["st"] not in _STATUSES:
        raise ValueError(f"unknown status {fields['st']!r}")
    if "c" in fields and not (isinstance(fields["c"], list) and len(fields["c"]) == 4):
        raise ValueError("bad counters")
    return Group(_codes_from(view[: 8 * n_done]), _codes_from(view[8 * n_done :]), fields)


# -- writing -----------------------------------------------------------------


class SegmentWriter:
    """Appends frames to one segment file with ``os.write`` (no Python buffer).

    In ``none`` durability frames are kept in the process up to ``buffer_limit``
    bytes; otherwise each group reaches the OS when it is committed, so it
    survives the death of the process. Fsync is the caller's decision.
    """

    def __init__(self, path: str, *, truncate_at: int | None = None, buffered: bool = False,
                 buffer_limit: int = 1 << 20) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        size = os.fstat(self._fd).st_size
        if truncate_at is not None and truncate_at < size:
            os.ftruncate(self._fd, truncate_at)
            size = truncate_at
        if size == 0:
            _write_all(self._fd, SEGMENT_MAGIC)
            size = len(SEGMENT_MAGIC)
        self.size = size
        self._buffered = buffered
        self._buffer_limit = buffer_limit
        self._buf = bytearray()

    @property
    def fd(self) -> int:
        return self._fd

    def append(self, payload: bytes) -> None:
        data = frame(payload)
        self.size += len(data)
        if self._buffered:
            self._buf += data
            if len(self._buf) >= self._buffer_limit:
                self.flush()
        else:
            _write_all(self._fd, data)

    def flush(self) -> None:
        if self._buf:
            _write_all(self._fd, bytes(self._buf))
            self._buf.clear()

    def fsync(self) -> None:
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
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
