"""A crawl that cannot start says why in one paragraph and exits with status 1.

Real ``scrapy crawl`` processes of the test project: a misspelled or unknown
``CHECKPOINT_*`` name, a bad value, a ``CHECKPOINT_DIR`` that cannot be used, a stage
another process owns. Each stops before the first request, with the message once and no
traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .crawl import Outputs, crawl
from .site import Site

Setup = Callable[[Path, Any], list[str]]


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(20)
    yield s
    s.close()


def _file_as_dir(tmp_path: Path, _: Any) -> list[str]:
    (tmp_path / "afile").write_text("")
    return ["-s", f"CHECKPOINT_DIR={tmp_path / 'afile'}"]


def _dir_under_a_file(tmp_path: Path, _: Any) -> list[str]:
    (tmp_path / "afile").write_text("")
    return ["-s", f"CHECKPOINT_DIR={tmp_path / 'afile' / 'cp'}"]


def _held_stage(tmp_path: Path, hold_stage: Any) -> list[str]:
    hold_stage(tmp_path / "checkpoints", "site")
    return []


CASES: dict[str, tuple[Setup, str]] = {
    "misspelled name": (lambda p, h: ["-s", "CHECKPOINT_DIRECTORY=data/cp"],
                        "Unknown setting CHECKPOINT_DIRECTORY: did you mean CHECKPOINT_DIR?"),
    "misspelled name, second": (lambda p, h: ["-s", "CHECKPOINT_ONCOMPLETE=skip"],
                                "Unknown setting CHECKPOINT_ONCOMPLETE: did you mean "
                                "CHECKPOINT_ON_COMPLETE?"),
    "bad value": (lambda p, h: ["-s", "CHECKPOINT_DURABILITY=fsynch"],
                  "Invalid setting CHECKPOINT_DURABILITY='fsynch'"),
    "dir is a file": (_file_as_dir, "is not a directory"),
    "dir under a file": (_dir_under_a_file, "cannot be created (Not a directory)"),
    "stage owned by another process": (_held_stage, "Stage 'site' is in use by pid"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_crawl_that_cannot_start_says_why_in_one_paragraph(
    case: str, tmp_path: Path, site: Site, hold_stage: Any
) -> None:
    setup, message = CASES[case]
    extra = setup(tmp_path, hold_stage)
    refused = crawl(site, Outputs(tmp_path), *extra)
    assert refused.returncode == 1, refused.log[-3000:]
    errors = [line for line in refused.log.splitlines()
              if "] ERROR: " in line or "] CRITICAL: " in line]
    assert len(errors) == 1, refused.log[-3000:]
    assert "[scrapy_checkpoint] ERROR: The crawl cannot start. " in errors[0]
    assert message in errors[0], errors[0]
    assert "Traceback" not in refused.log, refused.log[-3000:]
    assert refused.hits == {}
    assert not (tmp_path / "items.jl").exists()


def test_with_twisted_s_crawler_process_the_crawl_stops_too(tmp_path: Path, site: Site) -> None:
    """A non-asyncio reactor runs the crawl in Scrapy's CrawlerProcess: the same paragraph
    at ERROR and status 1, and no copy of the traceback (Twisted's log beginner would print
    one straight to stderr, with an 'Unhandled error in Deferred:' line)."""
    refused = crawl(site, Outputs(tmp_path), "-s", "CHECKPOINT_DURABILITY=fsynch", "-s",
                    "TWISTED_REACTOR=twisted.internet.selectreactor.SelectReactor")
    assert refused.returncode == 1, refused.log[-3000:]
    errors = [line for line in refused.log.splitlines()
              if "] ERROR: " in line or "] CRITICAL: " in line]
    assert errors == [line for line in errors if "[scrapy_checkpoint] ERROR: The crawl cannot "
                      "start. Invalid setting CHECKPOINT_DURABILITY='fsynch'" in line]
    assert len(errors) == 1, refused.log[-3000:]
    assert "Traceback" not in refused.log, refused.log[-3000:]
    assert "Unhandled error" not in refused.log, refused.log[-3000:]
    assert refused.hits == {}


def test_a_checkpoint_output_in_a_directory_not_yet_made_gets_it_made(
    tmp_path: Path, site: Site,
) -> None:
    """CHECKPOINT_OUTPUT=data/items.jl in a project without data/ ended the crawl at start
    with a FileNotFoundError traceback; -o data/items.jl makes the directory, so does it."""
    own = tmp_path / "data" / "sub" / "own.jl"
    outputs = Outputs(tmp_path)
    run = crawl(site, outputs, "-s", f"CHECKPOINT_OUTPUT={own}")
    assert run.returncode == 0, run.log[-3000:]
    assert "Traceback" not in run.log, run.log[-3000:]
    assert "'finish_reason': 'finished'" in run.log
    assert sorted(outputs.jsonlines("data/sub/own.jl")) == list(range(20))


@pytest.mark.parametrize("where", ["-o site.json", "-o site/x.jl", "CHECKPOINT_OUTPUT"])
def test_an_output_that_is_a_file_of_the_checkpoint_is_refused_before_anything_is_written(
    tmp_path: Path, site: Site, where: str,
) -> None:
    """A feed at the stage's own state file (-o checkpoints/site.json) ran the crawl with its
    items and the state file replacing each other: 'Output ... was deleted or moved while the
    crawl wrote it', the items gone, a damaged state file. Now the crawl does not start, and
    nothing is left that would refuse the next, corrected, run."""
    cp_dir = tmp_path / "checkpoints"
    target = cp_dir / ("site.json" if where != "-o site/x.jl" else "site/x.jl")
    extra = ["-s", f"CHECKPOINT_OUTPUT={target}"] if where == "CHECKPOINT_OUTPUT" \
        else ["-o", str(target)]
    outputs = Outputs(tmp_path)
    refused = crawl(site, outputs, *extra)
    assert refused.returncode == 1, refused.log[-3000:]
    errors = [line for line in refused.log.splitlines() if "] ERROR: " in line]
    assert len(errors) == 1, refused.log[-3000:]
    assert "The crawl cannot start. Output " in errors[0]
    assert "is a file of the checkpoint" in errors[0]
    assert "Traceback" not in refused.log, refused.log[-3000:]
    assert refused.hits == {}
    assert not target.exists()
    again = crawl(site, outputs)
    assert again.returncode == 0, again.log[-3000:]
    assert sorted(outputs.jsonlines("items.jl")) == list(range(20))
