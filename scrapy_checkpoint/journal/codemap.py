"""A map of unit codes (u64) to small ints (u32) in two flat arrays: about 24 bytes a key.

Open addressing with linear probing, at most 60% full: ``keys`` (``array('Q')``) holds
the codes, ``values`` (``array('I')``) what each maps to. A code is already a hash
(:func:`~.keys.key_code`), so its low bits pick its slot. Key 0 marks an empty slot and
key 1 a removed one; the codes 0 and 1 themselves are kept in a small dict. A
``dict[int, int]`` costs about 100 bytes a key (two int objects and its entry); this
costs 12 bytes a slot, and its arrays are written to a snapshot and read back as they
are (:meth:`to_bytes`, :meth:`from_bytes`), so a frontier of a million pending units
loads without a million inserts.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator

from .arrays import checked, crc_of, from_le, le_bytes

_EMPTY, _REMOVED = 0, 1
_HEAD = struct.Struct("<QQI")  # slots, keys in use, crc32 of the arrays
_MIN_SLOTS = 8


class CodeMap:
    """code -> value (u32); see the module docstring. Not thread-safe."""

    __slots__ = ("_filled", "_keys", "_mask", "_small", "_used", "_values")

    def __init__(self, slots: int = _MIN_SLOTS) -> None:
        size = _MIN_SLOTS
        while size < slots:
            size <<= 1
        self._keys = array("Q", bytes(8 * size))
        self._values = array("I", bytes(4 * size))
        self._mask = size - 1
        self._used = 0  # keys in the arrays
        self._filled = 0  # slots not empty (keys and removed marks)
        self._small: dict[int, int] = {}  # the codes 0 and 1

    def __len__(self) -> int:
        return self._used + len(self._small)

    def __contains__(self, code: object) -> bool:
        if type(code) is not int:
            return False
        if code < 2:
            return code in self._small
        keys, mask = self._keys, self._mask
        i = code & mask
        while True:
            k = keys[i]
            if k == code:
                return True
            if k == _EMPTY:
                return False
            i = (i + 1) & mask

    def get(self, code: int, default: int | None = None) -> int | None:
        """The value of ``code``, or ``default``."""
        if code < 2:
            return self._small.get(code, default)
        keys, mask = self._keys, self._mask
        i = code & mask
        while True:
            k = keys[i]
            if k == code:
                return self._values[i]
            if k == _EMPTY:
                return default
            i = (i + 1) & mask

    def __setitem__(self, code: int, value: int) -> None:
        if code < 2:
            self._small[code] = value
            return
        keys, mask = self._keys, self._mask
        i = code & mask
        free = -1
        while True:
            k = keys[i]
            if k == code:
                self._values[i] = value
                return
            if k == _EMPTY:
                break
            if k == _REMOVED and free < 0:
                free = i
            i = (i + 1) & mask
        if free >= 0:
            i = free
        else:
            self._filled += 1
        keys[i] = code
        self._values[i] = value
        self._used += 1
        if self._filled * 5 > (mask + 1) * 3:
            self._resize()

    def pop(self, code: int, default: int | None = None) -> int | None:
        """Remove ``code``; its value, or ``default`` if it was not there."""
        if code < 2:
            return self._small.pop(code, default)
        keys, mask = self._keys, self._mask
        i = code & mask
        while True:
            k = keys[i]
            if k == code:
                keys[i] = _REMOVED
                self._used -= 1
                return self._values[i]
            if k == _EMPTY:
                return default
            i = (i + 1) & mask

    def items(self) -> Iterator[tuple[int, int]]:
        """``(code, value)`` pairs, in no particular order."""
        yield from self._small.items()
        values = self._values
        for i, k in enumerate(self._keys):
            if k > _REMOVED:
                yield k, values[i]

    def _resize(self) -> None:
        """Move to twice (or, with many removed marks, the same number of) slots."""
        size = self._mask + 1
        if self._used * 5 > size * 2:
            size <<= 1
        old_keys, old_values = self._keys, self._values
        keys = self._keys = array("Q", bytes(8 * size))
        values = self._values = array("I", bytes(4 * size))
        mask = self._mask = size - 1
        used = 0
        for i, k in enumerate(old_keys):  # no list of the pairs: a resize costs its arrays only
            if k > _REMOVED:
                j = k & mask
                while keys[j]:
                    j = (j + 1) & mask
                keys[j] = k
                values[j] = old_values[i]
                used += 1
        self._used = self._filled = used

    # -- snapshots ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """``<u64 slots><u64 keys><u32 crc32>`` then the keys and values arrays as they are
        (little-endian); the codes 0 and 1 are not in it (see :attr:`small`)."""
        return b"".join(self.to_parts())

    def to_parts(self) -> list[bytes]:
        """:meth:`to_bytes` in parts (copies of the arrays, not joined: a snapshot writes
        them one after the other)."""
        body = [le_bytes(self._keys, "Q"), le_bytes(self._values, "I")]
        return [_HEAD.pack(len(self._keys), self._used, crc_of(body)), *body]

    @property
    def small(self) -> dict[int, int]:
        """The codes 0 and 1 and their values (kept apart from the arrays)."""
        return self._small

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> tuple[CodeMap, int]:
        """A map from :meth:`to_bytes` bytes at the start of ``data`` and the bytes it took.
        Raises ValueError if they are cut short, fail their checksum or do not describe a
        map (a slot count that is not a power of two, a wrong key count)."""
        slots, used, crc = _HEAD.unpack_from(data, 0)
        if slots < _MIN_SLOTS or slots & (slots - 1) or slots > (1 << 40):
            raise ValueError("code map has a bad slot count")
        end = _HEAD.size + 12 * slots
        body = checked(data, _HEAD.size, 12 * slots, crc, "code map")
        m = cls.__new__(cls)
        m._keys = from_le(body[:8 * slots], "Q")
        m._values = from_le(body[8 * slots:], "I")
        m._mask = slots - 1
        m._used = used
        m._filled = slots - m._keys.count(_EMPTY)
        m._small = {}
        if m._filled - m._keys.count(_REMOVED) != used or m._filled * 5 > slots * 3 + 5:
            raise ValueError("code map does not hold what it says")
        return m, end


__all__ = ["CodeMap"]
