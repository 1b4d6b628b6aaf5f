"""The Store protocol itself, on every store (``store_location``): the lock, the journal
and its request records, the readable state, removal. The rest of the conformance suite
proves the same stores through the checkpoint, the tracker and the manager."""

from __future__ import annotations

import os

import pytest

from scrapy_checkpoint import CheckpointLockedError, EnhancedCheckpoint
from scrapy_checkpoint.journal.groups import COUNTERS, INIT, encode_group
from scrapy_checkpoint.state import CheckpointState, Owner
from scrapy_checkpoint.stores import open_store


def test_a_held_stage_is_refused_to_a_second_lock_until_it_is_released(
    store_location: str,
) -> None:
    store, other = open_store(store_location), open_store(store_location)
    lock = store.lock("s", Owner.current())
    try:
        with pytest.raises(CheckpointLockedError, match=f"in use by pid {os.getpid()}"):
            other.lock("s", Owner.current())
        holder = other.live_owner("s")
        assert holder is not None
        assert holder.pid == os.getpid()
    finally:
        lock.release()
    lock.release()  # idempotent
    assert other.live_owner("s") is None
    other.lock("s", Owner.current()).release()


def test_a_second_checkpoint_on_an_open_stage_is_refused_and_changes_nothing(
    store_location: str,
) -> None:
    first = EnhancedCheckpoint(store_location, "s", log_every=0, save_every=1)
    first.start(total_items=3)
    first.update(processed=1, successful=1, index=0)
    with pytest.raises(CheckpointLockedError):
        EnhancedCheckpoint(store_location, "s", log_every=0).start()
    first.update(processed=1, successful=1, index=1)  # the holder goes on
    first.close()
    again = EnhancedCheckpoint(store_location, "s", log_every=0)
    state = again.start()
    assert state.progress.processed_items == 2
    again.close()


def test_groups_and_request_records_are_read_back_whole_and_in_order(store_location: str) -> None:
    store = open_store(store_location)
    lock = store.lock("s", Owner.current())
    try:
        assert not store.load("s").exists
        assert store.stages() == []
        writer = store.open_segment("s", 0, truncate_at=0, buffered=False)
        writer.append(encode_group([], [], {INIT: CheckpointState(stage="s").model_dump(mode="json")}))
        refs = [writer.put_request(code, f'{{"url": "u{code}"}}'.encode()) for code in (7, 8)]
        writer.append(encode_group([1, 2], [3], {COUNTERS: [3, 2, 1, 0]}))
        writer.fsync()
        loaded = store.load("s")
        assert loaded.exists
        assert [group.fields.get(COUNTERS) for group in loaded.payloads] == [None, [3, 2, 1, 0]]
        assert list(loaded.payloads[1].done) == [1, 2]
        assert list(loaded.payloads[1].failed) == [3]
        assert loaded.dropped_bytes == 0
        reader = store.request_reader("s")
        assert reader.read(refs[1], len(b'{"url": "u8"}'), 8) == b'{"url": "u8"}'
        with pytest.raises(ValueError, match="of unit 7, not 8"):
            reader.read(refs[0], len(b'{"url": "u7"}'), 8)  # another unit's record
        writer.close()

        store.write_state("s", CheckpointState(stage="s", done_units=3).model_dump_json().encode())
        state, problems = open_store(store_location).read_state("s")
        assert state is not None
        assert state.done_units == 3
        assert problems == []
        assert store.stages() == ["s"]
        usage = store.disk_usage("s")
        assert set(usage) == {"journal_bytes", "snapshot_bytes", "state_bytes"}
        assert usage["journal_bytes"] > 0
        assert usage["state_bytes"] > 0

        store.remove("s")
        assert store.stages() == []
        assert not store.load("s").exists
        assert store.read_state("s") == (None, [])
        assert store.live_owner("s") is not None  # the lock stays with its holder
    finally:
        lock.release()


def test_the_cli_in_this_process_shows_and_resets_a_named_memory_store(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from scrapy_checkpoint.cli import run
    from scrapy_checkpoint.stores.memory import forget_memory_store

    cp = EnhancedCheckpoint("memory://cli-test", "s", log_every=0)
    cp.start(total_items=4)
    cp.update(processed=1, successful=1, index=0)
    cp.close()
    try:
        assert run(["--backend", "memory://cli-test", "show", "s"]) == 0
        assert "1/4 (25.0%)" in capsys.readouterr().out
        assert run(["--backend", "memory://cli-test", "reset", "s"]) == 0
        assert open_store("memory://cli-test").stages() == []
        assert run(["--backend", "memory://", "show", "s"]) != 0  # a store of its own: empty
    finally:
        forget_memory_store("cli-test")


def test_a_stage_started_over_is_listed_and_its_state_written(
    store_location: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """start(reset=True) removes the stage's data under its lock and writes on: the Redis
    store took it off its list of stages for good (list, report, export and cleanup no
    longer saw it), the PostgreSQL store refused every state write of the run as 'changed by
    another process' (it expected the removed row's version)."""
    for reset, n in ((False, 4), (True, 2)):
        cp = EnhancedCheckpoint(store_location, "s", log_every=0, save_every=1)
        cp.start(total_items=10, reset=reset)
        for i in range(n):
            cp.update(processed=1, successful=1, index=i)
        cp.close()
    assert "changed by another process" not in caplog.text
    store = open_store(store_location)
    assert store.stages() == ["s"]
    state, problems = store.read_state("s")
    assert not problems
    assert state is not None
    assert state.progress.processed_items == 2
