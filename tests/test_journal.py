"""Journal framing and replay: a torn or damaged tail never raises and never invents a record."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest

from scrapy_checkpoint import EnhancedCheckpoint, FileStore, read_stage
from scrapy_checkpoint.journal.frames import SEGMENT_MAGIC, scan_segment
from scrapy_checkpoint.journal.groups import BATCH_MARK, REQUEST_MARK, decode_group, encode_group
from scrapy_checkpoint.stores.file import SegmentWriter, read_regular


def _segment(tmp_path: Path, payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """Write payloads; return the segment bytes and each record's end offset."""
    path = tmp_path / "journal-00000000.log"
    writer = SegmentWriter(str(path))
    ends = []
    for payload in payloads:
        writer.append(payload)
        ends.append(writer.size)
    writer.close()
    return path.read_bytes(), ends


def _payloads(n: int) -> list[bytes]:
    rng = random.Random(n)
    return [encode_group([rng.randrange(1 << 40) for _ in range(rng.randrange(0, 12))],
                         [rng.randrange(1 << 40) for _ in range(rng.randrange(0, 3))],
                         {"c": [i, i, 0, 0], "l": f"item-{i}"}) for i in range(n)]


def test_group_round_trip() -> None:
    payload = encode_group([1, 2, (1 << 64) - 1], [7], {"c": [4, 3, 1, 0], "l": "x"})
    group = decode_group(payload)
    assert list(group.done) == [1, 2, (1 << 64) - 1]
    assert list(group.failed) == [7]
    assert group.fields == {"c": [4, 3, 1, 0], "l": "x"}


def test_truncation_at_every_offset_of_the_last_records_keeps_the_whole_record_prefix(
    tmp_path: Path,
) -> None:
    payloads = _payloads(12)
    data, ends = _segment(tmp_path, payloads)
    for cut in range(ends[-5], len(data) + 1):
        scan = scan_segment(data[:cut])
        whole = sum(1 for end in ends if end <= cut)
        assert scan.payloads == payloads[:whole], cut
        assert scan.good_bytes == (ends[whole - 1] if whole else len(SEGMENT_MAGIC))
        assert scan.dropped_bytes == cut - scan.good_bytes
        assert (scan.problem is None) == (cut == scan.good_bytes)


def test_a_flipped_byte_stops_replay_before_the_damaged_record(tmp_path: Path) -> None:
    payloads = _payloads(8)
    data, ends = _segment(tmp_path, payloads)
    for pos in range(ends[-4], len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        scan = scan_segment(bytes(damaged))
        intact = sum(1 for end in ends if end <= pos)  # records wholly before the damage
        assert scan.payloads == payloads[:intact], pos
        assert scan.problem is not None


def test_a_file_is_read_whole_without_holding_it_twice(tmp_path: Path) -> None:
    """A segment or snapshot is read in one ``os.read`` and returned as read: chunks joined
    held it twice at once (tens of MB at the resume of a large frontier). A file whose
    size the file system does not tell (a /proc file) is still read to its end."""
    data = os.urandom(20 << 20)
    path = tmp_path / "journal-00000000.log"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        got = read_regular(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == data
    assert peak < len(data) + (1 << 20)
    maps = Path("/proc/self/maps")
    if maps.exists():  # st_size 0: read on until the end
        text = read_regular(maps)
        assert text.endswith(b"\n")
        assert text.count(b"\n") > 3


def test_request_records_go_in_one_batch_frame_per_group_and_a_cut_keeps_whole_groups(
    tmp_path: Path,
) -> None:
    """The records written before a group share one frame (one checksum), so replay
    skips them in one step; each is still a frame of its own at its ref, read back and
    checked alone. A cut anywhere keeps the groups before it, each with its records."""
    store = FileStore(tmp_path)
    path = store.segment_path("s", 0)
    path.parent.mkdir()
    writer = SegmentWriter(str(path), buffer_limit=600)  # a group's records: two batches
    groups, refs, ends = [], [], []
    for g in range(6):
        mine = []
        for k in range(g % 3 * 4):  # groups of 0, 4 and 8 records
            data = f'{{"url":"https://example.com/{g}/{k}"}}'.encode()
            mine.append((g * 100 + k, writer.put_request(g * 100 + k, data), data))
        group = encode_group([g], [], {"c": [g, g, 0, 0]})
        writer.append(group)
        groups.append(group)
        refs.append(mine)
        ends.append(writer.size)
    writer.close()
    data = path.read_bytes()
    scan = scan_segment(data, skip=(REQUEST_MARK, BATCH_MARK))
    assert scan.payloads == groups
    assert scan.problem is None
    frames = scan_segment(data)  # every frame: groups and batches, no loose record
    assert {bytes(p[:4]) for p in frames.payloads if p not in groups} == {BATCH_MARK}
    assert len(frames.payloads) < len(groups) + sum(map(len, refs))
    reader = store.request_reader("s")
    for mine in refs:
        for code, ref, record in mine:
            assert reader.read(ref, len(record), code) == record
    reader.close()
    for cut in range(ends[1], len(data) + 1):
        scan = scan_segment(data[:cut], skip=(REQUEST_MARK, BATCH_MARK))
        whole = sum(1 for end in ends if end <= cut)
        assert scan.payloads == groups[:whole], cut
        assert scan.good_bytes <= cut


def test_damaged_segment_header_replays_nothing_and_reports_it() -> None:
    scan = scan_segment(b"XXXXXXXX" + b"\0" * 20)
    assert scan.payloads == []
    assert scan.problem == "segment header missing or damaged"
    assert scan_segment(b"").problem is None


def _journal_path(directory: Path, stage: str) -> Path:
    (path,) = sorted((directory / stage).glob("journal-*.log"))[-1:]
    return path


def _killed_stage(directory: Path, units: int) -> None:
    """A stage whose process 'died': committed groups on disk, never closed. Its groups are
    committed every 10 updates, never by time (a slow machine must not shift them)."""
    cp = EnhancedCheckpoint(directory, "s", log_every=0, save_every=10, save_interval=3600)
    cp.start(total_items=units)
    for i in range(units):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    # Simulate kill -9: drop the lock and file handles without closing the stage.
    cp._lock.release()  # type: ignore[union-attr]
    cp._committer.close()  # the journal's file and the I/O thread, with no last commit


@pytest.mark.parametrize("where", ["torn", "flipped"])
def test_reopening_a_damaged_journal_resumes_from_the_last_good_group_and_keeps_the_bytes(
    checkpoint_dir: Path, where: str
) -> None:
    _killed_stage(checkpoint_dir, 95)  # 9 full groups of 10 plus a forced one of 5
    path = _journal_path(checkpoint_dir, "s")
    data = path.read_bytes()
    scan = scan_segment(data)
    last_start = len(data) - (len(scan.payloads[-1]) + 8)
    if where == "torn":
        path.write_bytes(data[: last_start + 5])
    else:
        damaged = bytearray(data)
        damaged[last_start + 12] ^= 0xFF
        path.write_bytes(bytes(damaged))

    view = read_stage(FileStore(checkpoint_dir), "s")
    assert view.state.progress.processed_items == 90
    assert any("dropped" in p for p in view.problems)

    cp = EnhancedCheckpoint(checkpoint_dir, "s", log_every=0)
    cp.start()
    assert cp.dropped_bytes > 0
    assert [i for i in range(95) if not cp.is_done(i)] == list(range(90, 95))
    for i in range(90, 95):
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    corrupt = list((checkpoint_dir / "s").glob("*.corrupt"))
    assert corrupt, "the damaged tail must be kept aside"
    state = read_stage(FileStore(checkpoint_dir), "s").state
    assert state.progress.processed_items == 95
    assert state.done_units == 95


def test_attached_data_of_one_group_is_replayed_by_name_whoever_recorded_it(
        tmp_path: Path) -> None:
    """Data attached with attach() and data a commit hook attaches in the same group are
    all journaled: each name replaces its own entry, not the others'."""
    hooked = {"depths": [1]}
    cp = EnhancedCheckpoint(tmp_path, "s", log_every=0, save_every=1000, save_interval=3600)
    cp.add_commit_hook(lambda: {"at": dict(hooked)} if hooked else None)
    cp.start()
    cp.attach("history", {"total": 7})
    cp.attach("cookies", [1, 2])
    cp.update(processed=1, successful=1, index=0)
    cp.save(force=True)  # one group: the three names
    hooked.clear()
    cp._lock.release()  # type: ignore[union-attr]  # as kill -9 leaves it: no last commit,
    cp._committer.close()  # no snapshot
    assert read_stage(FileStore(tmp_path), "s").attached == {"history": {"total": 7}, "cookies": [1, 2],
                                      "depths": [1]}
