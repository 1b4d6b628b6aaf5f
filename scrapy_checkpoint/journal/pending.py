"""The frontier's index: the pending units of a stage, and where what redoes each one is.

What redoes a pending unit (a crawl's request as JSON) is written once, as a request
record in the journal (:func:`~.groups.encode_request`), and found again by its *ref*,
a position in the store (the file store: journal generation and byte offset; the Redis
store: the record's number). Memory holds, per pending unit, its code, ref, length
and priority in parallel arrays (24 bytes) and its position in a table that finds it by
code (6 to 8 bytes, :class:`PendingIndex`): no payload, no object per unit.

Refs above :data:`MAX_REF` say there is no record: :data:`NO_REF` for a unit that could
not be journaled (nothing can redo it), :data:`INLINE` for a payload kept in memory
(a journal written before request records held them in its groups).
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from collections.abc import Iterator
from typing import Any, Protocol

from .arrays import checked, crc_of, from_le, le_view, load_json

#: The largest ref a store hands out.
MAX_REF = (1 << 64) - 3
#: A unit that could not be journaled: pending, but nothing can redo it.
NO_REF = (1 << 64) - 1
#: A unit whose payload is kept in memory (``inline``).
INLINE = (1 << 64) - 2
#: Priorities are kept as int32: larger ones are clamped (their order among themselves
#: is then the order they were added in).
MIN_PRIORITY, MAX_PRIORITY = -(1 << 31), (1 << 31) - 1
#: Bits of a file store ref that hold the byte offset (the generation above them).
OFFSET_BITS = 40
#: The largest journal generation (segment number) a store may hold: the refs of its
#: records, and those of the segment a compaction starts after it, still fit in
#: :data:`MAX_REF`. A larger one was not written by this package (a crafted file name or
#: table row) and is treated as damage, never as the place to write next.
MAX_GENERATION = (MAX_REF >> OFFSET_BITS) - 1

_SECTION = struct.Struct("<QI")  # entries, crc32 of the arrays
_SLOTS = struct.Struct("<QQI")  # slots, slots filled, crc32 of the table
_MIN_SLOTS = 8
#: The length of a hole: a removed unit's place, until the arrays are compacted.
_HOLE = (1 << 32) - 1
#: Holes are closed once they outnumber the units (and this many).
_MIN_HOLES = 4096
#: Zeros copied over :attr:`PendingIndex.slots` when it is rebuilt (64 KiB at a time).
_ZERO_SLOTS = array("I", bytes(1 << 16))


def clamp_priority(priority: int) -> int:
    """``priority`` within int32."""
    return MIN_PRIORITY if priority < MIN_PRIORITY else MAX_PRIORITY if priority > MAX_PRIORITY \
        else priority


def place_of(ref: int) -> int:
    """The journal generation a file store ref points into (0 for a Redis ref)."""
    return ref >> OFFSET_BITS


class RequestReader(Protocol):
    """Reads request records back (a store's, see :meth:`Store.request_reader`)."""

    def read(self, ref: int, length: int, code: int) -> bytes:
        """What the record at ``ref`` holds (``length`` bytes) for unit ``code``. Raises
        OSError if it cannot be read, ValueError if it is not that unit's whole record."""
        ...


class PendingIndex:
    """Pending units in the order they were added (see the module docstring).

    A mapping of code -> payload for readers (``get``, ``items``, ``values``: the payload
    decoded from its record, read through :attr:`reader`), and of code -> entry for the
    frontier (:meth:`entry`, :meth:`entries`). Removing a unit leaves a hole in the
    arrays; the holes are closed once they outnumber the units (:meth:`compact`).

    Units are found by code through :attr:`slots`, a table of positions in the arrays
    (u32, position + 1; 0: empty) probed linearly from the code's low bits (a code is
    already a hash, :func:`~.keys.key_code`), at most 70% full: 4 bytes a slot, 6 to 8
    bytes a unit, where a table of codes and positions would hold 12 a slot and a dict
    about 100 bytes a unit. A removed unit's slot keeps pointing at its hole (passed over
    by lookups, taken over if the unit comes back) until the table is rebuilt.
    """

    __slots__ = ("_filled", "_holes", "_inline", "_live", "_mask", "_places", "_unjournaled",
                 "codes", "freed", "lengths", "priorities", "reader", "refs", "slots")

    def __init__(self, reader: RequestReader | None = None) -> None:
        self.codes = array("Q")
        self.refs = array("Q")
        self.lengths = array("I")
        self.priorities = array("i")
        #: Where each unit is in the arrays (see the class docstring).
        self.slots = array("I", bytes(4 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._filled = 0  # slots not empty
        self._live = 0
        #: Payloads kept in memory (ref INLINE), by code.
        self._inline: dict[int, Any] = {}
        self._holes = 0
        self._unjournaled = 0
        #: Journal generation -> pending units whose record is there.
        self._places: dict[int, int] = {}
        #: Reads request records (None: payloads cannot be read, only counted).
        self.reader = reader
        #: Refs of the records of units no longer pending (done, handed, dropped), since the
        #: owner last took them (:meth:`take_freed`): a store may delete those records.
        self.freed = array("Q")

    # -- membership -------------------------------------------------------------------

    def _pos(self, code: int) -> int:
        """The position of pending unit ``code`` in the arrays; -1 if it is not pending."""
        slots, codes, lengths, mask = self.slots, self.codes, self.lengths, self._mask
        i = code & mask
        while True:
            s = slots[i]
            if not s:
                return -1
            s -= 1
            if codes[s] == code and lengths[s] != _HOLE:
                return s
            i = (i + 1) & mask

    def __len__(self) -> int:
        return self._live

    def __bool__(self) -> bool:
        return self._live > 0

    def __contains__(self, code: object) -> bool:
        return type(code) is int and code >= 0 and self._pos(code) >= 0

    def __iter__(self) -> Iterator[int]:
        """The pending codes, in the order added."""
        for code, *_ in self.entries():
            yield code

    def unjournaled(self) -> int:
        """Pending units nothing can redo."""
        return self._unjournaled

    # -- changes ----------------------------------------------------------------------

    def add(self, code: int, ref: int, length: int = 0, priority: int = 0) -> bool:
        """Make ``code`` pending, its record at ``ref`` (``length`` bytes); False if it is."""
        codes = self.codes
        i = self._free_slot(code, len(codes))
        if i < 0:
            return False
        self.slots[i] = len(codes) + 1
        codes.append(code)
        self.refs.append(ref)
        self.lengths.append(length)
        self.priorities.append(clamp_priority(priority))
        self._live += 1
        if ref <= MAX_REF:
            place = ref >> OFFSET_BITS
            self._places[place] = self._places.get(place, 0) + 1
        elif ref == NO_REF:
            self._unjournaled += 1
        if self._filled * 10 > len(self.slots) * 7:
            self._rebuild_slots()
        return True

    def _free_slot(self, code: int, known: int) -> int:
        """The slot for ``code`` as a new unit: an empty one (now counted as filled), or the
        one of its hole from before (taken over); -1 if it is pending. Slots of positions
        past ``known`` belong to units not in the arrays yet (others: :meth:`add_many`)."""
        slots, codes, lengths, mask = self.slots, self.codes, self.lengths, self._mask
        i = code & mask
        while True:
            s = slots[i]
            if not s:
                self._filled += 1
                return i
            if s <= known and codes[s - 1] == code:
                return -1 if lengths[s - 1] != _HOLE else i
            i = (i + 1) & mask

    def add_many(self, codes: array[int], refs: array[int], lengths: array[int],
                 priorities: array[int], done: Any = ()) -> int:
        """:meth:`add` each unit of the parallel arrays in order (a replayed group's added
        units), leaving out those pending already or in ``done`` (a container of codes, a
        :class:`~.doneset.DoneSet`); returns how many were added. Priorities must be int32
        already. The arrays are extended as blocks: only finding a slot is per unit."""
        if done or len(set(codes)) != len(codes):
            return sum(self.add(code, refs[k], lengths[k], priorities[k])
                       for k, code in enumerate(codes) if code not in done)
        if (self._filled + len(codes)) * 10 > len(self.slots) * 7:
            self._rebuild_slots(room=len(codes))
        taken = _slot_block(self.slots, self._mask, self.codes, self.lengths, codes)
        if taken < 0:  # pending already: a journal that repeats a unit
            self._rebuild_slots()  # forgets the slots set here
            return sum(self.add(code, refs[k], lengths[k], priorities[k])
                       for k, code in enumerate(codes))
        self._filled += taken
        self.codes.extend(codes)
        self.refs.extend(refs)
        self.lengths.extend(lengths)
        self.priorities.extend(priorities)
        self._live += len(codes)
        self._count_places(refs)
        return len(codes)

    def _count_places(self, refs: array[int]) -> None:
        """Count units with these refs as added (their places, those without a record)."""
        places = self._places
        top = max(refs, default=NO_REF)
        if top <= MAX_REF and top >> OFFSET_BITS == min(refs) >> OFFSET_BITS:  # one place
            place = top >> OFFSET_BITS
            places[place] = places.get(place, 0) + len(refs)
            return
        for ref in refs:
            if ref <= MAX_REF:
                place = ref >> OFFSET_BITS
                places[place] = places.get(place, 0) + 1
            elif ref == NO_REF:
                self._unjournaled += 1

    def add_inline(self, code: int, payload: Any) -> bool:
        """Make ``code`` pending with ``payload`` kept in memory (None: nothing redoes it)."""
        if not self.add(code, INLINE if payload is not None else NO_REF):
            return False
        if payload is not None:
            self._inline[code] = payload
        return True

    def discard(self, code: int, *, free: bool = True) -> bool:
        """``code`` is no longer pending (done, handed, dropped); False if it was not.
        ``free``: nothing needs its record any more (see :attr:`freed`)."""
        pos = self._pos(code) if type(code) is int and code >= 0 else -1
        if pos < 0:
            return False
        ref = self.refs[pos]
        if ref <= MAX_REF:
            if free:
                self.freed.append(ref)
            place = ref >> OFFSET_BITS
            left = self._places[place] - 1
            if left:
                self._places[place] = left
            else:
                del self._places[place]
        elif ref == NO_REF:
            self._unjournaled -= 1
        elif self._inline:
            self._inline.pop(code, None)
        self.lengths[pos] = _HOLE
        self._holes += 1
        self._live -= 1
        if self._holes > _MIN_HOLES and self._holes > self._live:
            self.compact()
        return True

    def pop_entry(self, code: int) -> Any:
        """Remove ``code``; what redoes it: ``(ref, length, priority)`` of its record, its
        payload kept in memory, or None (nothing; or it was not pending)."""
        pos = self._pos(code)
        if pos < 0:
            return None
        ref = self.refs[pos]
        if ref == INLINE:
            value: Any = self._inline.get(code)
        elif ref == NO_REF:
            value = None
        else:
            value = (ref, self.lengths[pos], self.priorities[pos])
        self.discard(code, free=False)
        return value

    def take_freed(self) -> array[int]:
        """The refs freed since the last call (see :attr:`freed`)."""
        freed, self.freed = self.freed, array("Q")
        return freed

    def restore(self, code: int, value: Any) -> bool:
        """Make ``code`` pending again with what :meth:`pop_entry` returned for it (a
        failed unit released for a retry); False if it is pending."""
        if type(value) is tuple:
            return self.add(code, *value)
        return self.add_inline(code, value)

    def compact(self) -> None:
        """Close the holes left by removed units (kept order), and rebuild :attr:`slots`."""
        if not self._holes:
            return
        codes, refs, lengths, priorities = self.codes, self.refs, self.lengths, self.priorities
        new = (array("Q"), array("Q"), array("I"), array("i"))
        start = 0
        end = len(lengths)
        while start < end:  # runs between holes, copied as slices: no object per unit
            try:
                hole = lengths.index(_HOLE, start)
            except ValueError:
                hole = end
            if hole > start:
                new[0].extend(codes[start:hole])
                new[1].extend(refs[start:hole])
                new[2].extend(lengths[start:hole])
                new[3].extend(priorities[start:hole])
            start = hole + 1
        self.codes, self.refs, self.lengths, self.priorities = new
        self._holes = 0
        self._rebuild_slots()

    def _rebuild_slots(self, room: int = 0) -> None:
        """:attr:`slots` rebuilt for the units and ``room`` more, at most half full (removed
        units left out), and at least as large as the holes it walks past: a rebuild
        reads every place, so the next one waits for as many additions (a small frontier
        with many holes rebuilt it every few additions). In place: see :func:`_zeroed`."""
        size = _MIN_SLOTS
        while size < 2 * (self._live + room) or size < self._holes:
            size <<= 1
        slots = self.slots
        _zeroed(slots, size)
        mask = size - 1
        codes = self.codes
        for pos, length in enumerate(self.lengths, 1):  # pos: position + 1, as slots hold
            if length != _HOLE:
                i = codes[pos - 1] & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = pos
        self._mask, self._filled = mask, self._live

    # -- reading ----------------------------------------------------------------------

    def entry(self, code: int) -> tuple[int, int, int] | None:
        """``(ref, length, priority)`` of a pending unit (None: not pending)."""
        pos = self._pos(code)
        if pos < 0:
            return None
        return self.refs[pos], self.lengths[pos], self.priorities[pos]

    def entries(self) -> Iterator[tuple[int, int, int, int]]:
        """``(code, ref, length, priority)`` of each pending unit, in the order added."""
        codes, refs, lengths, priorities = self.codes, self.refs, self.lengths, self.priorities
        for pos in range(len(codes)):
            length = lengths[pos]
            if length != _HOLE:
                yield codes[pos], refs[pos], length, priorities[pos]

    def has_payload(self, code: int) -> bool:
        """True if something can redo pending unit ``code`` (a record or a kept payload)."""
        pos = self._pos(code)
        return pos >= 0 and self.refs[pos] != NO_REF

    def payload_bytes(self, code: int) -> bytes | None:
        """The record of pending unit ``code`` as bytes (None: no record). Raises OSError or
        ValueError when the record cannot be read whole."""
        pos = self._pos(code)
        if pos < 0:
            return None
        ref = self.refs[pos]
        if ref == NO_REF:
            return None
        if ref == INLINE:
            return json.dumps(self._inline[code], separators=(",", ":")).encode()
        if self.reader is None:
            raise OSError(f"no reader for the request record of unit {code}")
        return self.reader.read(ref, self.lengths[pos], code)

    def get(self, code: int, default: Any = None) -> Any:
        """The payload of pending unit ``code`` (decoded JSON), ``default`` if it is not
        pending, None if nothing can redo it. Raises as :meth:`payload_bytes`."""
        if code not in self:
            return default
        if self._inline and code in self._inline:
            return self._inline[code]
        data = self.payload_bytes(code)
        return None if data is None else load_json(data)

    def __getitem__(self, code: int) -> Any:
        if code not in self:
            raise KeyError(code)
        return self.get(code)

    def items(self) -> Iterator[tuple[int, Any]]:
        """``(code, payload)`` in the order added, each payload read when reached."""
        for code, *_ in self.entries():
            yield code, self.get(code)

    def values(self) -> Iterator[Any]:
        for _, payload in self.items():
            yield payload

    def places(self) -> list[int]:
        """The journal generations the records of pending units are in, sorted."""
        return sorted(self._places)

    # -- snapshots ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The index as a snapshot section: ``<u64 n><u32 crc32>`` then the codes, refs,
        lengths and priorities of its ``n`` positions (little-endian), in the order added,
        holes included (length 2**32-1), then ``<u64 slots><u64 filled><u32 crc32>`` and
        :attr:`slots` as they are. Payloads kept in memory are not in it, only their units
        (see :meth:`inline_pairs`)."""
        return b"".join(self.to_parts())

    def to_parts(self, *, copy: bool = True) -> list[bytes | memoryview]:
        """:meth:`to_bytes` in parts, not joined (a snapshot writes them one after the
        other). ``copy=False``: the arrays' own memory where the machine is little-endian,
        no copy (a million units are 32 MB); such parts are valid only until the index
        changes, and must be released (``memoryview.release``) before it does: an array
        that lends its memory cannot grow. Holes that make up more than a fifth of the
        arrays are closed first: a snapshot's size follows the pending units."""
        if self._holes * 4 > self._live:
            self.compact()
        body = [le_view(self.codes, "Q", copy), le_view(self.refs, "Q", copy),
                le_view(self.lengths, "I", copy), le_view(self.priorities, "i", copy)]
        slots = le_view(self.slots, "I", copy)
        return [_SECTION.pack(len(self.codes), crc_of(body)), *body,
                _SLOTS.pack(len(self.slots), self._filled, crc_of([slots])), slots]

    def inline_pairs(self) -> list[list[Any]]:
        """``[code, payload]`` of the payloads kept in memory (a snapshot header's)."""
        return [[code, payload] for code, payload in self._inline.items()]

    def keep_inline(self, pairs: list[list[Any]]) -> None:
        """Take the payloads :meth:`inline_pairs` listed, for the units whose ref is INLINE.
        Raises ValueError unless they match those units one to one."""
        inline = {int(code): payload for code, payload in pairs}
        # Each unit has a record (counted per place), none, or its payload kept here.
        marked = self._live - sum(self._places.values()) - self._unjournaled
        if len(inline) != len(pairs) or marked != len(inline) or any(
                (self.entry(code) or (0,))[0] != INLINE for code in inline):
            raise ValueError("pending index and its kept payloads disagree")
        self._inline = inline

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, reader: RequestReader | None = None,
                   counts: Any = None, *, code_map: bool = False) -> tuple[PendingIndex, int]:
        """An index from :meth:`to_bytes` bytes at the start of ``data`` and the bytes it
        took: see :func:`load_index`."""
        return load_index(data, reader, counts, code_map=code_map)

    def counts(self) -> dict[str, Any]:
        """What :meth:`set_counts` takes back: the units per journal generation and those
        nothing can redo (a snapshot header keeps them, so loading needs no pass)."""
        return {"places": sorted([place, n] for place, n in self._places.items()),
                "unjournaled": self._unjournaled}

    def set_counts(self, counts: Any) -> None:
        """Take :meth:`counts` from a snapshot header, or count (None, or not that shape)."""
        try:
            places = {int(place): int(n) for place, n in counts["places"]}
            unjournaled = int(counts["unjournaled"])
        except (TypeError, KeyError, ValueError):
            places, unjournaled = {}, 0
            for ref, length in zip(self.refs, self.lengths, strict=True):
                if length != _HOLE:
                    if ref <= MAX_REF:
                        place = ref >> OFFSET_BITS
                        places[place] = places.get(place, 0) + 1
                    elif ref == NO_REF:
                        unjournaled += 1
        self._places, self._unjournaled = places, unjournaled


def _slot_block(slots: array[int], mask: int, own: array[int], own_lengths: array[int],
                codes: array[int]) -> int:
    """Set the slots of ``codes`` (distinct units added after the ``own`` arrays, in order)
    as :meth:`PendingIndex._free_slot` finds them for each, in one loop, without a call
    per unit (a replay adds a journal tail's units here); returns the empty slots taken,
    or -1 if a unit is pending already (the slots set before it stay)."""
    known = pos = len(own)
    taken = 0
    for code in codes:
        pos += 1
        i = code & mask
        s = slots[i]
        while s:
            if s <= known and own[s - 1] == code:
                if own_lengths[s - 1] != _HOLE:
                    return -1
                break  # the slot of its hole, taken over
            i = (i + 1) & mask
            s = slots[i]
        else:
            taken += 1
        slots[i] = pos
    return taken


def _zeroed(slots: array[int], size: int) -> None:
    """Make ``slots`` (a table of :class:`PendingIndex`, a power of two long) ``size`` zeros
    (a power of two) where it is: resized by realloc (mremap for a mapped block), zeroed
    64 KiB at a time. A new table beside it, made from a zeroed bytes object, was up to
    three tables at once, and freeing the bytes and the old table made glibc's malloc raise
    its mmap threshold to their size, so the heap took (and fragmented under) every later
    block up to that size. Not while :meth:`PendingIndex.to_parts` lends its memory."""
    if size > len(slots):
        slots *= size // len(slots)
    elif size < len(slots):
        del slots[size:]
    step = min(size, len(_ZERO_SLOTS))
    zeros = _ZERO_SLOTS if step == len(_ZERO_SLOTS) else _ZERO_SLOTS[:step]
    for start in range(0, size, step):
        slots[start:start + step] = zeros


_HOLE_BYTES = b"\xff" * 4
#: Slots (or lengths) of a snapshot's index checked at a time (1 MiB of them).
_CHECK_SLOTS = 1 << 18
#: Positions :func:`_filled_slots` checks as text are below this (the largest code point).
_MAX_CHAR = 0x10FFFF
#: Tables this small are checked slot by slot.
_CHECK_SMALL = 1 << 16


def _count_holes(lengths: memoryview) -> int:
    """How many of the little-endian u32 ``lengths`` are holes (all four bytes 0xFF): the
    occurrences of those bytes that start at a multiple of 4, found by ``bytes.find`` (a
    Python step per occurrence, not per length: holes are at most a fifth of a snapshot's
    units, and an occurrence astride two lengths is passed over), 1 MiB at a time."""
    count = 0
    for start in range(0, len(lengths), 4 * _CHECK_SLOTS):
        data = bytes(lengths[start:start + 4 * _CHECK_SLOTS])
        at = data.find(_HOLE_BYTES)
        while at >= 0:
            if at & 3:
                at = data.find(_HOLE_BYTES, at + 1)
            else:
                count += 1
                at = data.find(_HOLE_BYTES, at + 4)
    return count


def _filled_slots(table: memoryview, slots: array[int], n: int) -> int:
    """The slots of a snapshot's table (``table``, little-endian u32; ``slots``, the same as
    an array) that are not empty; -1 if one holds a position past ``n`` arrays (a table that
    lookups could not probe safely).

    Read as UTF-32 text, a table of positions up to 0x10FFFF is one character a slot:
    decoding, counting the NULs and searching for a character above ``n`` are loops in C,
    where ``array.count`` and ``max`` make an int object of every slot (0.1 s for a table
    of a million units). A slot above 0x10FFFF does not decode (then it is past ``n``);
    longer arrays, and small tables (the pattern of the characters above ``n`` costs
    more to compile than they take to count), are checked slot by slot."""
    if n >= _MAX_CHAR or len(slots) <= _CHECK_SMALL:
        return -1 if max(slots, default=0) > n else len(slots) - slots.count(0)
    # The characters above n as a range: compiling it walks none below n (those of a
    # negated class up to n, up to 0xFFFF of them, it would).
    above = re.compile(f"[{re.escape(chr(n + 1))}-\\U0010ffff]")
    filled = 0
    for start in range(0, len(table), 4 * _CHECK_SLOTS):
        try:
            chars = str(table[start:start + 4 * _CHECK_SLOTS], "utf-32-le", "surrogatepass")
        except UnicodeDecodeError:
            return -1
        if above.search(chars):
            return -1
        filled += len(chars) - chars.count("\0")
    return filled


def load_index(data: bytes | memoryview, reader: RequestReader | None = None,
               counts: Any = None, *, code_map: bool = False) -> tuple[PendingIndex, int]:
    """A :class:`PendingIndex` from :meth:`~PendingIndex.to_bytes` bytes at the start of
    ``data`` (its kept payloads come next with :meth:`~PendingIndex.keep_inline`), with its
    :meth:`~PendingIndex.counts` (None: counted); returns it and the bytes it took.
    ``code_map``: the arrays are followed by the code map of a ``SCKSNAP3`` snapshot
    (``<u64 slots><u64 keys><u32 crc32>``, codes and values), checked and left for its
    slots built anew. Raises ValueError if
    the section is cut short, fails its checksum, or its table cannot be the table of
    its units (a slot count that is not a power of two, too full, a position past the
    arrays)."""
    view = memoryview(data)
    n, crc = _SECTION.unpack_from(view, 0)
    size = _SECTION.size + 24 * n
    body = checked(view, _SECTION.size, 24 * n, crc, "pending index")
    index = PendingIndex(reader)
    index.codes, index.refs = from_le(body[:8 * n], "Q"), from_le(body[8 * n:16 * n], "Q")
    index.lengths = from_le(body[16 * n:20 * n], "I")
    index.priorities = from_le(body[20 * n:], "i")
    index._holes = _count_holes(body[16 * n:20 * n])
    index._live = n - index._holes
    slots, filled, crc = _SLOTS.unpack_from(view, size)
    width = 12 if code_map else 4
    if slots < _MIN_SLOTS or slots & (slots - 1) or slots > (1 << 40):
        raise ValueError("pending index has a bad slot count")
    table = checked(view, size + _SLOTS.size, width * slots, crc, "pending index table")
    size += _SLOTS.size + width * slots
    if code_map:
        index._rebuild_slots()
        if filled not in (0, index._live):  # 0: written without its map (codes 0, 1)
            raise ValueError("pending index and its code map disagree")
    else:
        index.slots = from_le(table, "I")
        index._mask = slots - 1
        index._filled = filled
        if (filled * 10 > slots * 7 or filled < index._live
                or _filled_slots(table, index.slots, n) != filled):
            raise ValueError("pending index and its table disagree")
    index.set_counts(counts)
    return index, size


__all__ = ["INLINE", "MAX_REF", "NO_REF", "PendingIndex", "RequestReader", "clamp_priority",
           "load_index", "place_of"]
