"""Bad input given to the tracker itself (a stage name, an option): the program ends with the
error's one paragraph, as for a stage that is locked or damaged, never a traceback, and
nothing is written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import EnhancedCheckpoint, FileStore, read_stage

from .conftest import PYTHON, python_env

PROGRAM = """
import asyncio, sys
from scrapy_checkpoint import AsyncCheckpointTracker
async def main():
    async with AsyncCheckpointTracker(sys.argv[1], sys.argv[2], progress_bar=False,
                                      durability=sys.argv[3]) as t:
        t.start(total_items=3)
        for i in range(3):
            t.update(processed=1, index=i)
asyncio.run(main())
"""


@pytest.mark.parametrize(("stage", "durability", "said"), [
    ("a/b", "flush", "ConfigError: Invalid stage name 'a/b'"),
    ("a\nb", "flush", "ConfigError: Invalid stage name 'a\\nb'"),
    ("..", "flush", "ConfigError: Invalid stage name '..'"),
    ("é" * 200, "flush", "ConfigError: Invalid stage name"),
    ("s", "always", "ConfigError: Invalid checkpoint option durability='always'"),
])
def test_a_bad_stage_name_or_option_given_to_a_tracker_is_one_paragraph(
    tmp_path: Path, stage: str, durability: str, said: str,
) -> None:
    """The tracker's constructor raised these through the program as a traceback (the one
    paragraph was only for errors met entering the block)."""
    directory = tmp_path / "cp"
    done = subprocess.run([PYTHON, "-c", PROGRAM, str(directory), stage, durability],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=python_env())
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(said), done.stderr
    assert not directory.exists()  # nothing written


def test_the_journal_after_the_newest_snapshot_deleted_is_reported_and_its_units_redone(
    tmp_path: Path,
) -> None:
    """With the segment after the newest snapshot deleted between runs, show reported no
    damage at all and a resume started silently from the snapshot: what was committed after
    it had vanished from the record without a word."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0, save_every=1, compact_min_bytes=4096)
    cp.start(total_items=3000)
    for i in range(3000):
        cp.update(processed=1, successful=1, index=i)
    cp.abandon()  # as if killed: the newest segment holds groups after the newest snapshot
    data = directory / "s"
    newest = max(data.glob("snapshot-*.bin"))
    segment = data / newest.name.replace("snapshot-", "journal-").replace(".bin", ".log")
    assert segment.stat().st_size > 0
    segment.unlink()
    view = read_stage(FileStore(directory), "s")
    recorded = view.state.done_units
    assert 0 < recorded < 3000
    assert any(f"{segment.name}, the journal after the newest snapshot" in p
               for p in view.problems), view.problems
    shown = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory),
                            "show", "s"], capture_output=True, text=True, timeout=300,
                           check=False, env=python_env())
    assert f"Damage             {segment.name}, the journal after" in shown.stdout, shown.stdout
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start()
    redo = [i for i in range(3000) if not cp.should_skip(i)]
    assert len(redo) == 3000 - recorded  # run again, not counted done
    for i in redo:
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    done = read_stage(FileStore(directory), "s").state
    assert done.progress.processed_items == 3000


def test_watch_of_a_damaged_stage_says_what_is_damaged(tmp_path: Path) -> None:
    """watch printed a damaged stage's progress line alone (show lists its damage), so a
    user following it was never told."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=10)
    for i in range(4):
        cp.update(processed=1, successful=1, index=i)
    cp.pause()
    cp.close()
    (directory / "s.json").write_text("{bad")
    (directory / "s.json.bak").unlink()
    watched = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory),
                              "watch", "s"], capture_output=True, text=True, timeout=300,
                             check=False, env={**python_env(), "COLUMNS": "300"})
    assert watched.returncode == 0, watched.stderr
    assert "s [paused] Progress: 40.0% (4/10)" in watched.stdout, watched.stdout
    assert "warning: s.json is damaged" in watched.stdout, watched.stdout


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_reset_never_deletes_a_users_file_or_folder_where_the_stage_data_should_be(
    tmp_path: Path, kind: str,
) -> None:
    """``reset s`` renamed whatever was at DIR/s away and deleted it: a user's file there, or
    a folder of the user's own files (photo.jpg beside the stage's segments). It refuses
    now, deleting nothing, and says what to move."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=5)
    for i in range(5):
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    data = directory / "s"
    if kind == "file":
        shutil.rmtree(data)
        data.write_text("my own notes")
        mine = data
    else:
        mine = data / "photo.jpg"
        mine.write_text("my own photo")
    cli = [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory)]
    for args in (["reset", "s", "--force"], ["reset", "all", "--force"], ["cleanup", "--days", "0"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300,
                              check=False, env=python_env())
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        what = "is a file, not the stage's data directory" if kind == "file" else (
            "holds files that are not the checkpoint's (photo.jpg)")
        assert f"{data} {what}: stage 's' is not reset, and nothing was deleted" in done.stderr
        assert mine.read_text().startswith("my own"), args
    assert (directory / "s.json").exists()  # nothing of the stage deleted either
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".")) == []


def test_an_input_file_that_is_a_pipe_is_refused_without_reading_it(tmp_path: Path) -> None:
    """start(input_file=...) hashed the file by reading it to the end: given a pipe
    (``<(zcat rows.gz)``, /dev/stdin) it consumed everything the program was about to
    read, and the stage ended 'Completed' with nothing done; given a FIFO with no writer
    yet it hung. Both are refused at once now, the pipe's content left to the program."""
    from scrapy_checkpoint.checkpoint import InputUnreadableError

    read_end, write_end = os.pipe()
    os.write(write_end, b"row 1\nrow 2\nrow 3\n")
    os.close(write_end)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        for path in (f"/dev/fd/{read_end}", str(fifo)):
            cp = EnhancedCheckpoint(tmp_path / "cp", "s", log_every=0)
            with pytest.raises(InputUnreadableError, match="it is not a regular file") as exc:
                cp.start(input_file=path)
            assert "write it to a regular file first" in str(exc.value)
            cp.close()
        assert os.read(read_end, 100) == b"row 1\nrow 2\nrow 3\n"  # not consumed
    finally:
        os.close(read_end)


def test_watch_and_cleanup_refuse_an_interval_or_age_that_is_not_a_number(tmp_path: Path) -> None:
    """watch --interval inf (or 1e308, nan) of a running stage ended with an OverflowError or
    ValueError traceback from time.sleep after its first frame; cleanup --days nan was
    refused in the API's words (older_than_days). Both are usage errors now (exit 2)."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=10)  # running, its owner (this process) alive: watch follows it
    cp.update(processed=1, successful=1, index=0)
    cp.save(force=True)
    cli = [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory)]
    try:
        for args, said in ((["watch", "s", "--interval", "inf"], "inf is not in the range"),
                           (["watch", "s", "--interval", "1e308"], "is not in the range"),
                           (["watch", "s", "--interval", "nan"], "'nan' is not a finite number"),
                           (["cleanup", "--days", "nan"], "'nan' is not a number")):
            done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300,
                                  check=False, env=python_env())
            assert "Traceback" not in done.stderr, (args, done.stderr)
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert said in done.stderr, (args, done.stderr)
    finally:
        cp.pause()
        cp.close()


def test_map_says_when_items_share_a_key_instead_of_skipping_them_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A key function that gives two items the same key (here item // 2) made map skip the
    second item of each pair without running it, or run it and count nothing, and end
    'Completed' without a word: their work was never done."""
    import asyncio
    import logging

    from scrapy_checkpoint import AsyncCheckpointTracker

    ran: list[int] = []

    async def work(item: int) -> None:
        ran.append(item)

    async def main(stage: str = "m", share: bool = True) -> Any:
        async with AsyncCheckpointTracker(tmp_path / "cp", stage, progress_bar=False,
                                          log_every=0) as tracker:
            return await tracker.map(work, range(6), concurrency=1,
                                     key=(lambda item: item // 2) if share else str)

    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint"):
        result = asyncio.run(main())
    assert ran == [0, 1, 2, 3, 4, 5]  # each second item checked before its pair was done
    assert result.skipped == 0
    said = [r.getMessage() for r in caplog.records if "had the key of another item" in r.getMessage()]
    assert said == ["[m] 3 item(s) of this map had the key of another item of it, so their work "
                    "was not done or not counted (0 skipped without running, 3 ran and were not "
                    "counted): key(item) must give each item its own key."], caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint"):  # own keys: no warning,
        asyncio.run(main("u", share=False))
        again = asyncio.run(main("u", share=False))  # not on a resume that skips them all
    assert again.skipped == 6
    assert "had the key of another item" not in caplog.text
