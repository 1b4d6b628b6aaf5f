"""PendingIndex: the frontier's index in flat arrays and a table of positions, checked
against a dict, through growth, removals, compaction, re-adds and snapshots."""

from __future__ import annotations

import random
import struct
import zlib
from array import array

import pytest

from scrapy_checkpoint.journal.pending import INLINE, NO_REF, PendingIndex, _filled_slots


def _model_check(index: PendingIndex, model: dict[int, tuple[int, int, int]]) -> None:
    assert len(index) == len(model)
    assert [code for code, *_ in index.entries()] == list(model)
    for code, entry in model.items():
        assert code in index
        assert index.entry(code) == entry


def test_it_behaves_as_an_ordered_dict_through_growth_removals_and_reuse() -> None:
    rng = random.Random(7)
    model: dict[int, tuple[int, int, int]] = {}
    index = PendingIndex()
    # Random 64-bit codes, small ones (the same low bits: long probe runs) and 0.
    keys = [rng.getrandbits(64) for _ in range(3000)] + list(range(0, 64))
    for step in range(60_000):
        code = rng.choice(keys)
        if rng.random() < 0.55:
            entry = (rng.getrandbits(40), rng.getrandbits(16), rng.randint(-5, 5))
            added = index.add(code, *entry)
            assert added == (code not in model)
            if added:
                model[code] = entry
        else:
            assert index.discard(code) == (model.pop(code, None) is not None)
        if step % 4999 == 0:
            _model_check(index, model)
    _model_check(index, model)
    for code in keys:
        assert (code in index) == (code in model)
    assert -1 not in index
    assert "x" not in index
    assert not index.discard(-1)


def test_compaction_keeps_order_and_the_table_finds_every_unit() -> None:
    index = PendingIndex()
    codes = [(i * 0x9E3779B97F4A7C15) % (1 << 64) for i in range(1, 20_001)]
    for i, code in enumerate(codes):
        index.add(code, i, 10, i % 3)
    for code in codes[::2] + codes[1:12_000:2]:  # holes outnumber units: compacted
        index.discard(code)
    kept = codes[12_001::2]
    assert len(index.codes) < 20_000  # compacted at least once
    assert [code for code, *_ in index.entries()] == kept
    assert all(code in index for code in kept)
    assert not any(code in index for code in codes[:12_000])
    index.add(codes[0], 7, 1, 2)  # back after its removal: at the end
    assert [code for code, *_ in index.entries()][-1] == codes[0]
    assert index.entry(codes[0]) == (7, 1, 2)


def test_the_table_stays_small() -> None:
    index = PendingIndex()
    for code in range(1, 100_001):
        index.add(code * 0x9E3779B97F4A7C15 % (1 << 64), code)
    assert len(index.slots) * 4 / len(index) <= 8.0 * 1.34  # at most 70% full: <= ~11 B


@pytest.mark.parametrize("copy", [True, False])
def test_snapshot_bytes_round_trip(copy: bool) -> None:
    index = PendingIndex()
    for i in range(1, 5000):
        index.add(i * 0x9E3779B97F4A7C15 % (1 << 64), i << 8, i % 300, -i % 7)
    for i in range(1, 5000, 3):
        index.discard(i * 0x9E3779B97F4A7C15 % (1 << 64))
    index.add(1, NO_REF)
    index.add_inline(2, {"url": "http://x/"})
    expected = index.to_bytes()
    parts = index.to_parts(copy=copy)
    data = b"".join(parts)
    assert data == expected
    for part in parts:
        if isinstance(part, memoryview):
            part.release()
    assert index.add(3, 0)  # lent arrays released: the index grows again
    index.discard(3)
    back, size = PendingIndex.from_bytes(data + b"tail", counts=index.counts())
    assert size == len(data)
    back.keep_inline(index.inline_pairs())
    assert list(back.entries()) == list(index.entries())
    assert all(code in back for code, *_ in index.entries())
    assert back.get(2) == {"url": "http://x/"}
    assert back.unjournaled() == 1
    assert back.places() == index.places()
    assert back.add(99, 1)  # and it goes on growing
    assert 99 in back


def test_damaged_snapshot_bytes_are_refused() -> None:
    index = PendingIndex()
    for i in range(1, 100):
        index.add(i, i)
    data = index.to_bytes()
    with pytest.raises(ValueError, match="cut short"):
        PendingIndex.from_bytes(data[:-1])
    for at in (20, len(data) - 1):
        damaged = bytearray(data)
        damaged[at] ^= 1
        with pytest.raises(ValueError, match="checksum"):
            PendingIndex.from_bytes(bytes(damaged))
    # A table that checksums but points past the arrays.
    n = len(index.codes)
    table_at = 12 + 24 * n
    slots, filled, _ = struct.unpack_from("<QQI", data, table_at)
    table = array("I", data[table_at + 20:])
    table[table.index(0)] = n + 5
    forged = (data[:table_at] + struct.pack("<QQI", slots, filled + 1, zlib.crc32(table))
              + table.tobytes())
    with pytest.raises(ValueError, match="disagree"):
        PendingIndex.from_bytes(forged)


def _with_table(data: bytes, n: int, change: object, filled_delta: int = 0) -> bytes:
    """``data`` (an index's snapshot bytes of ``n`` positions) with its table changed by
    ``change`` (called with the table as an array) and checksummed again."""
    table_at = 12 + 24 * n
    slots, filled, _ = struct.unpack_from("<QQI", data, table_at)
    table = array("I", data[table_at + 20:])
    change(table)  # type: ignore[operator]
    return (data[:table_at] + struct.pack("<QQI", slots, filled + filled_delta,
                                          zlib.crc32(table)) + table.tobytes())


def test_tables_that_checksum_but_cannot_be_probed_are_refused() -> None:
    """The table is checked without an int per slot (as text, see _filled_slots): a
    position above the largest code point, one past the arrays, and a slot more or less
    than the count it comes with are all found."""
    index = PendingIndex()
    units = 40000  # a table of more than 65,536 slots: checked as text
    index.add_many(array("Q", (i * 0x9E3779B97F4A7C15 % (1 << 64) for i in range(1, units))),
                   array("Q", range(1, units)), array("I", range(1, units)),
                   array("i", bytes(4 * (units - 1))))
    for code in index.codes[::7]:
        index.discard(code)
    data = index.to_bytes()
    n = len(index.codes)
    assert len(index.slots) > 1 << 16
    back, _ = PendingIndex.from_bytes(data)
    assert list(back.entries()) == list(index.entries())

    def put(value: int) -> object:
        def change(table: array[int]) -> None:
            table[table.index(0)] = value
        return change

    for value in (0x110000, 0xD800, n + 1, (1 << 32) - 1):  # past the arrays
        with pytest.raises(ValueError, match="disagree"):
            PendingIndex.from_bytes(_with_table(data, n, put(value), 1))
    with pytest.raises(ValueError, match="disagree"):  # one slot more than counted
        PendingIndex.from_bytes(_with_table(data, n, put(n)))
    with pytest.raises(ValueError, match="disagree"):  # one slot less
        PendingIndex.from_bytes(_with_table(data, n, lambda t: t.__setitem__(
            next(i for i, s in enumerate(t) if s), 0), 0))
    # The same counts with arrays too long to be read as text (slot by slot).
    table = array("I", data[12 + 24 * n + 20:])
    view = memoryview(table).cast("B")
    assert _filled_slots(view, table, 0x110000) == _filled_slots(view, table, n) \
        == len(table) - table.count(0)
    table[table.index(0)] = n + 1
    assert _filled_slots(view, table, n) == -1
    table[table.index(n + 1)] = 0x110001
    assert _filled_slots(view, table, 0x110000) == _filled_slots(view, table, n) == -1
    small = PendingIndex()  # and a small table, slot by slot
    for i in range(1, 100):
        small.add(i, i)
    with pytest.raises(ValueError, match="disagree"):
        PendingIndex.from_bytes(_with_table(small.to_bytes(), 99, put(100), 1))


def test_holes_are_counted_by_whole_lengths() -> None:
    """A hole is a length of four 0xFF bytes: bytes 0xFF astride two lengths are not one."""
    index = PendingIndex()
    lengths = [0xFFFFFF00, 0x000000FF, 0xFFFF0000, 0x0000FFFF, 0xFF000000, 0x00FFFFFF, 7]
    for i in range(1, 200):
        index.add(i, i, lengths[i % len(lengths)], 0)
    for code in (5, 6, 7, 100, 101, 150):
        index.discard(code)
    back, _ = PendingIndex.from_bytes(index.to_bytes())
    assert len(back) == len(index) == 193
    assert list(back.entries()) == list(index.entries())
    assert back.counts() == index.counts()


def test_an_index_with_a_code_map_after_it_still_loads() -> None:
    """What a ``SCKSNAP3`` snapshot holds: the arrays, then a code map (u64 codes and u32
    positions per slot), whose table is built anew."""
    index = PendingIndex()
    for i in range(1, 300):
        index.add(i * 0x9E3779B97F4A7C15 % (1 << 64), i, 5, 1)
    index.discard(index.codes[0])
    arrays = index.to_parts()[:5]
    keys, values = array("Q", bytes(8 * 1024)), array("I", bytes(4 * 1024))
    for pos, (code, *_) in enumerate(index.entries(), 1):
        keys[code & 1023], values[code & 1023] = code, pos  # placement is not read
    body = keys.tobytes() + values.tobytes()
    legacy = b"".join(arrays) + struct.pack("<QQI", 1024, len(index), zlib.crc32(body)) + body
    back, size = PendingIndex.from_bytes(legacy, code_map=True)
    assert size == len(legacy)
    assert list(back.entries()) == list(index.entries())
    assert all(code in back for code, *_ in index.entries())
    with pytest.raises(ValueError, match="disagree"):
        PendingIndex.from_bytes(legacy.replace(struct.pack("<QQI", 1024, len(index),
                                                           zlib.crc32(body)),
                                               struct.pack("<QQI", 1024, 3, zlib.crc32(body))),
                                code_map=True)
    assert INLINE not in back


def test_add_many_is_add_one_by_one() -> None:
    """A replayed group's units go in as blocks; what they leave out (pending already,
    repeated in the group, done) and the holes they take over are those of add()."""
    rng = random.Random(11)
    pool = [rng.getrandbits(64) for _ in range(400)] + list(range(16))
    blocks, one = PendingIndex(), PendingIndex()
    for step in range(300):
        codes = array("Q", rng.sample(pool, rng.randrange(0, 40)))
        if step % 7 == 0 and codes:
            codes.append(codes[0])  # a group that repeats a unit
        refs = array("Q", (rng.getrandbits(41) for _ in codes))
        lengths = array("I", (rng.getrandbits(10) for _ in codes))
        priorities = array("i", (rng.randint(-3, 3) for _ in codes))
        done = set(rng.sample(pool, 5)) if step % 5 == 0 else ()
        added = blocks.add_many(codes, refs, lengths, priorities, done)
        assert added == sum(one.add(code, refs[k], lengths[k], priorities[k])
                            for k, code in enumerate(codes) if code not in done)
        for code in rng.sample(pool, 15):
            assert blocks.discard(code) == one.discard(code)
        assert list(blocks.entries()) == list(one.entries())
        assert blocks.counts() == one.counts()
    assert all((code in blocks) == (code in one) for code in pool)
