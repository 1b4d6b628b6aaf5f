"""Write faults, injected for real: a full disk (a small tmpfs), the checkpoint directory
deleted or replaced under a running job, reset killed with SIGKILL at every step, planted
symbolic links, user folders beside the stages, permissions the user set.

Each test counts the committed units it loses; the goal, and what each asserts, is zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from scrapy_checkpoint import (
    CheckpointWriteError,
    EnhancedCheckpoint,
    FileStore,
    Status,
    UnifiedCheckpointManager,
    read_stage,
)
from scrapy_checkpoint.errors import CorruptCheckpointError
from scrapy_checkpoint.journal.doneset import DoneSet
from scrapy_checkpoint.journal.frames import scan_segment
from scrapy_checkpoint.journal.groups import BATCH_MARK, REQUEST_MARK, encode_group
from scrapy_checkpoint.journal.keys import key_code
from scrapy_checkpoint.stores.file import SegmentWriter

from .conftest import PYTHON, SCRIPTS, python_env
from .crawl import PROJECT, CrawlRun, Outputs, crawl, sigkill
from .crawl import run as run_crawl
from .site import Site

CLI = [PYTHON, "-m", "scrapy_checkpoint.cli"]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with this tree's package; its exit code is the caller's to check."""
    return subprocess.run(cmd, check=False, env=python_env(), capture_output=True, text=True,
                          timeout=1200)


def cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(*CLI, "--dir", str(directory), *args)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root), unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          check=False, capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full (another process filling the disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def done_units(directory: Path, stage: str) -> DoneSet:
    """The done-set of ``stage`` as committed on disk (read without its lock)."""
    live = read_stage(FileStore(directory), stage)._live
    assert live is not None
    return live.done


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.log"))


# -- 1. a full disk --------------------------------------------------------------------------


def test_a_full_disk_never_leaves_a_torn_frame_behind_later_groups(tmp_path: Path) -> None:
    """Every update that returned is replayed, and so is each one that raised once space
    came back: nothing committed is dropped behind a torn frame."""
    n = 5000
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        cp = EnhancedCheckpoint(mnt / "cp", "s", save_every=1, log_every=0, durability="flush",
                                state_interval=3600.0)
        cp.start(total_items=n)
        failures: list[BaseException] = []
        torn = 0
        for i in range(n):
            if i == 1500:
                fill(mnt / "filler")
            try:
                cp.update(processed=1, successful=1, index=i)
            except (CheckpointWriteError, OSError) as exc:
                failures.append(exc)
                for seg in segments(mnt / "cp" / "s"):  # cut back: no torn bytes on disk
                    torn += scan_segment(seg.read_bytes()).problem is not None
                (mnt / "filler").unlink()  # the operator frees space; the job goes on
        assert failures
        cp.abandon()  # the process dies here (no closing snapshot): replay tells
        view = read_stage(FileStore(mnt / "cp"), "s")
        lost = n - len(done_units(mnt / "cp", "s"))
        assert lost == 0, f"{lost} committed units lost"
        assert torn == 0
        assert {type(exc) for exc in failures} == {CheckpointWriteError}
        assert all("No space left on device" in str(exc) for exc in failures)
        assert view.problems == []
        assert not list((mnt / "cp").rglob("*.tmp")), "a failed write left a temp file"


def test_request_records_buffered_across_a_full_disk_are_all_written_once_space_is_back(
    tmp_path: Path,
) -> None:
    """The writer writes its buffer of request records from where it is (no copy): a write
    that fails on a full disk keeps them, the buffer grows again while the failure is
    still held (its traceback and all), and once space is back every record and group is
    on disk, each record read back at its ref."""
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        store = FileStore(mnt / "cp")
        path = store.segment_path("s", 0)
        path.parent.mkdir(parents=True)
        writer = SegmentWriter(str(path))
        records: list[tuple[int, int, bytes]] = []
        groups: list[bytes] = []
        failures: list[OSError] = []
        for g in range(40):
            if g == 5:
                fill(mnt / "filler")
            for k in range(50):
                code = g * 1000 + k
                data = f'{{"url":"https://example.com/{g}/{k}","pad":"{"x" * 200}"}}'.encode()
                try:
                    records.append((code, writer.put_request(code, data), data))
                except OSError as exc:  # the buffer passed its limit: written, and refused
                    failures.append(exc)
            group = encode_group([g], [], {"c": [g, g, 0, 0]})
            try:
                writer.append(group)
            except OSError as exc:
                failures.append(exc)  # held: its traceback keeps the failed write's frames
            groups.append(group)
            if g == 8:
                (mnt / "filler").unlink()
        writer.close()
        assert failures
        scan = scan_segment(path.read_bytes(), skip=(REQUEST_MARK, BATCH_MARK))
        assert scan.problem is None
        assert scan.payloads == groups
        reader = store.request_reader("s")
        assert [reader.read(ref, len(d), code) for code, ref, d in records] == \
            [d for _, _, d in records]
        reader.close()


def test_a_snapshot_that_does_not_fit_leaves_no_temp_file_and_loses_no_pending_unit(
        tmp_path: Path) -> None:
    """A frontier's snapshot is written from its arrays when a compaction falls due; with
    room for the next group but not for the snapshot, the compaction stops the job with
    one clear error, leaves no temp file and no new segment, and every pending unit is
    there after a restart."""
    codes = [key_code(f"https://example.com/{i}".encode()) for i in range(20_000)]
    with tmpfs(tmp_path / "mnt", "8m") as mnt:
        cp = EnhancedCheckpoint(mnt / "cp", "s", save_every=1000, log_every=0,
                                compact_min_bytes=64 << 20, state_interval=3600.0)
        cp.start()
        for code in codes:  # no compaction yet: all in the journal
            cp.add_unit(code, {"url": "https://example.com/"})
        cp.save(force=True)
        cp.abandon()  # dies: no closing snapshot
        fill(mnt / "filler")
        with open(mnt / "filler", "r+b") as filler:  # room for a group, not a snapshot
            filler.truncate(os.path.getsize(mnt / "filler") - (64 << 10))
        cp = EnhancedCheckpoint(mnt / "cp", "s", save_every=1, log_every=0,
                                compact_min_bytes=4096, state_interval=3600.0)
        with pytest.raises(CheckpointWriteError, match="No space left on device"):
            cp.start()  # the journal is past 4 KB: opening it commits, and compacts
        assert not list((mnt / "cp").rglob("*.tmp")), "a failed snapshot left its temp file"
        assert [p.name for p in segments(mnt / "cp" / "s")] == ["journal-00000000.log"]
        (mnt / "filler").unlink()
        cp.abandon()
        cp = EnhancedCheckpoint(mnt / "cp", "s", log_every=0)
        cp.start()
        pending = cp.live.pending
        assert all(code in pending for code in codes)
        assert pending.get(codes[-1]) == {"url": "https://example.com/"}
        cp.close()


def test_a_tracker_on_a_full_disk_stops_with_one_clear_error_and_resumes_losing_nothing(
    tmp_path: Path,
) -> None:
    n = 20000
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        cp_dir = mnt / "cp"

        def job(log: Path) -> subprocess.CompletedProcess[str]:
            return run(PYTHON, str(SCRIPTS / "tracker_job.py"), str(cp_dir), "s", str(n),
                       str(log), "8", "3", "flush")

        first = job(log1)
        assert first.returncode != 0, "the job went on with a full disk"
        assert "Traceback" not in first.stderr, first.stderr  # one paragraph, said once
        errors = [line for line in first.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, first.stderr
        assert errors[0].startswith("Error: Cannot write the checkpoint of stage 's'"), errors
        assert "No space left on device" in errors[0]
        assert "free disk space" in errors[0]
        committed = done_units(cp_dir, "s")
        assert 0 < len(committed) < n
        remount(mnt, "20m")
        second = job(log2)
        assert second.returncode == 0, second.stderr[-3000:]
        redone = [int(x) for x in log2.read_text().split() if key_code(int(x)) in committed]
        assert redone == [], f"{len(redone)} committed units were done again (lost)"
        view = read_stage(FileStore(cp_dir), "s")
        assert len(done_units(cp_dir, "s")) == n
        assert view.state.status is Status.COMPLETED
        assert not list(cp_dir.rglob("*.tmp"))


def test_a_stage_started_on_a_full_disk_is_one_clear_error_then_starts_once_there_is_space(
    tmp_path: Path,
) -> None:
    """Starting a stage writes its lock's owner and its first segment's header: on a full
    disk that was an OSError traceback through the store, not the one paragraph a full disk
    gets later in the run."""
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        fill(mnt / "filler")
        done = run(PYTHON, str(SCRIPTS / "tracker_job.py"), str(mnt / "cp"), "s", "50",
                   str(tmp_path / "run.log"), "4", "3", "flush")
        assert done.returncode == 1, done.stdout
        assert "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: Cannot write the checkpoint of stage 's'"), done.stderr
        assert "No space left on device" in last
        (mnt / "filler").unlink()
        done = run(PYTHON, str(SCRIPTS / "tracker_job.py"), str(mnt / "cp"), "s", "50",
                   str(tmp_path / "run.log"), "4", "3", "flush")
        assert done.stdout.strip().endswith("DONE"), done.stderr
        assert read_stage(FileStore(mnt / "cp"), "s").state.status is Status.COMPLETED


def test_a_crawl_whose_checkpoint_disk_fills_stops_with_checkpoint_error_and_resumes(
    tmp_path: Path,
) -> None:
    n_pages = 1500
    site = Site(n_pages)
    outputs = Outputs(tmp_path)
    try:
        with tmpfs(tmp_path / "checkpoints", "128k") as mnt:
            first = crawl(site, outputs)
            log = first.log
            assert "'finish_reason': 'checkpoint_error'" in log, log[-3000:]
            stops = [line for line in log.splitlines() if "the crawl stops." in line]
            assert len(stops) == 1, log[-3000:]  # once, and the advice once
            assert stops[0].count("run the same command again to resume") == 1, stops
            assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:5000]
            assert "No space left on device" in log
            view = read_stage(FileStore(mnt), "site")
            fingerprint = RequestFingerprinter().fingerprint
            committed = {p for p in range(n_pages)
                         if view.is_done(fingerprint(Request(f"{site.url}/p/{p}")))}
            assert 0 < len(committed) < n_pages
            remount(mnt, "50m")
            second = crawl(site, outputs)
            assert "'finish_reason': 'finished'" in second.log, second.log[-3000:]
            assert "Traceback" not in second.log
            fetched_again = committed & set(second.hits)
            assert not fetched_again, f"{len(fetched_again)} committed pages were lost"
            for name in ("items.jl", "own.jl"):
                pages = outputs.jsonlines(name)
                assert sorted(pages) == list(range(n_pages)), f"{name}: lost or duplicated items"
            assert read_stage(FileStore(mnt), "site").state.status is Status.COMPLETED
    finally:
        site.close()


def test_a_crawl_whose_feed_disk_fills_stops_naming_the_feed_and_resumes(tmp_path: Path) -> None:
    # The outputs are on the full disk, the checkpoint is not: the error must name the file
    # that could not be written (not the checkpoint), be said once with no traceback (Scrapy
    # flushes and closes the feeds again at close), and lose nothing.
    n_pages = 1500
    site = Site(n_pages)

    def crawl_to(outputs: Outputs) -> CrawlRun:  # the log beside, not on the full disk
        cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}", *outputs.args,
               "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
        return run_crawl(site, cmd, tmp_path, cwd=PROJECT)

    try:
        with tmpfs(tmp_path / "out", "128k") as mnt:
            outputs = Outputs(mnt)
            first = crawl_to(outputs)
            log = first.log
            assert "'finish_reason': 'checkpoint_error'" in log, log[-3000:]
            stops = [line for line in log.splitlines() if "the crawl stops." in line]
            assert len(stops) == 1, log[-3000:]
            assert f"Cannot write '{mnt}" in stops[0], stops
            assert "No space left on device" in stops[0]
            assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:5000]
            remount(mnt, "50m")
            second = crawl_to(outputs)
            assert "'finish_reason': 'finished'" in second.log, second.log[-3000:]
            assert "Traceback" not in second.log
            for name in ("items.jl", "own.jl"):
                pages = outputs.jsonlines(name)
                assert sorted(pages) == list(range(n_pages)), f"{name}: lost or duplicated items"
            assert sorted(outputs.csv_pages()) == list(range(n_pages))
            state = read_stage(FileStore(tmp_path / "checkpoints"), "site").state
            assert state.status is Status.COMPLETED
    finally:
        site.close()


def test_a_requeue_recorded_before_the_disk_filled_is_said_done_not_failed(tmp_path: Path) -> None:
    """requeue on a full disk: its group fit in the journal's last page, the snapshot and
    state file after it did not; the CLI said 'Error: Cannot write ... run the same command
    again' (exit 1) although the units were requeued, and the same command then said there
    was nothing to requeue."""
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        cp = EnhancedCheckpoint(mnt / "cp", "s", log_every=0)
        cp.start(total_items=100)
        for i in range(50):
            cp.update(processed=1, failed=1, index=i)
        cp.close()
        fill(mnt / "filler")
        done = cli(mnt / "cp", "requeue", "s", "--failed")
        assert done.returncode == 0, done.stderr
        assert "Requeued 50 failed unit(s) of s" in done.stdout
        assert "the requeue is recorded in its journal" in done.stderr
        assert "No space left on device" in done.stderr
        (mnt / "filler").unlink()
        cp = EnhancedCheckpoint(mnt / "cp", "s", log_every=0)
        cp.start()
        assert cp.live.failed == 0
        assert cp.live.processed == 0
        assert not any(cp.should_skip(i) for i in range(50))
        cp.pause()
        cp.close()


# -- 2. the directory deleted or replaced ------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_checkpoint_directory_deleted_or_replaced_stops_the_job_and_is_not_recreated(
    tmp_path: Path, how: str,
) -> None:
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", save_every=1, log_every=0)
    cp.start(total_items=100)
    for i in range(50):
        cp.update(processed=1, successful=1, index=i)
    cp.drain_io()  # a write already under way may still land in the new directory
    if how == "deleted":
        subprocess.run(["rm", "-rf", str(directory)], check=True)
    else:
        directory.rename(tmp_path / "moved")
        directory.mkdir()
    with pytest.raises(CheckpointWriteError, match="deleted or replaced"):
        cp.update(processed=1, successful=1, index=50)
    with pytest.raises(CheckpointWriteError):
        cp.update(processed=1, successful=1, index=51)
    cp.abandon()
    if how == "deleted":
        assert not directory.exists(), "a partial checkpoint directory was recreated"
    else:
        assert list(directory.iterdir()) == [], "the job wrote into the directory put in its place"
        assert len(done_units(tmp_path / "moved", "s")) == 50, "committed units lost"


def test_a_relative_checkpoint_directory_survives_a_change_of_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer checks its segment and directory by path at each commit: with a relative
    CHECKPOINT_DIR, a program that changed its working directory mid-run was stopped with
    'The checkpoint directory of stage 's' (cp/s) was deleted or replaced while the job
    ran', nothing deleted at all."""
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    cp = EnhancedCheckpoint("cp", "s", save_every=1, log_every=0, compact_min_bytes=4096)
    cp.start(total_items=3000)
    for i in range(10):
        cp.update(processed=1, successful=1, index=i)
    os.chdir(tmp_path / "elsewhere")
    for i in range(10, 3000):  # past compact_min_bytes: a snapshot and a new segment too
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert len(done_units(tmp_path / "run" / "cp", "s")) == 3000


def test_a_tracker_job_whose_directory_is_deleted_stops_with_a_clear_error(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cp"
    proc = subprocess.Popen([PYTHON, str(SCRIPTS / "tracker_job.py"), str(directory), "s",
                             "30000", str(tmp_path / "run.log"), "8", "4", "flush"],
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    for _ in range(300):  # the job has committed work
        assert proc.stdout.readline()
    subprocess.run(["rm", "-rf", str(directory)], check=True)
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode != 0, "the job went on without its checkpoint"
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("Error: "), err
    assert "deleted or replaced" in err.strip().splitlines()[-1]
    assert not directory.exists(), "a partial checkpoint directory was recreated"


_MAP_JOB = """
import asyncio, shutil, sys
from scrapy_checkpoint import AsyncCheckpointTracker
directory, n, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ran = []
async def work(i):
    await asyncio.sleep(0)
    if i == at:
        shutil.rmtree(directory)  # another process deletes the checkpoint
    ran.append(i)
async def main():
    async with AsyncCheckpointTracker(directory, "m", progress_bar=False, log_every=0,
                                      save_every=1) as tracker:
        try:
            await tracker.map(work, range(n), concurrency=8)
        finally:
            print("RAN", len(ran), flush=True)
asyncio.run(main())
"""


def test_tracker_map_stops_starting_items_once_nothing_can_be_recorded(tmp_path: Path) -> None:
    """map() went on running every item left (their work done, none recorded) after the
    checkpoint's directory was deleted or its disk filled, and each task's failure was
    logged as 'Task exception was never retrieved' with its traceback."""
    directory, n, at = tmp_path / "cp", 3000, 300
    done = run(PYTHON, "-c", _MAP_JOB, str(directory), str(n), str(at))
    assert done.returncode == 1, done.stdout
    assert "never retrieved" not in done.stderr, done.stderr[:3000]
    assert "Traceback" not in done.stderr, done.stderr[:3000]
    assert done.stderr.strip().splitlines()[-1].startswith("Error: "), done.stderr[-3000:]
    assert "deleted or replaced" in done.stderr
    ran = int(done.stdout.split("RAN ")[1])
    assert ran <= at + 1 + 2 * 8, f"{ran} items run, at most {at + 1} could be recorded"
    assert not directory.exists()


def test_a_crawl_whose_checkpoint_directory_is_deleted_stops_and_does_not_recreate_it(
    tmp_path: Path,
) -> None:
    site = Site(600, delay=0.004)
    outputs = Outputs(tmp_path)
    directory = tmp_path / "checkpoints"
    try:
        first = crawl(site, outputs, interrupt=lambda _proc: shutil.rmtree(directory),
                      interrupt_after_hits=60)
    finally:
        site.close()
    assert "'finish_reason': 'checkpoint_error'" in first.log, first.log[-3000:]
    # The stop is an error: scrapy crawl exits with status 1, as for a crawl that cannot start.
    assert first.returncode == 1, first.log[-3000:]
    assert first.log.count("deleted or replaced while the job ran") == 1, first.log[-5000:]
    stop = next(line for line in first.log.splitlines() if "the crawl stops." in line)
    assert "run the same command again to resume" not in stop  # it cannot resume: says so
    assert "the next run starts the stage over" in stop
    assert f"Its outputs ({tmp_path / 'items.csv'}, {tmp_path / 'items.jl'}" in stop
    assert "move them aside before the next run" in stop
    assert "Traceback" not in first.log
    assert not directory.exists(), "a partial checkpoint directory was recreated"


def _tracker_job(directory: Path, tmp_path: Path, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, str(SCRIPTS / "tracker_job.py"), str(directory), "s",
                             str(n), str(tmp_path / "run.log"), "4", "3", "flush"],
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_journal_deleted_between_runs_under_a_kept_state_file_is_refused_not_redone(
    tmp_path: Path,
) -> None:
    """The state file says 'units were done', the journal that says which is gone: a resume
    would redo them and count them again ('Completed 100% (29/20)'). It is refused with one
    paragraph, nothing changed, until the stage is reset."""
    directory, n = tmp_path / "cp", 3000
    proc = _tracker_job(directory, tmp_path, n)
    assert proc.stdout is not None
    for _ in range(500):  # committed, and the state file written since (at start, at least)
        assert proc.stdout.readline()
    proc.kill()
    proc.communicate(timeout=600)
    shutil.rmtree(directory / "s")
    state = (directory / "s.json").read_bytes()
    recorded = read_stage(FileStore(directory), "s").state.progress.processed_items

    again = _tracker_job(directory, tmp_path, n)
    out, err = again.communicate(timeout=1200)
    assert again.returncode != 0, out[-500:]
    assert "DONE" not in out
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("CheckpointError: The journal and snapshots of stage 's'"), err
    assert "reset s" in last
    assert (directory / "s.json").read_bytes() == state, "the state file was changed"
    assert not (directory / "s").exists(), "the stage's directory was recreated"
    shown = cli(directory, "show", "s")
    assert shown.returncode == 3, shown.stdout + shown.stderr
    assert "are missing" in shown.stdout

    assert cli(directory, "reset", "s").returncode == 0
    out, err = _tracker_job(directory, tmp_path, n).communicate(timeout=1200)
    assert out.strip().endswith("DONE"), err[-2000:]
    view = read_stage(FileStore(directory), "s")
    assert view.state.status is Status.COMPLETED
    assert view.state.progress.processed_items == n, (recorded, view.state.progress)


def test_a_feed_deleted_mid_crawl_stops_it_and_the_next_run_refuses_to_end_without_its_items(
    tmp_path: Path,
) -> None:
    """A feed file deleted (or moved) under a running crawl: Scrapy wrote on into the
    unlinked file and the crawl ended 'Completed 100%' with no feed at all; a resume over a
    feed shorter than committed wrote on from its end and ended 'Completed' with the items
    of the earlier finished requests missing."""
    n_pages = 600
    site = Site(n_pages, delay=0.004)
    outputs = Outputs(tmp_path)
    feed = tmp_path / "items.jl"
    try:
        first = crawl(site, outputs, interrupt=lambda _proc: feed.unlink(),
                      interrupt_after_hits=60)
        assert "'finish_reason': 'checkpoint_error'" in first.log, first.log[-3000:]
        stops = [line for line in first.log.splitlines() if "the crawl stops." in line]
        assert len(stops) == 1, first.log[-3000:]
        assert f"Output {feed} was deleted or moved while the crawl wrote it" in stops[0]
        assert "Completed" not in first.log
        assert "Traceback" not in first.log, first.log[-5000:]
        assert not feed.exists(), "the deleted feed was recreated"
        assert read_stage(FileStore(tmp_path / "checkpoints"), "site").state.status \
            is not Status.COMPLETED

        second = crawl(site, outputs)
        refusal = _refused_at_start(second)
        assert f"Output {feed} of stage 'site' is missing, but" in refusal
        assert "CHECKPOINT_RESET=True" in refusal
        assert "Completed" not in second.log
        assert not feed.exists()

        third = crawl(site, outputs, "-s", "CHECKPOINT_RESET=True")
        assert "'finish_reason': 'finished'" in third.log, third.log[-3000:]
        assert sorted(outputs.jsonlines("items.jl")) == list(range(n_pages))
    finally:
        site.close()


# -- 4. reset killed at every step ---------------------------------------------------------------

_KILLED_RESET = """
import os, shutil, signal, sys
step, calls = int(sys.argv[2]), [0]
def killing(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper
for name in ("unlink", "remove", "rmdir", "rename", "replace"):
    setattr(os, name, killing(getattr(os, name)))
from scrapy_checkpoint import UnifiedCheckpointManager
UnifiedCheckpointManager(sys.argv[1]).reset("s")
print(calls[0])
"""


def test_reset_killed_at_any_step_leaves_the_stage_whole_or_reset(tmp_path: Path) -> None:
    template = tmp_path / "template"
    n = 3000
    cp = EnhancedCheckpoint(template, "s", save_every=25, log_every=0, compact_min_bytes=4096,
                            keep_snapshots=4)
    cp.start(total_items=n)
    for i in range(n):
        cp.update(processed=1, successful=1, index=i)
    cp.pause()
    cp.close()
    assert len(list((template / "s").glob("snapshot-*.bin"))) >= 3  # older states to fall to

    def killed_at(step: int) -> tuple[int, Path]:
        directory = tmp_path / f"k{step}"
        subprocess.run(["cp", "-a", str(template), str(directory)], check=True)
        return run(PYTHON, "-c", _KILLED_RESET, str(directory), str(step)).returncode, directory

    rc, _ = killed_at(0)  # not killed: how many steps a reset takes
    assert rc == 0
    outcomes = []
    step = 1
    while True:
        rc, directory = killed_at(step)
        if rc == 0:
            break
        assert rc == -signal.SIGKILL
        cp = EnhancedCheckpoint(directory, "s", log_every=0)
        cp.start()
        done, processed = len(cp.live.done), cp.live.processed
        cp.pause()
        cp.close()
        assert (done, processed) in ((n, n), (0, 0)), (
            f"killed at step {step}: {done} done, {processed} processed: an older state")
        outcomes.append(done)
        assert not [p.name for p in directory.iterdir() if ".removing-" in p.name], (
            "the next open left the half-removed data")
        step += 1
    assert step > 3
    assert 0 in outcomes, outcomes
    assert n in outcomes, outcomes


# -- 10. symbolic links --------------------------------------------------------------------------


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    directory.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("PRECIOUS\n")
    (directory / "s.lock").symlink_to(target)
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    with pytest.raises(CheckpointWriteError, match="symbolic link"):
        cp.start(total_items=1)
    assert target.read_text() == "PRECIOUS\n"


@pytest.mark.parametrize("node", ["directory", "fifo"])
def test_a_lock_file_replaced_by_a_directory_or_fifo_is_one_clear_error_everywhere(
        tmp_path: Path, node: str) -> None:
    """The writer's start, requeue, reset, reset all and cleanup refuse stage s with one
    paragraph naming its lock file, leave its files as they are, and go on with the other
    stages; they printed an IsADirectoryError or 'OSError: [Errno 22] Invalid argument'
    (ftruncate of a FIFO) traceback, and reset all and cleanup stopped at s."""
    directory = tmp_path / "cp"
    for stage in ("a", "s", "z"):
        cp = EnhancedCheckpoint(directory, stage, log_every=0)
        cp.start(total_items=2)
        cp.update(processed=1, successful=1, index=0)
        cp.complete()
        cp.close()
    lock = directory / "s.lock"
    lock.unlink()
    if node == "directory":
        lock.mkdir()
        (lock / "mine.txt").write_text("mine\n")
    else:
        os.mkfifo(lock)
    before = sorted((p.relative_to(directory), p.stat().st_size) for p in directory.rglob("*"))
    kind = "a directory" if node == "directory" else "a FIFO"
    with pytest.raises(CorruptCheckpointError, match=f"s.lock .*{kind}, not a regular file"):
        EnhancedCheckpoint(directory, "s", log_every=0).start()
    shown = cli(directory, "show", "s")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "1/2" in shown.stdout
    for args in (["requeue", "s", "--failed"], ["reset", "s", "--force"]):
        out = cli(directory, *args)
        assert "Traceback" not in out.stderr, out.stderr
        assert out.returncode != 0
        assert f"s.lock (owner uid {os.getuid()}" in out.stdout + out.stderr
    assert sorted((p.relative_to(directory), p.stat().st_size)
                  for p in directory.rglob("*")) == before
    out = cli(directory, "reset", "all", "--force")
    assert "Traceback" not in out.stderr, out.stderr
    assert "Reset a." in out.stdout
    assert "Reset z." in out.stdout
    assert "Stage 's' not reset" in out.stderr
    cp = EnhancedCheckpoint(directory, "z", log_every=0)
    cp.start(total_items=1)
    cp.complete()
    cp.close()
    out = cli(directory, "cleanup", "--days", "0")
    assert "Traceback" not in out.stderr, out.stderr
    assert "Removed z" in out.stdout
    assert (directory / "s").is_dir()
    assert (directory / "s.json").is_file()
    assert stat.S_ISDIR(lock.lstat().st_mode) == (node == "directory")


@pytest.mark.parametrize("name", ["s.json", "s.json.bak"])
def test_a_directory_in_place_of_the_state_file_or_its_backup_is_named(
        tmp_path: Path, name: str) -> None:
    """The error names the directory and says to move it away; it named 'Operation not
    permitted' (s.json) or a temp file '.s.json.bak.<hex>.tmp: Is a directory' (s.json.bak).
    Nothing recorded is lost: with the directory moved away, the stage resumes whole."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=10)
    for i in range(5):
        cp.update(processed=1, successful=1, index=i)
    cp.pause()
    cp.close()
    (directory / name).unlink()
    (directory / name).mkdir()
    cp = EnhancedCheckpoint(directory, "s", log_every=0)

    def run_on() -> None:
        cp.start()
        cp.update(processed=1, successful=1, index=5)
        cp.complete()
        cp.close()

    with pytest.raises(CheckpointWriteError,
                       match=rf"{name}\): a directory, not a regular file\..*move it away"):
        run_on()
    cp.abandon()  # the job stops there (the error says so)
    (directory / name).rename(tmp_path / "moved")
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start()
    assert len(cp.live.done) in (5, 6)  # the unit done before the stop may be recorded
    cp.pause()
    cp.close()
    assert not list(directory.glob(".*.tmp"))


def test_a_journal_segment_that_is_a_link_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cp"
    (directory / "s").mkdir(parents=True)
    target = tmp_path / "precious.log"
    target.write_text("PRECIOUS\n")
    (directory / "s" / "journal-00000000.log").symlink_to(target)
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    with pytest.raises(CheckpointWriteError, match="symbolic link"):
        cp.start(total_items=1)
    assert target.read_text() == "PRECIOUS\n"


@pytest.mark.parametrize("how", ["moved", "link", "file"])
def test_a_segment_moved_away_or_replaced_while_the_job_runs_stops_it(
    tmp_path: Path, how: str,
) -> None:
    """Before, the writer checked only that its segment was still linked somewhere: one
    renamed out of the directory (or with a link or another file put at its name) went on
    taking every commit unseen, so those commits were in no file of the checkpoint (a kill
    then lost them; a link planted there gave the next files its 0o777 mode)."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", save_every=1, log_every=0)
    cp.start(total_items=100)
    for i in range(50):
        cp.update(processed=1, successful=1, index=i)
    cp.drain_io()  # a write already under way may still land in the moved file
    (segment,) = segments(directory / "s")
    target = tmp_path / "precious.txt"
    target.write_text("PRECIOUS\n")
    segment.rename(tmp_path / "moved.log")
    if how == "link":
        segment.symlink_to(target)
    elif how == "file":
        segment.write_bytes(b"")
    with pytest.raises(CheckpointWriteError, match="is no longer in it"):
        cp.update(processed=1, successful=1, index=50)
    cp.abandon()
    assert target.read_text() == "PRECIOUS\n"
    segment.unlink(missing_ok=True)
    (tmp_path / "moved.log").rename(segment)  # put back, the stage resumes losing nothing
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start()
    assert len(cp.live.done) == 50
    cp.pause()
    cp.close()


def test_a_link_in_place_of_a_file_never_gives_its_mode_to_new_files(tmp_path: Path) -> None:
    """A new segment or snapshot takes the mode of the file before it; before, a link found
    there gave it the link's own bits, 0o777: checkpoint files writable by every user."""
    from scrapy_checkpoint.stores.files import mode_of

    target = tmp_path / "precious.txt"
    target.write_text("PRECIOUS\n")
    target.chmod(0o600)
    (tmp_path / "journal-00000001.log").symlink_to(target)
    assert mode_of(tmp_path / "journal-00000001.log") == 0o644
    os.mkfifo(tmp_path / "journal-00000002.log", 0o666)
    assert mode_of(tmp_path / "journal-00000002.log") == 0o644
    real = tmp_path / "journal-00000003.log"
    real.write_bytes(b"")
    real.chmod(0o640)
    assert mode_of(real) == 0o640


def test_planted_temp_file_links_are_never_written_through(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    directory.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("PRECIOUS\n")
    # The names a writer that names its temp files after its pid would use.
    for name in (f".s.json.{os.getpid()}.tmp", f".s.json.bak.{os.getpid()}.tmp"):
        (directory / name).symlink_to(target)
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=2)
    cp.update(processed=1, successful=1, index=0)
    cp.complete()
    cp.close()
    assert target.read_text() == "PRECIOUS\n"
    assert not list(directory.glob(".*.tmp")), "planted links not cleaned at open"
    assert read_stage(FileStore(directory), "s").state.progress.processed_items == 1


def test_an_export_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    make_stage_for_export(directory)
    target = tmp_path / "precious.txt"
    target.write_text("PRECIOUS\n")
    (tmp_path / "export.json").symlink_to(target)
    (tmp_path / "dangling.json").symlink_to(tmp_path / "created-elsewhere.json")
    for name in ("export.json", "dangling.json"):
        done = cli(directory, "export", "-o", str(tmp_path / name))
        assert done.returncode == 1, done.stdout
        assert done.stderr.count("\n") == 1, done.stderr
        assert "is a symbolic link" in done.stderr
        assert "Nothing was written" in done.stderr
        with pytest.raises(CheckpointWriteError, match="symbolic link"):
            UnifiedCheckpointManager(directory).export(tmp_path / name)
    assert target.read_text() == "PRECIOUS\n"
    assert not (tmp_path / "created-elsewhere.json").exists()


def test_an_export_never_replaces_a_file_of_the_checkpoint(tmp_path: Path) -> None:
    """export -o naming a stage's journal segment, state file, backup or lock file (a slip
    of the path, or through a link to its data directory) replaced it with the export:
    the segment's committed units were lost ('segment header missing or damaged'). Now
    refused, nothing written; a file of the user's own beside the stages is written."""
    directory = tmp_path / "cp"
    make_stage_for_export(directory)
    segment = sorted((directory / "s").glob("journal-*.log"))[-1]
    (tmp_path / "data").symlink_to(directory / "s")
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    for target in (segment, directory / "s.json", directory / "s.json.bak",
                   directory / "s.lock", directory / "s" / "new.json",
                   tmp_path / "data" / segment.name):
        done = cli(directory, "export", "-o", str(target))
        assert done.returncode == 1, (target, done.stdout)
        assert "is a file of the checkpoint" in done.stderr
        assert "Nothing was written" in done.stderr
        with pytest.raises(CheckpointWriteError, match="is a file of the checkpoint"):
            UnifiedCheckpointManager(directory).export(target)
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    (directory / "exports").mkdir()
    for target in (directory / "export.json", directory / "exports" / "e.json"):
        done = cli(directory, "export", "-o", str(target))
        assert done.returncode == 0, done.stderr
        assert json.loads(target.read_text())["stages"][0]["stage"] == "s"
    shown = cli(directory, "show", "s")
    assert shown.returncode == 0, shown.stdout


def test_an_export_on_a_full_disk_keeps_the_previous_export_whole(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    make_stage_for_export(directory)
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        out = mnt / "export.json"
        assert cli(directory, "export", "-o", str(out)).returncode == 0
        before = out.read_bytes()
        for i in range(8):  # a longer export next time
            make_stage_for_export(directory, f"more{i}")
        fill(mnt / "filler")
        done = cli(directory, "export", "-o", str(out))
        assert done.returncode == 1
        assert "No space left on device" in done.stderr
        assert out.read_bytes() == before, "the previous export was cut"
        assert sorted(p.name for p in mnt.iterdir()) == ["export.json", "filler"]


def make_stage_for_export(directory: Path, stage: str = "s") -> None:
    cp = EnhancedCheckpoint(directory, stage, log_every=0)
    cp.start(total_items=10)
    for i in range(5):
        cp.update(processed=1, successful=1, index=i)
    cp.close()


def test_a_feed_replaced_by_a_link_is_never_cut_through_it(tmp_path: Path) -> None:
    """A resume cuts a feed back to its committed length; a link planted at the feed's path
    made it truncate the file the link points to, outside the crawl's outputs."""
    site = Site(300, delay=0.004)
    outputs = Outputs(tmp_path)
    feed = tmp_path / "items.jl"
    try:
        crawl(site, outputs, interrupt=sigkill, interrupt_after_hits=60)
        victim = tmp_path / "elsewhere" / "precious.log"
        victim.parent.mkdir()
        victim.write_bytes(feed.read_bytes() + b"PRECIOUS\n" * 1000)
        before = victim.read_bytes()
        feed.unlink()
        feed.symlink_to(victim)
        again = crawl(site, outputs)
        assert f"Output {feed} is a symbolic link" in _refused_at_start(again)
        assert victim.read_bytes() == before, "the file the link points to was cut"
    finally:
        site.close()


def test_reset_through_a_linked_data_directory_refuses_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=10)
    for i in range(10):
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    (directory / "s").rename(tmp_path / "elsewhere")
    (directory / "s").symlink_to(tmp_path / "elsewhere")
    before = sorted(p.name for p in (tmp_path / "elsewhere").iterdir())
    done = cli(directory, "reset", "s", "--force")
    assert done.returncode != 0
    assert "symbolic link" in done.stderr
    assert "not reset" in done.stderr
    assert "Reset s." not in done.stdout
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == before
    assert (directory / "s.json").exists(), "the state file was deleted"


# -- 12. reset all and cleanup delete only stages ---------------------------------------------


def test_reset_all_and_cleanup_leave_a_user_folder_with_a_segment_like_file(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start()
    cp.complete()
    cp.close()
    backups = directory / "backups"
    backups.mkdir()
    (backups / "journal-00000001.log").write_text("my own log\n")
    (backups / "important.csv").write_text("a,b\n")
    # A copy of the stage's own first segment names stage 's', not 'backups'.
    (backups / "journal-00000000.log").write_bytes(
        (directory / "s" / "journal-00000000.log").read_bytes())
    assert UnifiedCheckpointManager(directory).stages() == ["s"]
    listed = cli(directory, "list")
    assert "backups" not in listed.stdout
    done = cli(directory, "reset", "all", "--force")
    assert done.returncode == 0, done.stderr
    assert "backups" not in done.stdout
    cleaned = cli(directory, "cleanup", "--days", "0")
    assert "backups" not in cleaned.stdout
    assert sorted(p.name for p in backups.iterdir()) == [
        "important.csv", "journal-00000000.log", "journal-00000001.log"]


def test_cleanup_refuses_a_negative_age(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start()
    cp.complete()
    cp.close()
    done = cli(directory, "cleanup", "--days", "-1")
    assert done.returncode == 2
    assert "--days" in done.stderr
    assert UnifiedCheckpointManager(directory).stages() == ["s"]
    with pytest.raises(ValueError, match="0 or more"):
        UnifiedCheckpointManager(directory).cleanup(older_than_days=-1)


@pytest.mark.parametrize("days", ["inf", "1e400", "1e9", "3000000"])
def test_cleanup_with_an_age_beyond_any_date_removes_nothing(tmp_path: Path, days: str) -> None:
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start()
    cp.complete()
    cp.close()
    done = cli(directory, "cleanup", "--days", days)
    assert "Traceback" not in done.stderr, done.stderr
    assert "Nothing to clean up" in done.stdout + done.stderr
    assert UnifiedCheckpointManager(directory).stages() == ["s"]


def test_a_stage_directory_made_read_only_fails_at_close_with_one_clear_error(
        tmp_path: Path) -> None:
    # Its segment stays writable, so the job runs; the snapshot at close cannot be created.
    # The close must raise that CheckpointWriteError alone, not a ValueError of a queued
    # fsync of the segment closed meanwhile, and lose nothing.
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run without root's file access")
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0, save_every=1)
    cp.start(total_items=200)
    for i in range(100):
        cp.update(processed=1, successful=1, index=i)
    cp.close()
    (directory / "s").chmod(0o555)
    code = ("import sys\n"
            "from scrapy_checkpoint import EnhancedCheckpoint, CheckpointWriteError\n"
            f"cp = EnhancedCheckpoint({str(directory)!r}, 's', log_every=0, save_every=1)\n"
            "cp.start(total_items=200)\n"
            "for i in range(100, 200):\n"
            "    cp.update(processed=1, successful=1, index=i)\n"
            "cp.complete()\n"
            "try:\n    cp.close()\n"
            "except CheckpointWriteError as exc:\n    print('STOPPED', exc)\n")
    prefix: list[str] = []
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = [str(shutil.which("setpriv")), f"--bounding-set={caps}", f"--inh-caps={caps}",
                  "--"]
    done = run(*prefix, PYTHON, "-c", code)
    (directory / "s").chmod(0o755)
    assert "Traceback" not in done.stderr, done.stderr
    assert "STOPPED Cannot write" in done.stdout, done.stdout
    view = read_stage(FileStore(directory), "s")
    assert view.state.done_units == 200
    assert view.state.status is Status.COMPLETED


# -- 15. modes and temp files ---------------------------------------------------------------------


def test_files_keep_the_mode_the_user_gave_them(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0, compact_min_bytes=4096)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    cp.pause()
    cp.close()
    for path in [directory / "s.json", *directory.joinpath("s").iterdir()]:
        path.chmod(0o600)
    cp = EnhancedCheckpoint(directory, "s", log_every=0, compact_min_bytes=4096, save_every=1)
    cp.start()
    for i in range(1, 400):  # past compact_min_bytes: a new segment and a snapshot
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    files = [directory / "s.json", directory / "s.json.bak", *directory.joinpath("s").iterdir()]
    assert len(list(directory.joinpath("s").glob("snapshot-*"))) >= 2
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o600"}, modes


_KILLED_AT_RENAME = """
import os, signal, sys
from scrapy_checkpoint import EnhancedCheckpoint
cp = EnhancedCheckpoint(sys.argv[1], "s", log_every=0)
cp.start(total_items=3)
cp.update(processed=1, successful=1, index=0)
cp.save()  # the unit journaled
cp.drain_io()  # and the state writes queued so far done, before the kill is armed
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("s.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
cp.save(force=True)  # its state write is killed at the rename
"""


def test_a_temp_file_left_by_a_crash_is_removed_by_the_next_open(tmp_path: Path) -> None:
    directory = tmp_path / "cp"
    done = run(PYTHON, "-c", _KILLED_AT_RENAME, str(directory))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert list(directory.glob(".s.json.*.tmp")), "the crash left no temp file to clean"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.open()  # writes nothing yet (a start queues a state write, with its own temp file)
    assert not list(directory.rglob("*.tmp")), "the next open left the temp file"
    cp.start()
    assert len(cp.live.done) == 1
    cp.complete()
    cp.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def _refused_at_start(run: CrawlRun) -> str:
    """The one "The crawl cannot start." line of a crawl that fetched nothing and failed,
    without a traceback."""
    assert run.returncode != 0
    assert not run.hits, "pages were fetched"
    starts = [line for line in run.log.splitlines() if "The crawl cannot start." in line]
    assert len(starts) == 1, run.log[-3000:]
    assert "Traceback" not in run.log, run.log[-5000:]
    return starts[0]


TRACKER_OUTPUT_JOB = """
import asyncio, json, sys
from scrapy_checkpoint import AsyncCheckpointTracker

async def work(k):
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps({"k": k, "pad": "x" * 200}) + "\\n")

async def main():
    async with AsyncCheckpointTracker(sys.argv[1], "enrich", log_every=0,
                                      progress_bar=False) as tracker:
        result = await tracker.map(work, range(600), key=lambda k: k, concurrency=8)
    print("RESULT", result.succeeded, result.failed, result.skipped)

asyncio.run(main())
"""


def test_a_tracker_whose_own_output_fills_the_disk_pauses_and_redoes_those_items(
    tmp_path: Path,
) -> None:
    """The worker's own output on a disk that fills (the checkpoint elsewhere). Before:
    every item from then on was recorded failed with "OSError: [Errno 28] No space left on
    device", the run ended "Completed with N failed unit(s)", and once space was freed the
    same command did nothing: those items were never written (a manual requeue was needed).
    Now the first such item stops the map without being recorded, the stage is paused with
    one paragraph, and the run after freeing space does the rest."""
    script = tmp_path / "job.py"
    script.write_text(TRACKER_OUTPUT_JOB)
    checkpoint = tmp_path / "cp"
    with tmpfs(tmp_path / "small", "64k") as small:
        output = small / "out.jl"
        cmd = [PYTHON, str(script), str(checkpoint), str(output)]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                               env=python_env())
        assert first.returncode == 1, first.stderr
        assert "Traceback" not in first.stderr, first.stderr
        last = first.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: Item "), first.stderr
        assert "a disk is full" in last, first.stderr
        assert "free disk space" in last.lower(), last
        state = json.loads((checkpoint / "enrich.json").read_text())
        assert state["status"] == "paused"
        assert state["progress"]["failed_items"] == 0
        done_first = state["progress"]["processed_items"]
        assert 0 < done_first < 600
        remount(small, "10m")
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                                env=python_env())
        assert second.returncode == 0, second.stderr
        assert f"RESULT {600 - done_first} 0 {done_first}" in second.stdout, second.stdout
        state = json.loads((checkpoint / "enrich.json").read_text())
        assert state["status"] == "completed"
        assert state["progress"]["failed_items"] == 0
        assert state["progress"]["successful_items"] == 600
