"""Journal frames: append-only segments of framed, checksummed records (bytes only, no I/O).

A frame is ``<u32 payload length><u32 crc32(payload)><payload>``. A segment
starts with an 8-byte magic. Replay stops at the first frame that is short or
fails its checksum: every prefix of the journal is a consistent state, so the
tail after a torn write only means some units are redone.

Each payload is one *group* (see :mod:`.groups`): everything committed at
once, so a group is applied whole or not at all.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SEGMENT_MAGIC = b"SCKJRNL1"
#: A frame's header: the payload's length and CRC-32 (``<u32 length><u32 crc32>``).
FRAME_HEAD = struct.Struct("<II")
#: A frame longer than this is treated as garbage, not as a reason to allocate.
MAX_PAYLOAD = 1 << 30


def frame(payload: bytes) -> bytes:
    """``payload`` framed: ``<u32 length><u32 crc32>`` then the payload bytes."""
    return FRAME_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


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


def scan_segment(data: bytes, decode: Callable[[bytes], Any] | None = None, *,
                 skip: tuple[bytes, ...] = ()) -> SegmentScan:
    """Split a segment into payloads, stopping at the first bad frame (or the first
    payload ``decode`` rejects with ValueError); with ``decode``, ``payloads`` holds what
    it returned. Payloads that start with one of ``skip`` (4 bytes each: request records
    and batches of them) are checked (frame and checksum) and left out, without a call
    to ``decode``. Never raises."""
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
        if end - pos < FRAME_HEAD.size:
            scan.problem = "torn frame header"
            break
        length, crc = FRAME_HEAD.unpack_from(data, pos)
        start = pos + FRAME_HEAD.size
        if length > MAX_PAYLOAD or start + length > end:
            scan.problem = "torn or oversized frame"
            break
        payload = view[start : start + length]
        if zlib.crc32(payload) != crc:
            scan.problem = "checksum mismatch"
            break
        if skip and bytes(payload[:4]) in skip:
            pos = start + length
            continue
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
