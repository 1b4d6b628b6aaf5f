"""A tracker whose checkpoint directory cannot be written (a read-only file system, a
directory of another user, a file in the path): one paragraph that says what to do about
that cause, no traceback, nothing run."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import PYTHON
from .test_faults_owner import _as_other_user
from .test_faults_write import remount, tmpfs

JOB = """
import asyncio, sys
from scrapy_checkpoint import AsyncCheckpointTracker

async def work(x):
    print("RAN", x)

async def main():
    async with AsyncCheckpointTracker(sys.argv[1], "enrich", log_every=0) as tracker:
        await tracker.map(work, range(5))

asyncio.run(main())
"""


def _one_paragraph(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "RAN" not in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "fix the cause" not in lines[0]
    return lines[0]


def test_a_checkpoint_directory_on_a_read_only_file_system_says_so(tmp_path: Path) -> None:
    """Before: "Cannot write the checkpoint of stage 'enrich' (DIR/cp): Read-only file
    system. Everything committed before is kept; fix the cause, then ...": the one thing the
    user needs, what to do, was not said."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    with tmpfs(tmp_path / "ro", "1m") as mount:
        remount(mount, "1m,ro")
        for directory in (mount, mount / "cp"):
            line = _one_paragraph(_as_other_user(PYTHON, str(script), str(directory)))
            assert "Read-only file system" in line, line
            assert "read-only file system: remount it read-write or use a directory on a " \
                   "writable one" in line, line


def test_a_checkpoint_directory_this_user_may_not_write_says_what_to_do(tmp_path: Path) -> None:
    """Before: "... (DIR): Permission denied. Everything committed before is kept; fix the
    cause, ..." for a directory of another user, one under a parent without search (x)
    permission, and a path through a file ("Not a directory")."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    locked = tmp_path / "locked"
    (locked / "sub").mkdir(parents=True)
    locked.chmod(0o600)  # no search permission: nothing below it can be reached
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    (tmp_path / "afile").write_text("")
    try:
        for directory in (locked / "sub", readonly / "cp"):
            line = _one_paragraph(_as_other_user(PYTHON, str(script), str(directory)))
            assert "Permission denied" in line, line
            assert "writable and searchable for this user" in line, line
        line = _one_paragraph(_as_other_user(PYTHON, str(script), str(tmp_path / "afile" / "cp")))
        assert "a part of the path is a file, not a directory" in line, line
    finally:
        locked.chmod(0o700)
