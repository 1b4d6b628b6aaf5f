from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


def python_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's package, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


class StageHolder:
    """A real second process that owns a stage until closed."""

    def __init__(self, directory: Path, stage: str) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [PYTHON, str(SCRIPTS / "hold_stage.py"), str(directory), stage],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(),
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def hold_stage():  # type: ignore[no-untyped-def]
    holders: list[StageHolder] = []

    def start(directory: Path, stage: str) -> StageHolder:
        holder = StageHolder(directory, stage)
        holders.append(holder)
        return holder

    yield start
    for holder in holders:
        if holder.proc.poll() is None:
            holder.close()
