"""The frontier on disk: a pending unit's payload is written once, as a request record in
the journal, and read back by its ref; snapshots keep the index, never the payloads, and
retention never deletes the record of a unit still pending. On every store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.journal.groups import ADDED, INIT, decode_request, encode_group, encode_request
from scrapy_checkpoint.journal.pending import INLINE, NO_REF, PendingIndex
from scrapy_checkpoint.journal.snapshot import PENDING_INDEX, decode_snapshot
from scrapy_checkpoint.state import CheckpointState
from scrapy_checkpoint.stores import open_store
from scrapy_checkpoint.stores.file import FileStore
from scrapy_checkpoint.stores.memory import MemoryStore
from scrapy_checkpoint.stores.postgres import PostgresStore


def _abandon(cp: EnhancedCheckpoint) -> None:
    """What kill -9 leaves: committed groups in the store, the stage never closed."""
    cp.save(force=True)
    cp.drain_io()
    cp._lock.release()  # type: ignore[union-attr]
    cp._committer.close()


def _reopen(location: str, **options: Any) -> EnhancedCheckpoint:
    cp = EnhancedCheckpoint(location, "s", log_every=0, **options)
    cp.start()
    return cp


def test_the_index_keeps_order_priorities_and_holes_closed_by_compact() -> None:
    index = PendingIndex()
    for code in (5, 3, 9, 7):
        assert index.add(code, code << 8, code, priority=-code)
    assert not index.add(3, 1, 1)  # pending already
    assert index.discard(9)
    assert not index.discard(9)
    assert index.add_inline(11, {"url": "kept"})
    assert index.add_inline(12, None)
    assert list(index) == [5, 3, 7, 11, 12]
    assert [e[0] for e in index.entries()] == [5, 3, 7, 11, 12]
    assert index.entry(7) == (7 << 8, 7, -7)
    assert (index.has_payload(12), index.has_payload(11), index.unjournaled()) == (False, True, 1)
    assert list(index.take_freed()) == [9 << 8]
    again, size = PendingIndex.from_bytes(index.to_bytes())
    again.keep_inline(index.inline_pairs())
    assert size == len(index.to_bytes())
    assert list(again.entries()) == list(index.entries())
    assert again.get(11) == {"url": "kept"}
    assert again.get(12) is None
    assert again.entry(11)[0] == INLINE
    assert again.entry(12)[0] == NO_REF
    with pytest.raises(ValueError, match="cut short"):
        PendingIndex.from_bytes(index.to_bytes()[:-1])
    with pytest.raises(ValueError, match="disagree"):
        again.keep_inline([])  # its inline unit has no payload


def test_a_request_record_names_its_unit() -> None:
    record = encode_request(42, b'{"url":"u"}')
    assert decode_request(record, 42) == b'{"url":"u"}'
    with pytest.raises(ValueError, match="of unit 42, not 43"):
        decode_request(record, 43)
    with pytest.raises(ValueError, match="cut short"):
        decode_request(record[:5], 42)


def test_payloads_are_read_back_from_the_journal_after_a_kill(store_location: str) -> None:
    cp = _reopen(store_location)
    cp.add_unit(1, {"url": "https://example.com/1", "meta": {"k": [1, 2]}}, priority=7)
    cp.add_unit(2, None)  # nothing redoes it
    cp.add_unit(3, b'{"url":"raw"}')
    assert cp.live.pending.get(1) == {"url": "https://example.com/1", "meta": {"k": [1, 2]}}
    _abandon(cp)
    cp = _reopen(store_location)
    pending = cp.live.pending
    assert list(pending) == [1, 2, 3]
    assert pending.get(1) == {"url": "https://example.com/1", "meta": {"k": [1, 2]}}
    assert pending.entry(1)[2] == 7  # type: ignore[index]
    assert pending.get(2) is None
    assert pending.get(3) == {"url": "raw"}
    cp.finish_unit(1, processed=1, failed=1)  # failed: kept to be retried
    cp.finish_unit(3, processed=1, successful=1)
    _abandon(cp)
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    cp.start(retry_failed=True)
    assert list(cp.live.pending) == [2, 1]
    assert cp.live.pending.get(1)["url"] == "https://example.com/1"
    cp.close()


def test_compaction_and_retention_keep_the_records_of_pending_units_only(
        store_location: str) -> None:
    options = {"compact_min_bytes": 4096, "keep_snapshots": 1, "save_every": 10}
    cp = _reopen(store_location, **options)
    cp.add_unit(1, {"url": "first"}, priority=3)  # pending all along
    pad = "x" * 300
    for code in range(2, 3002):
        cp.add_unit(code, {"url": f"u{code}", "pad": pad})
        if code % 100:  # one in a hundred stays pending
            cp.finish_unit(code, processed=1, successful=1)
    cp.drain_io()
    assert cp._committer._generation >= 10  # compacted many times, at linear cost
    store = cp.store
    if isinstance(store, (FileStore, MemoryStore, PostgresStore)):
        segments = (store.segments("s") if isinstance(store, (MemoryStore, PostgresStore)) else
                    [int(p.stem.split("-")[1]) for p in store.data_dir("s").glob("journal-*.log")])
        assert 0 in segments  # holds the first unit's record
        assert len(segments) < cp._committer._generation  # others are gone
    else:
        drained = False
        for _ in range(3):  # freed records go a snapshot later
            for code in range(3002, 3500):
                cp.add_unit(code, {"url": f"u{code}", "pad": pad})
                cp.finish_unit(code, processed=1, successful=1)
            cp.drain_io()
            drained = True
        assert drained
        held = store.client.hlen(store.key("s", "requests"))  # type: ignore[attr-defined]
        assert held < 1500  # of the 3500 written, the done ones are deleted
    _abandon(cp)
    cp = _reopen(store_location, **options)
    pending = cp.live.pending
    assert pending.get(1) == {"url": "first"}
    assert pending.entry(1)[2] == 3  # type: ignore[index]
    still = [code for code in range(2, 3002) if code % 100 == 0]
    assert [code for code in pending if code != 1] == still
    assert all(pending.get(code)["url"] == f"u{code}" for code in still)
    for code in range(5000, 7000):  # more compactions after a load: the counts carry on
        cp.add_unit(code, {"url": f"u{code}", "pad": pad})
        cp.finish_unit(code, processed=1, successful=1)
    cp.drain_io()
    _abandon(cp)
    cp = _reopen(store_location, **options)
    assert cp.live.pending.get(1) == {"url": "first"}
    assert [code for code in cp.live.pending if code != 1] == still
    cp.close()


def test_a_journal_written_with_payloads_in_its_groups_still_resumes(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store._dirs.open("s", store.data_dir("s"))
    writer = store.open_segment("s", 0, truncate_at=0, buffered=False)
    init = CheckpointState(stage="s").model_dump(mode="json")
    writer.append(encode_group([], [], {INIT: init, ADDED: [[5, {"url": "old"}], [6, None]]}))
    writer.close()
    cp = _reopen(str(tmp_path), compact_min_bytes=4096)
    assert cp.live.pending.get(5) == {"url": "old"}
    assert cp.live.pending.get(6) is None
    cp.close()  # snapshots the payload kept in memory
    snaps = sorted(store.data_dir("s").glob("snapshot-*.bin"))
    header, _ = decode_snapshot(snaps[-1].read_bytes())
    assert header[PENDING_INDEX].get(5) == {"url": "old"}
    view = open_store(str(tmp_path)).load("s")
    assert view.snapshot is not None
