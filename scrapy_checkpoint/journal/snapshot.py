"""Snapshots: the whole committed state of a stage at the start of a journal segment.

``<8-byte magic><u32 header length><u32 crc32(header)><JSON header>
<u64 number of codes><u32 crc32(codes)><done codes as little-endian uint64>``, and
in a ``SCKSNAP2`` snapshot then ``<u32 crc32(times)><done times as little-endian
uint32>``, one Unix second per code, in the codes' order, and in a ``SCKSNAP4``
snapshot then the frontier's index (:meth:`.pending.PendingIndex.to_bytes`: the
pending units and where their request records are, and the table that finds them by
code; the payloads themselves stay in the journal). A ``SCKSNAP3`` snapshot (its index
followed by a code map of codes and positions) is still read, its table built anew. A
``SCKSNAP1`` snapshot (written before done times were kept) is
still read: its units are taken as done at the time its state was last updated;
``SCKSNAP1`` and ``SCKSNAP2`` headers hold the pending payloads themselves. The same
bytes are kept by every store (a file, a Redis value). Bytes only, no I/O.
"""

from __future__ import annotations

import json
import struct
import zlib
from datetime import datetime
from typing import Any

from .arrays import load_json
from .doneset import MAX_TIME, DoneSet
from .groups import MAX_COUNT, is_codes, is_state, is_units, output_entry
from .pending import PendingIndex

#: Snapshots without done times (read only).
SNAPSHOT_MAGIC_V1 = b"SCKSNAP1"
#: Snapshots with a done time per code, pending payloads in the header (read only).
SNAPSHOT_MAGIC_V2 = b"SCKSNAP2"
#: Snapshots with a done time per code and the frontier's index with a code map (read only).
SNAPSHOT_MAGIC_V3 = b"SCKSNAP3"
#: Snapshots with a done time per code and the frontier's index with its table (written).
SNAPSHOT_MAGIC = b"SCKSNAP4"
#: Every snapshot magic a reader takes.
SNAPSHOT_MAGICS = (SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V3, SNAPSHOT_MAGIC_V2, SNAPSHOT_MAGIC_V1)
_SNAP_HEAD = struct.Struct("<II")  # header length, crc32(header)
_SNAP_CODES = struct.Struct("<QI")  # number of codes, crc32(codes)
_SNAP_TIMES = struct.Struct("<I")  # crc32(times)
#: Header key: the done set's ``now`` when the snapshot was taken (Unix seconds), the
#: time of the units the next group records.
DONE_NOW = "done_now"
#: Header key of a decoded ``SCKSNAP3`` snapshot: its frontier's index (a PendingIndex
#: without a reader; never in the stored JSON).
PENDING_INDEX = "pending_index"
#: Header key: the journal generations the records of its pending and failed units are
#: in (retention keeps them).
PLACES = "places"
#: Header key: the index's counts (:meth:`PendingIndex.counts`), read back without a pass.
INDEX_COUNTS = "index_counts"


def encode_snapshot(header: dict[str, Any], done_bytes: bytes,
                    times_bytes: bytes | None = None,
                    pending_bytes: bytes | list[bytes | memoryview] | None = None) -> bytes:
    """A snapshot of ``header`` (JSON-serialisable), ``done_bytes`` (packed codes),
    ``times_bytes`` (packed done times, one per code: :meth:`DoneSet.times_bytes`) and
    ``pending_bytes`` (:meth:`PendingIndex.to_bytes`, or its parts). Without
    ``pending_bytes`` it is a ``SCKSNAP2`` snapshot, without ``times_bytes`` too a
    ``SCKSNAP1`` one, as written before."""
    return b"".join(snapshot_parts(header, done_bytes, times_bytes, pending_bytes))


def snapshot_parts(header: dict[str, Any], done_bytes: bytes, times_bytes: bytes | None = None,
                   pending_bytes: bytes | list[bytes | memoryview] | None = None
                   ) -> list[bytes | memoryview]:
    """:func:`encode_snapshot` in parts, not joined (a store writes them one after the
    other: the large sections are not copied again)."""
    head = json.dumps(header, separators=(",", ":"), default=str).encode()
    magic = (SNAPSHOT_MAGIC_V1 if times_bytes is None
             else SNAPSHOT_MAGIC_V2 if pending_bytes is None else SNAPSHOT_MAGIC)
    parts: list[bytes | memoryview] = [
        magic,
        _SNAP_HEAD.pack(len(head), zlib.crc32(head)),
        head,
        _SNAP_CODES.pack(len(done_bytes) // 8, zlib.crc32(done_bytes)),
        done_bytes,
    ]
    if times_bytes is not None:
        if len(times_bytes) * 2 != len(done_bytes):
            raise ValueError("one done time (4 bytes) is needed per code (8 bytes)")
        parts += [_SNAP_TIMES.pack(zlib.crc32(times_bytes)), times_bytes]
        if isinstance(pending_bytes, list):
            parts += pending_bytes
        elif pending_bytes is not None:
            parts.append(pending_bytes)
    return parts


def decode_snapshot(data: bytes) -> tuple[dict[str, Any], DoneSet]:
    """Raise ValueError unless ``data`` is a whole, checksummed snapshot."""
    try:
        return _decode(data)
    except struct.error:
        raise ValueError("snapshot is cut short") from None


def decode_header(data: bytes) -> dict[str, Any]:
    """The JSON header of snapshot ``data``, checked (magic, checksum, shape), without
    reading its sections (e.g. its :data:`PLACES`). Raises ValueError as
    :func:`decode_snapshot` does for a damaged header."""
    try:
        return _header(data)[0]
    except struct.error:
        raise ValueError("snapshot is cut short") from None


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    """The checked header of snapshot ``data`` and the offset of the section after it."""
    if not data.startswith(SNAPSHOT_MAGICS):
        raise ValueError("not a snapshot (bad magic)")
    pos = len(SNAPSHOT_MAGIC)
    hlen, hcrc = _SNAP_HEAD.unpack_from(data, pos)
    pos += _SNAP_HEAD.size
    head = data[pos : pos + hlen]
    if len(head) != hlen or zlib.crc32(head) != hcrc:
        raise ValueError("snapshot header checksum mismatch")
    header = load_json(head)
    check_header(header)
    return header, pos + hlen


def _decode(data: bytes) -> tuple[dict[str, Any], DoneSet]:
    header, pos = _header(data)
    code_map = data.startswith(SNAPSHOT_MAGIC_V3)
    timed = not data.startswith(SNAPSHOT_MAGIC_V1)
    indexed = data.startswith(SNAPSHOT_MAGIC) or code_map
    count, ccrc = _SNAP_CODES.unpack_from(data, pos)
    pos += _SNAP_CODES.size
    view = memoryview(data)
    codes = view[pos : pos + 8 * count]
    pos += 8 * count
    if len(codes) != 8 * count or zlib.crc32(codes) != ccrc:
        raise ValueError("snapshot key section checksum mismatch")
    times = None
    index = None
    if timed:
        if len(data) < pos + _SNAP_TIMES.size:
            raise ValueError("snapshot time section is missing")
        (tcrc,) = _SNAP_TIMES.unpack_from(data, pos)
        pos += _SNAP_TIMES.size
        times = view[pos : pos + 4 * count]
        if len(times) != 4 * count or zlib.crc32(times) != tcrc:
            raise ValueError("snapshot time section checksum mismatch")
        pos += 4 * count
        if indexed:
            index, size = PendingIndex.from_bytes(view[pos:], counts=header.pop(INDEX_COUNTS, None),
                                                 code_map=code_map)
            pos += size
        if len(data) != pos:
            raise ValueError("snapshot has bytes after its last section")
    elif len(data) != pos:
        raise ValueError("snapshot key section checksum mismatch")
    now = header.get(DONE_NOW)
    if not isinstance(now, int) or not 0 <= now <= MAX_TIME:
        now = _updated_at(header)
    done = DoneSet.from_bytes(codes, times, now=now)
    if not done.is_strictly_sorted():
        # Lookups bisect the codes: unsorted, the count and the lookups would disagree.
        raise ValueError("snapshot codes are not sorted (or repeat)")
    if index is not None:
        if "pending" in header:
            raise ValueError("snapshot holds pending units twice")
        index.keep_inline(header.pop("inline", []))
        header[PENDING_INDEX] = index
    return header, done


#: What each snapshot header key may hold (see :meth:`LiveState.snapshot_header`); only
#: ``state`` is required (older snapshots lack some of the others).
_HEADER_CHECKS: dict[str, Any] = {
    "generation": lambda v: type(v) is int and v >= 0,
    "state": is_state,
    "failed": is_units,
    "pending": is_units,
    "inline": is_units,
    PLACES: is_codes,
    INDEX_COUNTS: lambda v: type(v) is dict,
    "started": is_codes,
    "outputs": lambda v: type(v) is dict and all(output_entry(n) for n in v.values()),
    "attached": lambda v: type(v) is dict,
    "user_state": lambda v: True,
    "totals": lambda v: v is None or (type(v) is dict and all(
        type(n) is int and 0 <= n <= MAX_COUNT for n in v.values())),
    DONE_NOW: lambda v: type(v) is int and 0 <= v <= MAX_TIME,
}


def check_header(header: Any) -> None:
    """Raise ValueError unless ``header`` is a snapshot header a writer could have written:
    an object with a valid ``state`` and no unknown key or value of the wrong shape."""
    if not isinstance(header, dict):
        raise ValueError("snapshot header is not an object")
    if "state" not in header:
        raise ValueError("snapshot header has no state")
    for key, value in header.items():
        check = _HEADER_CHECKS.get(key)
        if check is None:
            raise ValueError(f"unknown snapshot header field {key!r}")
        if not check(value):
            raise ValueError(f"snapshot header field {key!r} holds a bad value")


def _updated_at(header: dict[str, Any]) -> int:
    """When the snapshot's state was last updated (Unix seconds; 0 if it does not say): the
    done time of every unit of a snapshot written without times."""
    try:
        value = header["state"]["updated_at"]
        seconds = int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
        return min(max(seconds, 0), MAX_TIME)
    except (KeyError, TypeError, ValueError, OverflowError):
        return 0
