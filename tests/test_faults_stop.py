"""What a job says and reports when it stops on a write fault (a real full disk: a small
tmpfs, root only): its figures are what the checkpoint records, never more."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from scrapy_checkpoint import CheckpointWriteError, EnhancedCheckpoint, FileStore, read_stage

from .conftest import PYTHON, SCRIPTS
from .crawl import Outputs, crawl
from .site import Site
from .test_faults_write import fill, run, tmpfs


def _stats(log: str) -> dict[str, object]:
    """The stats Scrapy dumped at the end of the crawl (its log's dict)."""
    match = re.search(r"Dumping Scrapy stats:\n(\{.*?\})\n", log, re.S)
    assert match, log[-3000:]
    text = re.sub(r"datetime\.datetime\([^)]*\)", "None", match.group(1))
    stats = ast.literal_eval(text)
    assert isinstance(stats, dict)
    return stats


def test_a_crawl_stopped_by_a_full_disk_reports_the_recorded_totals_in_its_stats(
    tmp_path: Path,
) -> None:
    """The ``checkpoint/stage/*`` and ``checkpoint/*`` stats were the last progress line's
    (e.g. 228 items) while ``show`` said the checkpoint holds 290: neither the run's own
    count nor the recorded one. They are the recorded figures now."""
    site = Site(1500)
    outputs = Outputs(tmp_path)
    try:
        with tmpfs(tmp_path / "checkpoints", "128k") as mnt:
            first = crawl(site, outputs, "-s", "CHECKPOINT_LOG_INTERVAL=1")
            assert "'finish_reason': 'checkpoint_error'" in first.log, first.log[-3000:]
            stats = _stats(first.log)
            view = read_stage(FileStore(mnt), "site")
            assert view.totals["item_scraped_count"] > 0
            for name, n in view.totals.items():
                assert stats.get(f"checkpoint/stage/{name}") == n, (name, n, stats)
            assert stats.get("checkpoint/items/scraped") == view.items["scraped"], stats
            assert stats.get("checkpoint/done_total") == view.state.done_units, stats
            assert stats.get("checkpoint/pending") == view.state.pending_units, stats
    finally:
        site.close()


def test_a_full_disk_with_durability_none_does_not_claim_every_commit_is_kept(
    tmp_path: Path,
) -> None:
    """With ``durability="none"`` the groups are buffered in the process: the full-disk
    error said "Everything committed before is kept", and the units of the buffered groups
    (here all of them: the buffer never fit) were not in the checkpoint."""
    with tmpfs(tmp_path / "mnt", "256k") as mnt:
        done = run(PYTHON, str(SCRIPTS / "tracker_job.py"), str(mnt / "cp"), "s", "40000",
                   str(tmp_path / "run.log"), "8", "3", "none")
        assert done.returncode == 1, done.stdout[-2000:]
        assert "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, done.stderr
        assert "No space left on device" in errors[0]
        assert "Everything committed before is kept" not in errors[0]
        assert "durability 'none'" in errors[0], errors[0]
        assert "are lost: their units run again" in errors[0], errors[0]
        reported = len(tmp_path.joinpath("run.log").read_text().split())
        recorded = read_stage(FileStore(mnt / "cp"), "s").state.done_units
        assert recorded < reported  # what the message now warns of


def test_a_deleted_checkpoint_directory_is_one_message_naming_the_stage(tmp_path: Path) -> None:
    """Two checks find the directory gone (its identity, its open segment unlinked) and each
    had its own wording; the segment's did not name the stage or its directory."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0, save_every=1, durability="flush")
    cp.start(total_items=100)
    cp.update(processed=1, successful=1, index=0)
    shutil.rmtree(directory)
    message = ""
    for i in range(1, 100):
        try:
            cp.update(processed=1, successful=1, index=i)
        except CheckpointWriteError as exc:
            message = str(exc)
            break
    assert message.startswith(f"The checkpoint directory of stage 's' ({directory / 's'}) was "
                              f"deleted or replaced while the job ran"), message
    assert "reset s." in message
    cp.abandon()
    assert not directory.exists()  # nothing recreated


def test_a_lock_file_deleted_while_the_job_runs_stops_it_before_a_second_owner_writes(
    tmp_path: Path,
) -> None:
    """With s.lock deleted under a running job, a second process made a new lock file,
    locked it and ran the same stage at the same time: both did the same units and wrote
    the same journal (the second then failed on 'File exists'). The first job now stops at
    its next write, keeping what it committed; the second runs the stage alone."""
    directory = tmp_path / "cp"
    first = EnhancedCheckpoint(directory, "s", log_every=0, save_every=1, durability="flush")
    first.start(total_items=100)
    for i in range(40):
        first.update(processed=1, successful=1, index=i)
    (directory / "s.lock").unlink()
    second = EnhancedCheckpoint(directory, "s", log_every=0, save_every=1, durability="flush")
    second.start()  # the lock it takes is on a new file: nothing refuses it
    message = ""
    for i in range(40, 100):
        try:
            first.update(processed=1, successful=1, index=i)
        except CheckpointWriteError as exc:
            message = str(exc)
            break
    assert message.startswith(f"The lock file {directory / 's.lock'} of stage 's' was deleted "
                              f"or replaced while the job ran"), message
    first.abandon()
    todo = [i for i in range(100) if not second.should_skip(i)]
    assert todo == list(range(40, 100))  # the first job's 40 committed units are kept
    for i in todo:
        second.update(processed=1, successful=1, index=i)
    second.complete()
    second.close()
    view = read_stage(FileStore(directory), "s")
    assert view.problems == []
    assert view.state.done_units == 100
    assert view.state.progress.processed_items == 100  # each unit counted once


def test_an_export_to_a_full_disk_says_what_to_do_and_keeps_the_earlier_export(
    tmp_path: Path,
) -> None:
    """export -o on a full disk printed 'Cannot write X: No space left on device.' alone:
    nothing on what was kept or what to do."""
    directory = tmp_path / "cp"
    for stage in ("a", "b", "c"):
        cp = EnhancedCheckpoint(directory, stage, log_every=0)
        cp.start(total_items=3)
        cp.update(processed=1, successful=1, index=0)
        cp.pause()
        cp.close()
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        target = mnt / "export.json"
        cli = [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory), "export", "-o",
               str(target)]
        assert run(*cli).returncode == 0
        earlier = target.read_bytes()
        fill(mnt / "filler")
        done = run(*cli)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip() == (
            f"Cannot write {target}: No space left on device. Nothing was written (an earlier "
            f"export there is kept); free disk space, or give a path this user may write, or "
            f"'-' for standard output.")
        assert target.read_bytes() == earlier
