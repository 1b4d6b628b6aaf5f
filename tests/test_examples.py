"""The README's demos and the docs' examples run and do what they say."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import PYTHON, ROOT, python_env

EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))


def test_the_crawl_demo_resumes_a_killed_crawl_with_every_book_once() -> None:
    result = subprocess.run([PYTHON, "run_demo.py"], cwd=ROOT / "example_project",
                            capture_output=True, text=True, env=python_env(), timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Detected incomplete checkpoint for books" in result.stdout
    assert "600 items, 600 distinct books of 600, 0 duplicates, partial line: False" in result.stdout
    assert "Demo OK" in result.stdout


def test_the_async_stage_demo_resumes_a_killed_stage() -> None:
    result = subprocess.run([PYTHON, "example_project/async_stage_demo.py"], cwd=ROOT,
                            capture_output=True, text=True, env=python_env(), timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Items handled: 2000/2000, missing: 0" in result.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_docs_example_runs(example: Path, tmp_path: Path) -> None:
    result = subprocess.run([PYTHON, str(example)], cwd=tmp_path, capture_output=True, text=True,
                            env=python_env(), timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
