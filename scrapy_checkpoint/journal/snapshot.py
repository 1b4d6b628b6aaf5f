"""Snapshots: the whole committed state of a stage at the start of a journal segment.

``<8-byte magic><u32 header length><u32 crc32(header)><JSON header>
<u64 number of codes><u32 crc32(codes)><done codes as little-endian uint64>``.
The same bytes are kept by every store (a file, a Redis value). Bytes only, no I/O.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from .doneset import DoneSet

SNAPSHOT_MAGIC = b"SCKSNAP1"
_SNAP_HEAD = struct.Struct("<II")  # header length, crc32(header)
_SNAP_CODES = struct.Struct("<QI")  # number of codes, crc32(codes)


def encode_snapshot(header: dict[str, Any], done_bytes: bytes) -> bytes:
    """A snapshot of ``header`` (JSON-serialisable) and ``done_bytes`` (packed codes)."""
    head = json.dumps(header, separators=(",", ":"), default=str).encode()
    return b"".join((
        SNAPSHOT_MAGIC,
        _SNAP_HEAD.pack(len(head), zlib.crc32(head)),
        head,
        _SNAP_CODES.pack(len(done_bytes) // 8, zlib.crc32(done_bytes)),
        done_bytes,
    ))


def decode_snapshot(data: bytes) -> tuple[dict[str, Any], DoneSet]:
    """Raise ValueError unless ``data`` is a whole, checksummed snapshot."""
    if not data.startswith(SNAPSHOT_MAGIC):
        raise ValueError("not a snapshot (bad magic)")
    pos = len(SNAPSHOT_MAGIC)
    hlen, hcrc = _SNAP_HEAD.unpack_from(data, pos)
    pos += _SNAP_HEAD.size
    head = data[pos : pos + hlen]
    if len(head) != hlen or zlib.crc32(head) != hcrc:
        raise ValueError("snapshot header checksum mismatch")
    pos += hlen
    count, ccrc = _SNAP_CODES.unpack_from(data, pos)
    pos += _SNAP_CODES.size
    codes = memoryview(data)[pos:]
    if len(codes) != 8 * count or zlib.crc32(codes) != ccrc:
        raise ValueError("snapshot key section checksum mismatch")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("snapshot header is not an object")
    return header, DoneSet.from_bytes(codes)
