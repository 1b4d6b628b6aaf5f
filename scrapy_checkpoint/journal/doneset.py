"""A compact set of done-unit codes, each with the time it was done: 12 bytes a unit.

Codes live in a sorted ``array('Q')`` with a parallel ``array('I')`` of done times
(Unix seconds; 0: unknown), plus a small dict of recent additions (code -> time);
the dict is merged into the arrays when it outgrows a quarter of them, which keeps
the amortised cost per key constant and the memory near 12 bytes a key (a plain
``set[int]`` costs about 70). A set made with ``timed=False`` keeps no times (8
bytes a key), for sets that only answer "is it in?".

The time of a unit added with :meth:`add_new` is :attr:`DoneSet.now`, which the
owner moves forward (a stage moves it at each journal commit, see
:meth:`scrapy_checkpoint.live.LiveState.apply`), so adding a unit costs no clock read.

Removing codes (:meth:`discard_many`) only notes them in a set of removed codes, purged
from the arrays when it outgrows a quarter of them (or at the next :meth:`compact`):
replaying many small removals costs time in proportion to the removals, not to the set.
"""

from __future__ import annotations

import operator
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from .arrays import from_le, le_bytes

_MIN_RECENT = 1 << 16
#: The largest done time a set holds (uint32 Unix seconds: until 2106).
MAX_TIME = (1 << 32) - 1


class DoneSet:
    """A set of 64-bit unit codes with their done times (see the module docstring)."""

    __slots__ = ("_base", "_gone", "_recent", "_times", "now")

    def __init__(self, codes: Iterable[int] = (), *, sorted_codes: array[int] | None = None,
                 times: array[int] | None = None, now: int = 0, timed: bool = True) -> None:
        """``codes`` in any order, or ``sorted_codes``: an ``array('Q')`` already sorted and
        without duplicates, kept as it is (not copied), with ``times`` its done times (an
        ``array('I')`` of the same length, kept as it is; None: all done at ``now``).

        ``now`` (Unix seconds) is the time of the units added from now on, ``codes``
        included; ``timed=False`` keeps no times at all. Raises ValueError if ``times``
        and ``sorted_codes`` differ in length.
        """
        self.now = now
        base = sorted_codes if sorted_codes is not None else array("Q")
        if not timed:
            times = None
        elif times is None:
            times = array("I", [min(max(now, 0), MAX_TIME)]) * len(base)
        elif len(times) != len(base):
            raise ValueError(f"{len(times)} done times for {len(base)} codes")
        self._base = base
        self._times = times
        self._recent: dict[int, int] = dict.fromkeys(codes, now)
        #: Codes of ``_base`` removed since the last compaction (never in ``_recent``).
        self._gone: set[int] = set()
        self.compact()

    @property
    def timed(self) -> bool:
        """True if the set keeps done times."""
        return self._times is not None

    def __contains__(self, code: int) -> bool:
        if code in self._recent:
            return True
        base = self._base
        if not base or code > base[-1]:  # e.g. a new index: no search needed
            return False
        i = bisect_left(base, code)
        if i < len(base) and base[i] == code:
            return not self._gone or code not in self._gone
        return False

    def __len__(self) -> int:
        return len(self._base) + len(self._recent) - len(self._gone)

    def __iter__(self) -> Iterator[int]:
        self.compact()
        return iter(self._base)

    def add(self, code: int) -> bool:
        """Add ``code`` (done at :attr:`now`); return False if it was already there."""
        if code in self:
            return False
        self.add_new(code)
        return True

    def add_new(self, code: int) -> None:
        """Add a code the caller has just checked is absent, done at :attr:`now`."""
        if self._gone and code in self._gone:
            self._revive(code)
            return
        recent = self._recent
        recent[code] = self.now
        if len(recent) > _MIN_RECENT and len(recent) > len(self._base) >> 2:
            self.compact()

    def add_many_new(self, codes: Iterable[int]) -> None:
        """Add codes known to be absent (journal replay), done at :attr:`now`."""
        gone = self._gone
        if gone:
            revived = gone.intersection(codes := list(codes))
            for code in revived:
                self._revive(code)
            if revived:
                codes = [c for c in codes if c not in revived]
        recent = self._recent
        recent.update(dict.fromkeys(codes, self.now))
        if len(recent) > _MIN_RECENT and len(recent) > len(self._base) >> 2:
            self.compact()

    def _revive(self, code: int) -> None:
        """Add back a removed code still in the arrays, done at :attr:`now`."""
        self._gone.discard(code)
        if self._times is not None:
            self._times[bisect_left(self._base, code)] = min(max(self.now, 0), MAX_TIME)

    def discard_many(self, codes: Iterable[int]) -> None:
        """Remove ``codes`` (those absent are ignored): O(len(codes) log n), the arrays
        being rebuilt only once the removed codes outgrow a quarter of them."""
        recent, base, gone = self._recent, self._base, self._gone
        for code in codes:
            recent.pop(code, None)
            i = bisect_left(base, code)
            if i < len(base) and base[i] == code:
                gone.add(code)
        if len(gone) > _MIN_RECENT and len(gone) > len(base) >> 2:
            self._purge()

    def _purge(self) -> None:
        """Drop the removed codes from the arrays (copying the runs between them)."""
        gone = self._gone
        if not gone:
            return
        base, times = self._base, self._times
        codes, kept_times = array("Q"), array("I")
        start = 0
        for code in sorted(gone):
            i = bisect_left(base, code, start)
            codes.extend(base[start:i])
            if times is not None:
                kept_times.extend(times[start:i])
            start = i + 1
        codes.extend(base[start:])
        if times is not None:
            kept_times.extend(times[start:])
            self._times = kept_times
        self._base = codes
        self._gone = set()

    def time_of(self, code: int) -> int | None:
        """When ``code`` was done (Unix seconds; 0: unknown), None if it is not in the set
        (or the set keeps no times)."""
        if self._times is None:
            return None
        recent = self._recent.get(code)
        if recent is not None:
            return recent
        if code in self._gone:
            return None
        base = self._base
        i = bisect_left(base, code)
        return self._times[i] if i < len(base) and base[i] == code else None

    def count_before(self, cutoff: int) -> int:
        """How many units were done before ``cutoff`` (Unix seconds); unknown times (0)
        count as before any cutoff. 0 for a set without times."""
        if self._times is None:
            return 0
        self.compact()
        return sum(1 for t in self._times if t < cutoff)

    def drop_before(self, cutoff: int) -> list[int]:
        """Remove the units done before ``cutoff`` (as :meth:`count_before` counts them) and
        return their codes. O(n)."""
        if self._times is None:
            return []
        self.compact()
        dropped = [code for code, t in zip(self._base, self._times, strict=True) if t < cutoff]
        if dropped:
            self._keep(lambda _code, t: t >= cutoff)
        return dropped

    def _keep(self, keep: Callable[[int, int], bool]) -> None:
        """Rebuild the arrays with the entries for which ``keep(code, time)`` is true (call
        :meth:`compact` first)."""
        if self._times is None:
            self._base = array("Q", (c for c in self._base if keep(c, 0)))
            return
        codes, times = array("Q"), array("I")
        for code, t in zip(self._base, self._times, strict=True):
            if keep(code, t):
                codes.append(code)
                times.append(t)
        self._base, self._times = codes, times

    def compact(self) -> None:
        """Drop the removed codes from the sorted arrays and merge the recent additions into
        them (a recent code already in the arrays is kept once, with its older time)."""
        self._purge()
        recent = self._recent
        if not recent:
            return
        new = sorted(recent)
        base, times = self._base, self._times
        if not base or new[0] > base[-1]:  # e.g. indexes done in order: append
            base.extend(new)
            if times is not None:
                # Added in order (indexes done in order): the dict's order is the sorted one.
                in_order = list(recent)
                times.extend(recent.values() if in_order == new else [recent[c] for c in new])
        elif times is None:
            n = len(base)
            # Merge without turning the whole array into Python ints (36+ bytes each):
            # copy the runs of the old array between the insertion points.
            merged = array("Q")
            start = 0
            for code in new:
                i = bisect_left(base, code, start)
                merged.extend(base[start:i])
                start = i
                if i < n and base[i] == code:  # already there (a replayed duplicate)
                    continue
                merged.append(code)
            merged.extend(base[start:])
            self._base = merged
        else:
            # The same, with the times: one pass finds each insertion point for both arrays.
            n = len(base)
            merged, merged_times = array("Q"), array("I")
            add_run, add_times = merged.extend, merged_times.extend
            add_code, add_time = merged.append, merged_times.append
            start = 0
            for code in new:
                i = bisect_left(base, code, start)
                if i > start:
                    add_run(base[start:i])
                    add_times(times[start:i])
                start = i
                if i < n and base[i] == code:  # already there (a replayed duplicate)
                    continue
                add_code(code)
                add_time(recent[code])
            add_run(base[start:])
            add_times(times[start:])
            self._base, self._times = merged, merged_times
        self._recent = {}

    def is_strictly_sorted(self) -> bool:
        """True if the sorted array really is sorted, without repeats (a set read from
        bytes, e.g. a snapshot, is checked before it is used: its lookups bisect)."""
        base = self._base
        return len(base) < 2 or all(map(operator.lt, base, islice(base, 1, None)))

    def to_bytes(self) -> bytes:
        """Sorted little-endian uint64 codes."""
        self.compact()
        return le_bytes(self._base, "Q")

    def times_bytes(self) -> bytes | None:
        """The done times as little-endian uint32, in the order of :meth:`to_bytes` (call it
        right after, with no change in between); None for a set without times."""
        if self._times is None:
            return None
        self.compact()
        return le_bytes(self._times, "I")

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, times: bytes | memoryview | None = None, *,
                   now: int = 0) -> DoneSet:
        """Inverse of :meth:`to_bytes` (``data``: sorted little-endian uint64 codes) and
        :meth:`times_bytes` (``times``: little-endian uint32, one per code; None: every
        unit done at ``now``). Raises ValueError if the lengths differ."""
        done_times = None if times is None else from_le(times, "I")
        return cls(sorted_codes=from_le(data, "Q"), times=done_times, now=now)
