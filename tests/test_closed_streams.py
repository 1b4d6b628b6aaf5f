"""A tracker and the CLI started with stdout, stderr or stdin closed (``2>&-``, ``>&-``,
``<&-``, a service manager, ``pythonw``): Python then sets ``sys.stderr`` (``sys.stdout``,
``sys.stdin``) to None. The work is done and recorded; nothing raises for the missing stream.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from .conftest import PYTHON, python_env

JOB = """
import asyncio, sys
from scrapy_checkpoint import AsyncCheckpointTracker

async def work(x):
    return x

async def main():
    async with AsyncCheckpointTracker(sys.argv[1], "enrich", log_every=10) as tracker:
        result = await tracker.map(work, range(40))
    with open(sys.argv[2], "w") as f:
        f.write(f"{result.succeeded} {result.failed}")

asyncio.run(main())
"""


def _closing(*fds: int) -> Callable[[], None]:
    def close() -> None:
        for fd in fds:
            os.close(fd)
    return close


def _run(args: list[str], *fds: int) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` with ``fds`` closed in the child (before Python starts)."""
    return subprocess.run(args, env=python_env(), timeout=300, check=False,
                          preexec_fn=_closing(*fds))


def test_a_tracker_runs_and_records_its_stage_with_stderr_or_both_streams_closed(
    tmp_path: Path,
) -> None:
    """Before: ``AttributeError: 'NoneType' object has no attribute 'isatty'`` from the
    tracker's constructor (it asked whether stderr was a terminal): nothing ran, nothing was
    recorded, exit status 1."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    for name, fds in (("stderr", (2,)), ("both", (1, 2))):
        directory, result = tmp_path / f"cp-{name}", tmp_path / f"result-{name}"
        done = _run([PYTHON, str(script), str(directory), str(result)], *fds)
        assert done.returncode == 0, name
        assert result.read_text() == "40 0", name
        state = json.loads((directory / "enrich.json").read_text())
        assert state["status"] == "completed", name
        assert state["progress"]["processed_items"] == 40, name


def test_the_cli_lists_with_stdout_closed_and_resets_with_stdin_closed(tmp_path: Path) -> None:
    """Before: ``scrapy-checkpoint list >&-`` ended in a traceback (``AttributeError`` on
    ``sys.stdout.isatty()``), and so did ``reset`` with stdin closed (``sys.stdin.isatty()``)."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    directory = tmp_path / "cp"
    assert _run([PYTHON, str(script), str(directory), str(tmp_path / "result")]).returncode == 0
    cli = [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory)]
    listed = subprocess.run([*cli, "list"], env=python_env(), timeout=300, check=False,
                            capture_output=True, preexec_fn=_closing(1))
    assert listed.returncode == 0, listed.stderr.decode()
    assert b"Traceback" not in listed.stderr
    reset = subprocess.run([*cli, "reset", "enrich"], env=python_env(), timeout=300,
                           check=False, capture_output=True, preexec_fn=_closing(0))
    assert reset.returncode == 0, reset.stderr.decode()
    assert b"Traceback" not in reset.stderr
    assert not (directory / "enrich.json").exists()
