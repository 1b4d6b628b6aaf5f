"""Done times: when each unit was done, kept in the done-set, the snapshot and replay,
and the new pass of a completed stage that makes units done before a cutoff run again."""

from __future__ import annotations

import random
from array import array
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scrapy_checkpoint import EnhancedCheckpoint, FileStore, Status
from scrapy_checkpoint.journal import doneset
from scrapy_checkpoint.journal.doneset import DoneSet
from scrapy_checkpoint.journal.keys import key_code
from scrapy_checkpoint.journal.snapshot import (
    SNAPSHOT_MAGIC_V1,
    decode_snapshot,
    encode_snapshot,
)
from scrapy_checkpoint.journal.snapshot import (
    SNAPSHOT_MAGIC_V2 as SNAPSHOT_MAGIC,
)
from scrapy_checkpoint.live import LiveState

T0 = 1_790_000_000  # Unix seconds
DAY = 86400


def _times(done: DoneSet, codes: list[int]) -> dict[int, int | None]:
    return {code: done.time_of(code) for code in codes}


def test_each_code_keeps_its_time_through_merges_removals_and_bytes(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doneset, "_MIN_RECENT", 8)  # merge often
    rng = random.Random(7)
    codes = rng.sample(range(1, 1 << 62), 500)
    done, expected = DoneSet(now=T0), {}
    for i, code in enumerate(codes):
        done.now = T0 + i // 50 * DAY  # ten "commits", a day apart
        done.add_new(code)
        expected[code] = done.now
    assert len(done) == 500
    assert _times(done, codes) == expected
    gone = codes[::7]
    done.discard_many(gone)
    for code in gone:
        del expected[code]
    assert _times(done, list(expected)) == expected
    assert all(done.time_of(code) is None for code in gone)

    again = DoneSet.from_bytes(done.to_bytes(), done.times_bytes(), now=T0)
    assert _times(again, list(expected)) == expected
    cutoff = T0 + 4 * DAY
    stale = sorted(code for code, t in expected.items() if t < cutoff)
    assert again.count_before(cutoff) == len(stale)
    assert sorted(again.drop_before(cutoff)) == stale
    assert sorted(again) == sorted(code for code, t in expected.items() if t >= cutoff)
    assert all(again.time_of(code) == expected[code] for code in again)


def test_codes_appended_after_the_largest_keep_their_times_in_and_out_of_order() -> None:
    done = DoneSet([1, 2], now=T0)
    done.now = T0 + 1
    for code in (3, 4, 5):  # in order
        done.add_new(code)
    done.compact()
    done.now = T0 + 2
    done.add_new(10)
    done.now = T0 + 3
    done.add_new(7)  # out of order, still after the largest
    done.compact()
    assert _times(done, [1, 2, 3, 4, 5, 7, 10]) == {1: T0, 2: T0, 3: T0 + 1, 4: T0 + 1,
                                                    5: T0 + 1, 7: T0 + 3, 10: T0 + 2}


def test_a_set_without_times_answers_membership_only() -> None:
    done = DoneSet([3, 1, 2], timed=False)
    done.add_new(9)
    assert sorted(done) == [1, 2, 3, 9]
    assert (done.timed, done.time_of(3), done.times_bytes(), done.drop_before(1 << 31)) == (
        False, None, None, [])


def test_snapshots_keep_done_times_and_old_snapshots_read_as_done_when_last_updated() -> None:
    header = {"generation": 3, "state": {"stage": "s", "updated_at": "2026-09-21T12:00:00Z"}}
    done = DoneSet(now=T0)
    for i, code in enumerate([5, 1, 9]):
        done.now = T0 + i
        done.add_new(code)
    done.now = T0 + 10
    header["done_now"] = done.now
    blob = encode_snapshot(header, done.to_bytes(), done.times_bytes())
    assert blob.startswith(SNAPSHOT_MAGIC)
    _, back = decode_snapshot(blob)
    assert (_times(back, [1, 5, 9]), back.now) == ({5: T0, 1: T0 + 1, 9: T0 + 2}, T0 + 10)

    with pytest.raises(ValueError, match="time section"):
        decode_snapshot(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ValueError, match="time section"):
        decode_snapshot(blob[:-4])
    with pytest.raises(ValueError, match="cut short"):
        decode_snapshot(SNAPSHOT_MAGIC + b"short")

    del header["done_now"]
    old = encode_snapshot(header, done.to_bytes())  # as written before done times were kept
    assert old.startswith(SNAPSHOT_MAGIC_V1)
    _, back = decode_snapshot(old)
    updated = int(datetime(2026, 9, 21, 12, tzinfo=timezone.utc).timestamp())
    assert (_times(back, [1, 5, 9]), back.now) == (dict.fromkeys([1, 5, 9], updated), updated)
    with pytest.raises(ValueError, match="checksum mismatch"):
        decode_snapshot(old + b"\0\0\0\0")


class FakeClock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: float) -> None:
        self.now = now
        monkeypatch.setattr("scrapy_checkpoint.durability.walltime", lambda: self.now)
        monkeypatch.setattr("scrapy_checkpoint.checkpoint.walltime", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return FakeClock(monkeypatch, T0)


def _checkpoint(directory: Path, **options: object) -> EnhancedCheckpoint:
    return EnhancedCheckpoint(directory, "pages", durability="flush", save_every=5, **options)


def _replayed(directory: Path) -> LiveState:
    return LiveState.from_loaded("pages", FileStore(directory).load("pages"))


def _crawl_in_days(directory: Path, clock: FakeClock, days: dict[int, range],
                   **options: object) -> EnhancedCheckpoint:
    """A completed stage whose units in ``days[d]`` were done on day ``d`` after T0."""
    cp = _checkpoint(directory, **options)
    cp.start()
    for day, units in sorted(days.items()):
        clock.now = T0 + day * DAY
        cp.set_metadata(day=day)
        cp.save()  # a commit on that day: the units after it are done then
        for unit in units:
            cp.update(processed=1, successful=1, index=unit)
    cp.complete()
    return cp


@pytest.mark.parametrize("compact", [False, True])
def test_replay_gives_every_unit_the_done_time_it_had_when_recorded(
    tmp_path: Path, clock: FakeClock, compact: bool
) -> None:
    options = {"compact_min_bytes": 4096} if compact else {}
    days = {0: range(0, 300), 3: range(300, 600), 9: range(600, 900)}
    cp = _crawl_in_days(tmp_path, clock, days, **options)
    recorded = {key_code(u): cp.live.done.time_of(key_code(u)) for u in range(900)}
    cp.close()
    assert set(recorded.values()) == {T0, T0 + 3 * DAY, T0 + 9 * DAY}
    if compact:
        assert len(list((tmp_path / "pages").glob("snapshot-*.bin"))) >= 1
    replayed = _replayed(tmp_path)
    assert {code: replayed.done.time_of(code) for code in recorded} == recorded


def test_a_new_pass_makes_exactly_the_units_done_before_the_cutoff_run_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    days = {0: range(0, 10), 8: range(10, 20), 10: range(20, 30)}
    cp = _crawl_in_days(tmp_path, clock, days)
    cp.record_output(str(tmp_path / "out.jl"), 0, 123)
    cp.close()

    clock.now = T0 + 12 * DAY
    cp = _checkpoint(tmp_path)
    cp.open()
    cutoff = int(clock.now) - 7 * DAY + 1  # done 7 days ago or longer
    assert cp.refresh_count(cutoff) == 10
    cp.start(refresh_before=cutoff)
    assert [u for u in range(30) if not cp.is_done(u)] == list(range(10))
    assert cp.live.outputs == {}  # a new pass records its outputs afresh
    assert (cp.live.processed, cp.live.successful) == (20, 20)
    for unit in range(10):  # fetched again now
        cp.update(processed=1, successful=1, index=unit)
    cp.complete()
    times = {u: cp.live.done.time_of(key_code(u)) for u in range(30)}
    cp.close()

    assert times == {u: T0 + (12 if u < 10 else 8 if u < 20 else 10) * DAY for u in range(30)}
    replayed = _replayed(tmp_path)
    assert {u: replayed.done.time_of(key_code(u)) for u in range(30)} == times
    assert (replayed.info.status, replayed.processed, replayed.outputs) == (
        Status.COMPLETED, 30, {})


def test_a_failed_unit_done_before_the_cutoff_is_released_with_its_counts(
    tmp_path: Path, clock: FakeClock
) -> None:
    cp = _checkpoint(tmp_path)
    cp.start()
    cp.update(processed=1, failed=1, index=0)
    cp.update(processed=1, successful=1, index=1)
    clock.now = T0 + 5 * DAY
    cp.save()
    cp.update(processed=1, failed=1, index=2)
    cp.complete()
    cp.close()

    clock.now = T0 + 6 * DAY
    cp = _checkpoint(tmp_path)
    cp.start(refresh_before=T0 + DAY)
    assert (cp.is_done(0), cp.is_done(1), cp.is_done(2)) == (False, False, True)
    assert (cp.live.processed, cp.live.successful, cp.live.failed) == (1, 0, 1)
    assert list(cp.live.failed_units) == [key_code(2)]
    cp.close()
    replayed = _replayed(tmp_path)
    assert list(replayed.failed_units) == [key_code(2)]
    assert (replayed.processed, replayed.failed) == (1, 1)


def test_the_memory_of_a_done_unit_is_at_most_12_bytes() -> None:
    done = DoneSet(sorted_codes=array("Q", range(100_000)), now=T0)
    assert done._base.itemsize + done._times.itemsize <= 12  # type: ignore[union-attr]
    assert len(done.to_bytes()) + len(done.times_bytes() or b"") == 12 * 100_000
