"""EnhancedCheckpoint: lifecycle, status machine, locks, input files, damage, retention."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import (
    AsyncCheckpointTracker,
    CheckpointLockedError,
    ConfigError,
    EnhancedCheckpoint,
    FileStore,
    InputChangedError,
    InvalidTransitionError,
    Metrics,
    Status,
    read_stage,
)
from scrapy_checkpoint.journal.doneset import DoneSet
from scrapy_checkpoint.state import check_transition
from scrapy_checkpoint.stores import open_store


def _abandon(cp: EnhancedCheckpoint) -> None:
    """What kill -9 leaves: committed groups on disk, the stage never closed."""
    cp.save(force=True)
    cp._lock.release()  # type: ignore[union-attr]
    cp._committer.close()  # the journal's file and the I/O thread, with no last commit


def _run(directory: Path | str, stage: str, indexes: range, **options: Any) -> EnhancedCheckpoint:
    cp = EnhancedCheckpoint(directory, stage, log_every=0, **options)
    cp.start(total_items=100)
    for i in indexes:
        if not cp.should_skip(i):
            cp.update(processed=1, successful=1, last_item=f"item-{i}", index=i)
    return cp


def test_a_stage_runs_to_completion_and_its_state_file_says_so(checkpoint_dir: Path) -> None:
    cp = _run(checkpoint_dir, "s", range(100))
    cp.complete()
    cp.close()
    data = json.loads((checkpoint_dir / "s.json").read_text())
    assert data["stage"] == "s"
    assert data["status"] == "completed"
    assert data["progress"]["processed_items"] == 100
    assert data["progress"]["total_items"] == 100
    assert data["last_processed_item"] == "item-99"
    assert data["last_processed_index"] == 99
    assert data["owner"]["host"] == socket.gethostname()
    for key in ("input_file", "input_file_hash", "output_file", "batch_id", "created_at",
                "updated_at", "error_message", "error_count", "last_error_time", "metadata",
                "schema_version"):
        assert key in data


def test_a_stage_with_failed_units_completes_saying_how_many_and_how_to_redo_them(
    checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_checkpoint")
    cp = EnhancedCheckpoint(checkpoint_dir, "s", log_every=0)
    cp.start(total_items=3)
    cp.update(processed=1, successful=1, index=0)
    cp.update(processed=1, failed=1, index=1)
    cp.update(processed=1, failed=1, index=2)
    cp.complete()
    assert cp.status is Status.COMPLETED
    cp.close()
    assert "[s] Completed with 2 failed unit(s): tried, and not done. " \
        f"`scrapy-checkpoint --dir {checkpoint_dir} requeue s --failed`" in caplog.text
    assert "Completed. " not in caplog.text


def test_invalid_transitions_raise_naming_both_states() -> None:
    with pytest.raises(InvalidTransitionError, match=r"'completed' to 'paused'"):
        check_transition("s", Status.COMPLETED, Status.PAUSED)
    with pytest.raises(InvalidTransitionError, match=r"'initialized' to 'completed'"):
        check_transition("s", Status.INITIALIZED, Status.COMPLETED)
    check_transition("s", Status.RUNNING, Status.RECOVERING)
    check_transition("s", Status.FAILED, Status.RUNNING)


def test_completing_a_paused_stage_is_refused(store_location: str) -> None:
    cp = _run(store_location, "s", range(3))
    cp.pause()
    with pytest.raises(InvalidTransitionError, match="'paused' to 'completed'"):
        cp.complete()
    cp.close()


def test_a_crashed_stage_is_detected_logged_and_resumed(
    store_location: str, caplog: pytest.LogCaptureFixture
) -> None:
    _abandon(_run(store_location, "s", range(40)))
    caplog.set_level(logging.INFO, logger="scrapy_checkpoint")
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    state = cp.start()
    assert "Detected incomplete checkpoint for s. Resuming from 40 items" in caplog.text
    assert state.status is Status.RUNNING
    assert state.recoveries == 1
    assert [i for i in range(100) if not cp.should_skip(i)] == list(range(40, 100))
    cp.close()


def test_closing_a_running_stage_leaves_it_paused_not_crashed(store_location: str) -> None:
    _run(store_location, "s", range(10)).close()
    view = read_stage(open_store(store_location), "s")
    assert view.state.status is Status.PAUSED
    assert not view.crashed


def test_a_second_process_on_the_stage_is_refused_and_nothing_is_written(
    checkpoint_dir: Path, hold_stage: Any
) -> None:
    holder = hold_stage(checkpoint_dir, "s")
    before = {p: p.read_bytes() for p in checkpoint_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointLockedError) as info:
        EnhancedCheckpoint(checkpoint_dir, "s").start()
    assert f"pid {holder.pid} on host {socket.gethostname()}" in str(info.value)
    assert info.value.pid == holder.pid
    after = {p: p.read_bytes() for p in checkpoint_dir.rglob("*") if p.is_file()}
    assert after == before
    holder.close()
    cp = EnhancedCheckpoint(checkpoint_dir, "s")  # the owner is gone: the lock is free
    cp.start()
    assert cp.is_done(0)
    cp.close()


def test_a_changed_input_file_stops_the_resume_until_reset(store_location: str,
                                                            tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    source.write_text("a\nb\n")
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    cp.start(total_items=2, input_file=source)
    cp.update(processed=1, successful=1, index=0)
    cp.close()
    source.write_text("a\nB\n")
    cp = EnhancedCheckpoint(store_location, "s")
    with pytest.raises(InputChangedError, match=r"CHECKPOINT_RESET=True"):
        cp.start(input_file=source)
    assert cp.validate_input_file(source)[0] is False
    cp.close()
    assert read_stage(open_store(store_location), "s").state.progress.processed_items == 1

    cp = EnhancedCheckpoint(store_location, "s")
    state = cp.start(input_file=source, reset=True)
    assert state.progress.processed_items == 0
    assert not cp.is_done(0)
    assert cp.validate_input_file(source) == (True, "unchanged")
    cp.close()


def test_a_corrupt_state_file_is_restored_from_the_backup_with_a_warning(
    checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = _run(checkpoint_dir, "s", range(20))
    cp.save(force=True)
    cp.close()
    (checkpoint_dir / "s.json").write_text('{"stage": "s", "status": "runn')
    store = FileStore(checkpoint_dir)
    state, problems = store.read_state("s")
    assert state is not None
    assert state.stage == "s"
    assert any("damaged" in p for p in problems)
    assert problems[-1] == "using the backup s.json.bak"
    caplog.set_level(logging.WARNING, logger="scrapy_checkpoint")
    cp = EnhancedCheckpoint(checkpoint_dir, "s")
    state2 = cp.start()
    assert "s.json is damaged" in caplog.text
    assert state2.progress.processed_items == 20
    cp.close()
    assert json.loads((checkpoint_dir / "s.json").read_text())["progress"]["processed_items"] == 20


def test_repeated_updates_of_a_done_unit_are_ignored(store_location: str) -> None:
    cp = _run(store_location, "s", range(5))
    assert cp.update(processed=1, successful=1, index=3) is False
    assert cp.state.progress.processed_items == 5
    cp.close()


def test_keys_of_any_kind_are_skipped_after_a_resume(store_location: str) -> None:
    keys: list[Any] = ["https://example.com/a", b"\x01" * 20, 2**70, -3, 7]
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    cp.start()
    for k in keys:
        cp.update(processed=1, successful=1, key=k)
    _abandon(cp)
    cp = EnhancedCheckpoint(store_location, "s")
    cp.start()
    assert all(cp.should_skip(k) for k in keys)
    assert not cp.should_skip("https://example.com/b")
    assert not cp.should_skip(8)
    assert cp.resumed_skips == len(keys)
    cp.close()


def test_failed_units_are_skipped_unless_retried(store_location: str) -> None:
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    cp.start(total_items=3)
    cp.update(processed=1, successful=1, index=0)
    cp.update(processed=1, failed=1, index=1)
    cp.update(processed=1, successful=1, index=2)
    cp.fail(RuntimeError("boom"))
    cp.close()
    cp = EnhancedCheckpoint(store_location, "s")
    state = cp.start()
    assert state.error_message == "RuntimeError: boom"
    assert state.error_count == 1
    assert cp.is_done(1)
    cp.close()
    cp = EnhancedCheckpoint(store_location, "s")
    state = cp.start(retry_failed=True)
    assert not cp.is_done(1)
    assert cp.is_done(0)
    assert (state.progress.processed_items, state.progress.failed_items) == (2, 0)
    cp.update(processed=1, successful=1, index=1)
    cp.complete()
    cp.close()
    final = read_stage(open_store(store_location), "s").state.progress
    assert (final.processed_items, final.successful_items, final.failed_items) == (3, 3, 0)


def test_metadata_errors_and_batch_survive_a_crash(store_location: str) -> None:
    cp = _run(store_location, "s", range(3))
    cp.set_metadata(source="feed-a", page=3)
    cp.record_error("timeout on item 2")
    cp.update(processed=1, successful=1, index=3, batch_id="b-7")
    _abandon(cp)
    state = read_stage(open_store(store_location), "s").state
    assert state.metadata == {"source": "feed-a", "page": 3}
    assert state.error_message == "timeout on item 2"
    assert state.error_count == 1
    assert state.last_error_time is not None
    assert state.batch_id == "b-7"


def test_stale_when_not_updated_for_max_age(store_location: str) -> None:
    cp = _run(store_location, "s", range(3))
    assert not cp.is_stale(max_age_hours=1)
    assert cp.is_stale(max_age_hours=0)
    cp.close()


def test_snapshot_retention_keeps_the_last_generations(checkpoint_dir: Path) -> None:
    cp = EnhancedCheckpoint(checkpoint_dir, "s", log_every=0, compact_min_bytes=4096,
                            keep_snapshots=3)
    cp.start()
    for i in range(20_000):
        cp.update(processed=1, successful=1, key=f"https://example.com/{i}")
    cp.complete()
    cp.close()
    data = checkpoint_dir / "s"
    snaps = sorted(p.name for p in data.glob("snapshot-*.bin"))
    segments = sorted(p.name for p in data.glob("journal-*.log"))
    assert len(snaps) == 3
    # Only segments from the oldest kept snapshot on remain.
    assert segments[0].split("-")[1] == snaps[0].split("-")[1].replace(".bin", ".log")
    cp = EnhancedCheckpoint(checkpoint_dir, "s")
    cp.start()
    assert all(cp.is_done(f"https://example.com/{i}") for i in range(0, 20_000, 997))
    assert cp.state.done_units == 20_000
    cp.close()


def test_a_damaged_newest_snapshot_falls_back_to_an_older_one(checkpoint_dir: Path) -> None:
    cp = EnhancedCheckpoint(checkpoint_dir, "s", log_every=0, compact_min_bytes=4096)
    cp.start()
    for i in range(5_000):
        cp.update(processed=1, successful=1, index=i)
    _abandon(cp)
    snaps = sorted((checkpoint_dir / "s").glob("snapshot-*.bin"))
    assert len(snaps) >= 2
    blob = bytearray(snaps[-1].read_bytes())
    blob[-3] ^= 0xFF
    snaps[-1].write_bytes(bytes(blob))
    cp = EnhancedCheckpoint(checkpoint_dir, "s")
    state = cp.start()
    assert state.done_units == 5_000
    assert state.progress.processed_items == 5_000
    cp.close()


def test_bad_options_get_an_error_naming_the_option_and_values() -> None:
    with pytest.raises(ConfigError, match=r"durability='sometimes'.*'fsync', 'flush' or 'none'"):
        EnhancedCheckpoint("x", "s", durability="sometimes")
    with pytest.raises(ConfigError, match="save_every=0"):
        EnhancedCheckpoint("x", "s", save_every=0)
    with pytest.raises(ConfigError, match=r"Invalid stage name '\.\./etc'"):
        EnhancedCheckpoint("x", "../etc")


def test_update_before_start_is_an_error(checkpoint_dir: Path) -> None:
    with pytest.raises(Exception, match="call start"):
        EnhancedCheckpoint(checkpoint_dir, "s").update(processed=1)


def test_hooks_sync_and_async_are_called(store_location: str) -> None:
    calls: list[str] = []

    async def on_complete(cp: EnhancedCheckpoint) -> None:
        await asyncio.sleep(0)
        calls.append(f"complete:{cp.state.progress.processed_items}")

    cp = EnhancedCheckpoint(
        store_location, "s", log_every=2,
        on_start=lambda cp: calls.append("start"),
        on_progress=lambda cp: calls.append(f"progress:{cp.state.progress.processed_items}"),
        on_complete=on_complete,
        on_failure=lambda cp, err: calls.append(f"failure:{err}"),
    )
    cp.start(total_items=4)
    for i in range(4):
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    assert calls == ["start", "progress:2", "progress:4", "complete:4"]


def test_the_progress_line_has_the_documented_form() -> None:
    m = Metrics(total=11000, processed=5000, successful=4910, failed=90, skipped=0,
                throughput=42.3, elapsed_seconds=100)
    assert m.progress_line() == (
        "Progress: 45.5% (5000/11000) | Success: 98.2% | Throughput: 42.3 items/sec | "
        "ETA: 2.4 min"
    )
    unknown = Metrics(total=None, processed=7, successful=7, failed=0, skipped=0,
                      throughput=None, elapsed_seconds=1)
    assert unknown.progress_line() == (
        "Progress: 7 items | Success: 100.0% | Throughput: n/a | ETA: unknown")


def test_done_set_stays_exact_across_compactions() -> None:
    done = DoneSet()
    codes = [(i * 2654435761) % (1 << 64) for i in range(200_000)]
    for c in codes:
        assert done.add(c)
    assert not done.add(codes[10])
    assert len(done) == len(codes)
    again = DoneSet.from_bytes(done.to_bytes())
    assert all(c in again for c in codes[::101])
    assert 3 not in again
    again.discard_many(codes[:5])
    assert codes[0] not in again
    assert codes[5] in again


def test_lost_work_survives_a_crash_and_makes_the_stage_end_incomplete(
    store_location: str, caplog: pytest.LogCaptureFixture
) -> None:
    cp = _run(store_location, "s", range(3))
    cp.add_unit(1001, {"redo": 1})
    cp.add_unit(1002, {"redo": 2})
    cp.record_lost("unjournaled", 2)
    cp.record_lost("unjournaled", 1)
    cp.record_lost("unrestorable", 1, [1001])
    _abandon(cp)  # replayed from the journal, not from memory
    view = read_stage(open_store(store_location), "s")
    assert view.state.lost == {"unjournaled": 3, "unrestorable": 1}
    assert view.state.pending_units == 1  # 1001 given up, 1002 still pending

    caplog.set_level(logging.INFO, logger="scrapy_checkpoint")
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    cp.start()
    cp.finish_unit(1002, processed=1, successful=1)
    cp.complete()
    assert cp.status is Status.INCOMPLETE
    assert "[s] Incomplete: the work of 4 unit(s) was lost (unjournaled: 3, unrestorable: 1)" \
        in caplog.text
    assert "Completed" not in caplog.text
    cp.close()
    state = read_stage(open_store(store_location), "s").state
    assert (state.status, state.lost) == (Status.INCOMPLETE, {"unjournaled": 3,
                                                              "unrestorable": 1})

    again = EnhancedCheckpoint(store_location, "s", log_every=0)  # an incomplete stage resumes
    assert again.start().status is Status.RUNNING
    assert again.should_skip(0)
    again.complete()
    assert again.status is Status.INCOMPLETE  # the lost work is still lost
    again.close()

    fresh = EnhancedCheckpoint(store_location, "s", log_every=0)
    fresh.start(reset=True)
    fresh.complete()
    assert (fresh.status, fresh.state.lost) == (Status.COMPLETED, {})
    fresh.close()


def test_every_field_the_crawl_writes_is_read_back_from_the_journal_and_a_snapshot(
    store_location: str,
) -> None:
    """What the crawl journals passes the replay checks: feed documents' third output
    element, lost counts taken back (negative deltas). A writer and the checks that read
    its records back must agree, or replay stops at the first such group."""
    cp = _run(store_location, "s", range(3))
    cp.record_output("/data/items.json", 0, 120, {"n": 3, "closing": "\n]"})
    cp.record_lost("session_expired", 2)
    cp.record_lost("session_expired", -1)
    _abandon(cp)
    view = read_stage(open_store(store_location), "s")
    assert view.problems == []
    assert view.state.lost == {"session_expired": 1}
    assert view.outputs["/data/items.json"][:2] == [0, 120]
    cp = EnhancedCheckpoint(store_location, "s", log_every=0)
    cp.start()
    cp.close()  # writes a snapshot: the next read starts from it
    view = read_stage(open_store(store_location), "s")
    assert view.problems == []
    assert view.state.lost == {"session_expired": 1}
    assert view.outputs["/data/items.json"][2] == {"n": 3, "closing": "\n]"}


@pytest.mark.parametrize("total", [-5, 1 << 63, 1 << 70, 2.5, "100", True])
def test_a_total_no_state_can_hold_is_refused_before_anything_is_journaled(
    checkpoint_dir: Path, total: object,
) -> None:
    """A negative total, one past 2**63 - 1 or not a whole number is one ConfigError from
    start() and set_total(); the journal never records it (a bad total in a group made
    the stage's own journal unreadable from there on)."""
    with EnhancedCheckpoint(checkpoint_dir, "s", log_every=0) as cp:
        with pytest.raises(ConfigError, match="Invalid total_items"):
            cp.start(total_items=total)  # type: ignore[arg-type]
        cp.start(total_items=4)
        with pytest.raises(ConfigError, match="Invalid total_items"):
            cp.set_total(total)  # type: ignore[arg-type]
        for i in range(4):
            cp.update(processed=1, successful=1, index=i)
        cp.complete()
    view = read_stage(open_store(checkpoint_dir), "s")
    assert view.problems == []
    assert view.state.progress.total_items == 4
    assert view.state.progress.processed_items == 4


def test_a_new_stage_whose_output_file_already_holds_bytes_says_so_at_start(
    store_location: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The checkpoint is gone (a directory deleted, a Redis emptied between runs) but the
    output file the stage appends to is not: nothing can tell the new run which work is
    done, so it does it all again and appends it a second time. Its start says so, with
    what to do; a stage resumed from its checkpoint, or started over with reset, does not."""
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1}\\n')
    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint"):
        with EnhancedCheckpoint(store_location, "s", log_every=0) as cp:
            cp.start(total_items=2, output_file=out)
            cp.update(processed=1, successful=1, index=0)
        warned = [r.getMessage() for r in caplog.records if "already holds" in r.getMessage()]
        assert len(warned) == 1
        assert str(out) in warned[0]
        assert "move the file away" in warned[0]
        caplog.clear()
        with EnhancedCheckpoint(store_location, "s", log_every=0) as cp:  # resumed: known
            cp.start(total_items=2, output_file=out)
        with EnhancedCheckpoint(store_location, "s", log_every=0) as cp:  # a chosen start over
            cp.start(total_items=2, output_file=out, reset=True)
        assert not [r for r in caplog.records if "already holds" in r.getMessage()]


def test_an_update_past_the_counters_range_is_refused_and_nothing_is_recorded(
    checkpoint_dir: Path,
) -> None:
    """Counters are signed 64-bit in every store: an update that would take one past that
    is one ConfigError, before its unit or counts are applied (it made the stage's own
    journal or snapshot unwritable, and the stage could not be completed)."""
    with EnhancedCheckpoint(checkpoint_dir, "s", log_every=0, save_every=1) as cp:
        cp.start(total_items=3)
        assert cp.update(processed=1 << 62, successful=1 << 62, index=0)
        with pytest.raises(ConfigError, match="Invalid update processed"):
            cp.update(processed=1 << 62, successful=1 << 62, index=1)
        assert not cp.should_skip(1)  # the refused update marked nothing done
        with pytest.raises(ConfigError, match="Invalid update failed"):
            cp.update(failed=-(1 << 63) - 1)
        assert cp.update(processed=1, successful=1, index=1)
        cp.complete()
    view = read_stage(open_store(checkpoint_dir), "s")
    assert view.problems == []
    assert view.state.status is Status.COMPLETED
    assert view.state.progress.processed_items == (1 << 62) + 1


def test_a_small_update_that_takes_a_counter_near_the_limit_past_it_is_refused(
    checkpoint_dir: Path,
) -> None:
    """Only updates with a huge delta were checked: processed=10 on a counter at 2**63 - 6
    was accepted, the stage's snapshot then failed at close with a pydantic traceback, and
    the journal read back as "not written by this package" (damaged)."""
    top = (1 << 63) - 1
    with EnhancedCheckpoint(checkpoint_dir, "s", log_every=0, save_every=1) as cp:
        cp.start(total_items=4)
        assert cp.update(processed=top - 5, index=0)
        with pytest.raises(ConfigError, match="Invalid update processed=10"):
            cp.update(processed=10, index=1)
        assert not cp.should_skip(1)
        assert cp.update(processed=5, index=1)  # up to the limit itself
        with pytest.raises(ConfigError, match="Invalid update processed=1"):
            cp.update(processed=1, index=2)
        cp.complete()
    view = read_stage(open_store(checkpoint_dir), "s")
    assert view.problems == []
    assert view.state.status is Status.COMPLETED
    assert view.state.progress.processed_items == top


def test_names_that_are_not_utf8_are_kept_and_every_state_file_is_written(
        tmp_path: Path) -> None:
    """A file name that is not UTF-8 reaches Python as a str with lone surrogates
    (``surrogateescape``); given as the last item, the input file or the batch id, and in an
    error message, it must not fail the write of the state file (it did, at every commit
    and at close, with a PydanticSerializationError traceback)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "f\udcff.txt").write_bytes(b"data")  # the name's bytes: b"f\xff.txt"
    name = next(iter(inputs.iterdir()))
    assert "\udcff" in str(name)
    cp = EnhancedCheckpoint(tmp_path / "cp", "s", log_every=0, save_every=1)
    cp.start(total_items=2, input_file=name)
    for i in range(2):
        cp.update(processed=1, successful=1, index=i, last_item=name.name, batch_id="b\udc80")
    cp.record_error(f"cannot parse {name.name}")
    cp.complete()
    cp.close()
    state_file = tmp_path / "cp" / "s.json"
    written = json.loads(state_file.read_bytes().decode("utf-8"))  # UTF-8, whole
    assert written["status"] == "completed"
    assert written["last_processed_item"] == "f\\udcff.txt"
    assert written["input_file"].endswith("f\\udcff.txt")
    assert written["batch_id"] == "b\\udc80"
    view = read_stage(FileStore(tmp_path / "cp"), "s")
    assert view.problems == []
    assert view.state.done_units == 2
    cp = EnhancedCheckpoint(tmp_path / "cp", "s", log_every=0)
    cp.start(input_file=name)  # the same input: accepted, nothing to redo
    assert len(cp.live.done) == 2
    cp.complete()
    cp.close()


def test_a_first_start_refused_for_a_missing_input_file_leaves_the_stage_startable(
        tmp_path: Path) -> None:
    """start(input_file=...) naming a file that is not there: one ConfigError saying so (it
    was a bare FileNotFoundError), and the next start, with the right path, runs the stage.
    The refused start left a state file ('initialized') beside a journal without groups, and
    every later start was refused with 'The journal and snapshots of stage 's' ... are
    missing (its directory was deleted or emptied)' until the stage was reset."""
    rows = tmp_path / "rows.csv"
    rows.write_text("a\nb\n")
    cp = EnhancedCheckpoint(tmp_path / "cp", "s", log_every=0)
    with pytest.raises(ConfigError, match=r"Input file '.*missing.csv' of stage 's' cannot "
                                          r"be read: No such file or directory\. Nothing was"):
        cp.start(total_items=2, input_file=tmp_path / "missing.csv")
    cp.close()
    other = EnhancedCheckpoint(tmp_path / "cp2", "s", log_every=0)
    with pytest.raises(OSError, match="cannot be read"):  # an OSError too, as before
        other.start(input_file=tmp_path / "missing.csv")
    other.close()
    cp = EnhancedCheckpoint(tmp_path / "cp", "s", log_every=0)
    cp.start(total_items=2, input_file=rows)
    cp.update(processed=1, successful=1, index=0)
    cp.complete()
    cp.close()
    view = read_stage(FileStore(tmp_path / "cp"), "s")
    assert view.problems == []
    assert view.state.status is Status.COMPLETED
    assert view.state.done_units == 1


def test_a_stage_completed_before_its_total_says_so_not_a_plain_completed(
    checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracker block left normally after 60 of its 100 items logged '[s] Completed.
    Progress: 60.0% (60/100)' at INFO, as if the work were done."""
    caplog.set_level(logging.INFO, logger="scrapy_checkpoint")

    async def job(n: int, stage: str) -> None:
        async with AsyncCheckpointTracker(checkpoint_dir, stage, progress_bar=False,
                                          log_every=0) as tracker:
            tracker.start(total_items=100)
            for i in range(n):
                tracker.update(processed=1, successful=1, index=i)

    asyncio.run(job(60, "short"))
    assert "[short] Completed, but 40 of the 100 item(s) of its total were not processed" \
        in caplog.text
    assert "[short] Completed. " not in caplog.text
    assert any(r.levelno == logging.WARNING and "[short] Completed" in r.getMessage()
               for r in caplog.records)
    asyncio.run(job(100, "whole"))
    assert "[whole] Completed. Progress: 100.0% (100/100)" in caplog.text


def test_a_completed_stage_without_a_total_has_nothing_left_not_an_unknown_eta(
    checkpoint_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stage fed from a generator (no total) ended '[s] Completed. Progress: 400 items |
    ... | ETA: unknown', and the report said 'ETA: unknown' of it for ever: nothing
    remains of a completed stage, total or not."""
    caplog.set_level(logging.INFO, logger="scrapy_checkpoint")

    async def job() -> None:
        async with AsyncCheckpointTracker(checkpoint_dir, "s", progress_bar=False,
                                          log_every=0) as tracker:
            tracker.start()
            for i in range(40):
                tracker.update(processed=1, successful=1, index=i)
            assert tracker.metrics().eta_seconds is None  # running: unknown indeed

    asyncio.run(job())
    assert "[s] Completed. Progress: 40 items | Success: 100.0% | Throughput: " in caplog.text
    assert caplog.text.rstrip().endswith("| ETA: 0 s")
    view = read_stage(open_store(str(checkpoint_dir)), "s")
    assert view.metrics().eta_seconds == 0.0
    assert view.to_dict()["eta_seconds"] == 0.0
