"""A checkpoint owned by another user (real files, real modes): every command says the files
cannot be opened and what to do, never that the stage is damaged (which invites a reset
that deletes its recorded work), and changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from scrapy_checkpoint import EnhancedCheckpoint, FileStore, read_stage

from .conftest import PYTHON, SCRIPTS, python_env
from .test_faults_write import tmpfs


def _as_other_user(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as root without the capabilities that bypass file modes and owners."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to own files as another user")
    caps = "-dac_override,-dac_read_search,-fowner,-chown"
    return subprocess.run([setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *cmd],
                          capture_output=True, text=True, timeout=900, check=False,
                          stdin=subprocess.DEVNULL, env=python_env())


def test_a_stage_owned_by_another_user_is_refused_as_unwritable_not_as_damaged(
    tmp_path: Path,
) -> None:
    """requeue said "Stage 's' is damaged: Cannot read s.lock ..." and a tracker ended with
    "CorruptCheckpointError: Cannot read ...", for a stage whose files were merely another
    user's (read-only to this one)."""
    directory = tmp_path / "cp"
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.start(total_items=10)
    for i in range(8):
        cp.update(processed=1, successful=i % 4 != 0, failed=i % 4 == 0, index=i)
    cp.pause()
    cp.close()
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, 65534, 65534)
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    cli = [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory)]
    for args in (["requeue", "s", "--failed"], ["reset", "s", "--force"]):
        done = _as_other_user(*cli, *args)
        assert done.returncode != 0, (args, done.stdout)
        said = done.stdout + done.stderr
        assert "Traceback" not in said, said
        assert "damaged" not in said.replace("not damaged", ""), (args, said)
        assert "Cannot write" in said, (args, said)
        assert "Permission denied" in said, (args, said)
        assert "Run as the user who owns the checkpoint" in said, (args, said)
    job = _as_other_user(PYTHON, str(SCRIPTS / "tracker_job.py"), str(directory), "s", "10",
                         str(tmp_path / "run.log"), "2", "1", "flush")
    assert job.returncode == 1, job.stdout
    assert "Traceback" not in job.stderr, job.stderr
    assert "CorruptCheckpointError" not in job.stderr, job.stderr
    assert "Cannot write" in job.stderr, job.stderr
    shown = _as_other_user(*cli, "show", "s")
    assert shown.returncode == 0, shown.stderr
    after = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert after == before  # nothing changed
    assert read_stage(FileStore(directory), "s").state.done_units == 8


def test_reset_and_cleanup_on_a_read_only_file_system_are_one_paragraph(tmp_path: Path) -> None:
    """On a file system mounted read-only, reset, reset all and cleanup ended with an
    OSError traceback (EROFS opening the lock file); they refuse the stage in one paragraph
    now and it stays whole."""
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, "1m"):
        directory = mnt / "cp"
        cp = EnhancedCheckpoint(directory, "s", log_every=0)
        cp.start(total_items=10)
        for i in range(6):
            cp.update(processed=1, successful=1, index=i)
        cp.pause()
        cp.close()
        os.utime(directory / "s.json", (0, 0))  # old enough for any cleanup
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        cli = [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory)]
        for args in (["reset", "s", "--force"], ["reset", "all", "--force"],
                     ["cleanup", "--days", "0"]):
            done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300,
                                  check=False, env=python_env())
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr, (args, done.stderr)
            assert "Cannot reset stage 's'" in done.stderr, (args, done.stderr)
            assert "Read-only file system" in done.stderr, (args, done.stderr)
            assert "remount a read-only file system" in done.stderr, (args, done.stderr)
        assert read_stage(FileStore(directory), "s").state.done_units == 6
