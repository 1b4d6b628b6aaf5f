"""CodeMap: a u64 -> u32 map in two flat arrays, checked against a dict."""

from __future__ import annotations

import random

import pytest

from scrapy_checkpoint.journal.codemap import CodeMap


def test_it_behaves_as_a_dict_through_growth_removals_and_reuse() -> None:
    rng = random.Random(7)
    model: dict[int, int] = {}
    m = CodeMap()
    keys = [rng.getrandbits(64) for _ in range(5000)] + [0, 1, 2, 3]
    for step in range(40_000):
        code = rng.choice(keys)
        if rng.random() < 0.6:
            value = rng.getrandbits(32)
            m[code] = value
            model[code] = value
        else:
            assert m.pop(code) == model.pop(code, None)
        if step % 997 == 0:
            assert len(m) == len(model)
    assert len(m) == len(model)
    assert sorted(m.items()) == sorted(model.items())
    for code in keys:
        assert (code in m) == (code in model)
        assert m.get(code) == model.get(code)


def test_its_arrays_round_trip_and_damage_is_refused() -> None:
    m = CodeMap()
    for i in range(1, 3000):
        m[(i * 0x9E3779B97F4A7C15) % (1 << 64)] = i
    for i in range(1, 3000, 3):
        m.pop((i * 0x9E3779B97F4A7C15) % (1 << 64))
    data = m.to_bytes()
    back, size = CodeMap.from_bytes(data + b"tail")
    assert size == len(data)
    assert sorted(back.items()) == sorted(m.items())
    with pytest.raises(ValueError, match="cut short"):
        CodeMap.from_bytes(data[:-1])
    damaged = bytearray(data)
    damaged[-1] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        CodeMap.from_bytes(bytes(damaged))
