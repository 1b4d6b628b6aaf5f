"""A compact set of done-unit codes: 8 bytes a key, so millions fit.

Codes live in a sorted ``array('Q')`` plus a small Python set of recent
additions; the set is merged into the array when it outgrows a quarter of it,
which keeps the amortised cost per key constant and the memory near 8 bytes a
key (a plain ``set[int]`` costs about 70).
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

_MIN_RECENT = 1 << 16


class DoneSet:
    """A set of 64-bit unit codes (see the module docstring for the layout)."""

    __slots__ = ("_base", "_recent")

    def __init__(self, codes: Iterable[int] = (), *, sorted_codes: array[int] | None = None) -> None:
        """``codes`` in any order, or ``sorted_codes``: an ``array('Q')`` already sorted and
        without duplicates, kept as it is (not copied)."""
        self._base = sorted_codes if sorted_codes is not None else array("Q")
        self._recent: set[int] = set(codes)
        self.compact()

    def __contains__(self, code: int) -> bool:
        if code in self._recent:
            return True
        base = self._base
        if not base or code > base[-1]:  # e.g. a new index: no search needed
            return False
        i = bisect_left(base, code)
        return i < len(base) and base[i] == code

    def __len__(self) -> int:
        return len(self._base) + len(self._recent)

    def __iter__(self) -> Iterator[int]:
        self.compact()
        return iter(self._base)

    def add(self, code: int) -> bool:
        """Add ``code``; return False if it was already there."""
        if code in self:
            return False
        self.add_new(code)
        return True

    def add_new(self, code: int) -> None:
        """Add a code the caller has just checked is absent."""
        recent = self._recent
        recent.add(code)
        if len(recent) > _MIN_RECENT and len(recent) > len(self._base) >> 2:
            self.compact()

    def add_many_new(self, codes: Iterable[int]) -> None:
        """Add codes known to be absent (journal replay)."""
        recent = self._recent
        recent.update(codes)
        if len(recent) > _MIN_RECENT and len(recent) > len(self._base) >> 2:
            self.compact()

    def discard_many(self, codes: Iterable[int]) -> None:
        """Remove ``codes`` (those absent are ignored). Rebuilds the array: O(n)."""
        drop = set(codes)
        if not drop:
            return
        self._recent -= drop
        self._base = array("Q", (c for c in self._base if c not in drop))

    def compact(self) -> None:
        """Merge the recent additions into the sorted array."""
        if not self._recent:
            return
        new = sorted(self._recent)
        base = self._base
        if not base or new[0] > base[-1]:  # e.g. indexes done in order: append
            base.extend(new)
        else:
            # Merge without turning the whole array into Python ints (36+ bytes each):
            # copy the runs of the old array between the insertion points.
            merged = array("Q")
            start = 0
            for code in new:
                i = bisect_left(base, code, start)
                merged.extend(base[start:i])
                merged.append(code)
                start = i
            merged.extend(base[start:])
            self._base = merged
        self._recent = set()

    def to_bytes(self) -> bytes:
        """Sorted little-endian uint64 codes."""
        self.compact()
        if sys.byteorder == "little":
            return self._base.tobytes()
        swapped = array("Q", self._base)
        swapped.byteswap()
        return swapped.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> DoneSet:
        """Inverse of :meth:`to_bytes` (``data``: sorted little-endian uint64 codes)."""
        codes = array("Q")
        codes.frombytes(data)
        if sys.byteorder != "little":
            codes.byteswap()
        return cls(sorted_codes=codes)
