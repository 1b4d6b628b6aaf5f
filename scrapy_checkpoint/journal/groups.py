"""Journal groups: one commit's worth of changes as one record (bytes only, no I/O).

A group is ``<u32 header length><JSON header><done codes><failed codes>``; the
codes are packed little-endian uint64 (see :mod:`.keys`). The header holds the
fields below, each optional, under short keys to keep records small.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Any

from ..state import Status

_STATUSES = frozenset(s.value for s in Status)
_GROUP_HEADER = struct.Struct("<I")

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
