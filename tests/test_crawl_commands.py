"""Scrapy's own commands in a project with the add-on: crawls record a stage, the others
(shell, fetch, view, parse, check) neither create nor resume one.

Real ``scrapy`` processes of a copy of the test project, whose settings.py has the add-on
and names the checkpoint directory. A crawl is killed first, so a stage with pending
requests is there for a command to resume by mistake; every command must then leave
every checkpoint file as it was and fetch only its own page, and the next crawl finishes
the stage with every page once.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import PYTHON, python_env
from .crawl import PROJECT, Outputs, run, sigkill
from .site import Site

N_PAGES = 120

CONTRACT_SPIDER = '''
import scrapy


class ContractSpider(scrapy.Spider):
    """A spider with a contract, for ``scrapy check``."""

    name = "contract"

    def parse(self, response):
        """@url {url}/p/1
        @returns items 1 1
        """
        yield {{"page": 1}}
'''


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.002)
    yield s
    s.close()


def _project(tmp_path: Path, site: Site) -> Path:
    """A copy of the test project whose settings name ``tmp_path/checkpoints``, with a
    contract spider."""
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    package = project / "crawl_project"
    with (package / "settings.py").open("a") as f:
        f.write(f"CHECKPOINT_DIR = {str(tmp_path / 'checkpoints')!r}\n")
    (package / "spiders" / "contract.py").write_text(CONTRACT_SPIDER.format(url=site.url))
    return project


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _scrapy(site: Site, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = python_env()
    env["BROWSER"] = "true"  # scrapy view opens the page with a command that does nothing
    return subprocess.run([PYTHON, "-m", "scrapy", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1200, check=False)


COMMANDS = {
    "shell": (["shell", "{url}/p/1", "-c", "('STATUS', response.status)"], "('STATUS', 200)"),
    "fetch": (["fetch", "--nolog", "{url}/p/1"], "<h1>Page 1</h1>"),
    "fetch with the project's spider": (["fetch", "--nolog", "--spider=site", "{url}/p/1"],
                                        "<h1>Page 1</h1>"),
    "view": (["view", "--spider=site", "{url}/p/1"], "is off for 'scrapy fetch/view'"),
    "parse": (["parse", "--spider=site", "-c", "parse", "{url}/p/1"], "'page': 1"),
    "check": (["check", "contract"], "OK"),
}


def test_scrapy_commands_other_than_crawls_leave_every_stage_alone(
    tmp_path: Path, site: Site
) -> None:
    project = _project(tmp_path, site)
    checkpoints = tmp_path / "checkpoints"
    outputs = Outputs(tmp_path)
    crawl_cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}", *outputs.args]
    run(site, crawl_cmd, tmp_path, cwd=project, interrupt=sigkill, interrupt_after_hits=20)
    state = read_stage(FileStore(checkpoints), "site").state
    assert state.progress.processed_items < N_PAGES  # pending work a command could resume
    before = _files(checkpoints)

    for name, (args, expected) in COMMANDS.items():
        hits_before = site.page_hits()
        done = _scrapy(site, project, *[a.format(url=site.url) for a in args])
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{name}: {output[-3000:]}"
        assert expected in output, f"{name}: {output[-3000:]}"
        assert "Traceback" not in output, f"{name}: {output[-3000:]}"
        hits = site.page_hits() - hits_before
        assert hits == {1: 1}, f"{name} fetched {dict(hits)}"
        assert _files(checkpoints) == before, f"{name} changed the checkpoint"
    assert FileStore(checkpoints).stages() == ["site"]

    resumed = run(site, crawl_cmd, tmp_path, cwd=project)
    assert resumed.returncode == 0, resumed.log[-3000:]
    assert read_stage(FileStore(checkpoints), "site").state.status is Status.COMPLETED
    assert sorted(outputs.jsonlines("items.jl")) == list(range(N_PAGES))


def test_runspider_and_crawl_take_part(tmp_path: Path, site: Site) -> None:
    """The detection leaves crawls alone: both commands create and complete a stage."""
    project = _project(tmp_path, site)
    spider = tmp_path / "tree_spider.py"  # not site.py: runspider would import Python's site
    shutil.copy(project / "crawl_project" / "spiders" / "site.py", spider)
    for command, target, stage in (("crawl", "site", "site"),
                                   ("runspider", str(spider), "site_runspider")):
        done = _scrapy(site, project, command, target, "-a", f"base={site.url}",
                       "-s", f"CHECKPOINT_STAGE_NAME={stage}")
        assert done.returncode == 0, done.stderr[-3000:]
        state = read_stage(FileStore(tmp_path / "checkpoints"), stage).state
        assert state.status is Status.COMPLETED
        assert state.progress.processed_items == N_PAGES

