"""Arrays of integers to and from little-endian bytes, the byte order of every format here."""

from __future__ import annotations

import json
import sys
import zlib
from array import array
from collections.abc import Iterable
from typing import Any


def le_bytes(values: array[int] | Iterable[int], typecode: str) -> bytes:
    """``values`` as little-endian ``typecode`` items (``"Q"``, ``"I"``, ``"i"``)."""
    a = values if isinstance(values, array) and values.typecode == typecode \
        else array(typecode, values)
    if sys.byteorder != "little":
        a = array(typecode, a)
        a.byteswap()
    return a.tobytes()


def le_view(values: array[int], typecode: str, copy: bool = True) -> bytes | memoryview:
    """``values`` (an array of ``typecode``) as little-endian bytes: :func:`le_bytes`, or
    with ``copy`` False on a little-endian machine the array's own memory (a memoryview:
    while it is held the array cannot grow; release it first)."""
    if copy or sys.byteorder != "little" or values.typecode != typecode:
        return le_bytes(values, typecode)
    return memoryview(values).cast("B")


def from_le(data: bytes | memoryview, typecode: str) -> array[int]:
    """An array of ``typecode`` items read from little-endian ``data``."""
    a = array(typecode)
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def crc_of(parts: Iterable[bytes | memoryview]) -> int:
    """The CRC-32 of ``parts`` one after the other (as of their concatenation)."""
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def checked(data: bytes | memoryview, start: int, length: int, crc: int, what: str) -> memoryview:
    """``length`` bytes of ``data`` from ``start``; ValueError naming ``what`` if they are
    cut short or their CRC-32 is not ``crc``."""
    body = memoryview(data)[start:start + length]
    if len(body) != length:
        raise ValueError(f"{what} cut short")
    if zlib.crc32(body) != crc:
        raise ValueError(f"{what} checksum mismatch")
    return body


__all__ = ["checked", "crc_of", "from_le", "le_bytes", "le_view"]


def load_json(data: str | bytes | bytearray | memoryview) -> Any:
    """``json.loads(data)``, raising ValueError for every text that is not JSON the parser
    can hold, a value nested too deeply included (RecursionError from the parser: a crafted
    record of 100,000 brackets must be damage like any other, not a traceback)."""
    try:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except RecursionError:
        raise ValueError("JSON value nested too deeply") from None
