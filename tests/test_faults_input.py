"""Bad input given to the tracker itself (a stage name, an option): the program ends with the
error's one paragraph, as for a stage that is locked or damaged, never a traceback, and
nothing is written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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
