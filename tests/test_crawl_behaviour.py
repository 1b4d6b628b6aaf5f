"""What a crawl does in each situation: failures, re-runs, settings, entry points."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import PYTHON, python_env
from .crawl import PROJECT, Outputs, crawl, run, sigint, sigkill
from .site import Site

N_PAGES = 120
HERE = Path(__file__).resolve().parent


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.002)
    yield s
    s.close()


def _state(directory: Path, stage: str = "site"):  # type: ignore[no-untyped-def]
    return read_stage(FileStore(directory / "checkpoints"), stage).state


def _reachable(avoid: set[int]) -> set[int]:
    """Pages reachable from page 0 when the pages in ``avoid`` yield no links."""
    seen, todo = set(), [0]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        if p not in avoid:
            todo += [c for c in (3 * p + 1, 3 * p + 2, 3 * p + 3) if c < N_PAGES]
    return seen


def test_failed_requests_are_counted_and_fetched_again_with_retry_failed(
    tmp_path: Path, site: Site
) -> None:
    outputs = Outputs(tmp_path)
    site.fail = {5}  # answers 500
    first = crawl(site, outputs, "-a", "fail_in_callback=7")
    assert first.returncode == 0, first.log[-3000:]
    state = _state(tmp_path)
    assert state.status is Status.COMPLETED
    assert state.progress.failed_items == 2
    assert sorted(outputs.jsonlines("own.jl")) == sorted(_reachable({5, 7}) - {5, 7})

    site.fail = set()
    second = crawl(site, outputs, "-s", "CHECKPOINT_RETRY_FAILED=True")
    assert second.returncode == 0, second.log[-3000:]
    assert set(second.hits) == _reachable(set()) - _reachable({5, 7}) | {5, 7}
    assert sorted(outputs.jsonlines("own.jl")) == list(range(N_PAGES))
    assert sorted(outputs.jsonlines("items.jl")) == list(range(N_PAGES))
    state = _state(tmp_path)
    assert (state.progress.failed_items, state.status) == (0, Status.COMPLETED)


def test_failed_requests_requeued_by_the_cli_are_fetched_by_the_next_plain_run(
    tmp_path: Path, site: Site
) -> None:
    outputs = Outputs(tmp_path)
    site.fail = {5}  # answers 500
    first = crawl(site, outputs, "-a", "fail_in_callback=7")
    assert first.returncode == 0, first.log[-3000:]
    assert _state(tmp_path).progress.failed_items == 2

    requeue = subprocess.run(
        [PYTHON, "-m", "scrapy", "checkpoint", "requeue", "site", "--failed", "--dir",
         str(tmp_path / "checkpoints")],
        cwd=PROJECT, env=python_env(), capture_output=True, text=True, timeout=900, check=False)
    assert requeue.returncode == 0, requeue.stderr
    assert "Requeued 2 failed unit(s) of site" in requeue.stdout
    state = _state(tmp_path)
    assert (state.status, state.progress.failed_items, state.pending_units) == (
        Status.COMPLETED, 0, 2)

    site.fail = set()
    second = crawl(site, outputs)  # no CHECKPOINT_RETRY_FAILED
    assert second.returncode == 0, second.log[-3000:]
    assert "2 requeued request(s) are pending: fetching them" in second.log
    assert set(second.hits) == _reachable(set()) - _reachable({5, 7}) | {5, 7}
    assert sorted(outputs.jsonlines("own.jl")) == list(range(N_PAGES))
    state = _state(tmp_path)
    assert (state.progress.failed_items, state.status) == (0, Status.COMPLETED)


def test_a_completed_stage_starts_over_with_on_complete_restart(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    assert crawl(site, outputs).returncode == 0
    again = crawl(site, outputs, "-s", "CHECKPOINT_ON_COMPLETE=restart")
    assert again.returncode == 0
    assert "was completed; starting it over" in again.log
    assert set(again.hits) == set(range(N_PAGES))
    assert sorted(outputs.jsonlines("own.jl")) == sorted(list(range(N_PAGES)) * 2)


def test_a_changed_input_file_stops_the_resume_until_reset(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    source = tmp_path / "seeds.txt"
    source.write_text("v1\n")
    setting = ("-s", f"CHECKPOINT_INPUT_FILE={source}")
    crawl(site, outputs, *setting, interrupt=sigkill, interrupt_after_hits=20)
    source.write_text("v2\n")
    refused = crawl(site, outputs, *setting)
    assert refused.returncode != 0
    assert refused.log.count("changed since the checkpoint was made") == 1, refused.log
    assert "CHECKPOINT_RESET=True" in refused.log
    assert "Traceback" not in refused.log
    assert refused.hits == {}
    fresh = crawl(site, outputs, *setting, "-s", "CHECKPOINT_RESET=True")
    assert fresh.returncode == 0, fresh.log[-3000:]
    assert set(fresh.hits) == set(range(N_PAGES))
    assert _state(tmp_path).input_file_hash is not None


def test_the_explicit_settings_form_resumes_a_killed_crawl(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    explicit = ("-s", "ADDONS={}",
                "-s", 'DOWNLOADER_MIDDLEWARES={"scrapy_checkpoint.CheckpointMiddleware": 100}',
                "-s", "CHECKPOINT_ENABLED=True", "-s", "CHECKPOINT_STAGE_NAME=stage1_discovery")
    first = crawl(site, outputs, *explicit, interrupt=sigkill, interrupt_after_hits=30)
    assert first.returncode == -9
    second = crawl(site, outputs, *explicit)
    assert second.returncode == 0, second.log[-3000:]
    assert "Detected incomplete checkpoint for stage1_discovery" in second.log
    assert sorted(outputs.jsonlines("own.jl")) == list(range(N_PAGES))
    assert _state(tmp_path, "stage1_discovery").status is Status.COMPLETED


def test_checkpoint_enabled_false_behaves_like_plain_scrapy(tmp_path: Path, site: Site) -> None:
    plain_dir, off_dir = tmp_path / "plain", tmp_path / "off"
    plain_dir.mkdir()
    off_dir.mkdir()
    plain = crawl(site, Outputs(plain_dir), "-s", "ADDONS={}")
    off = crawl(site, Outputs(off_dir), "-s", "CHECKPOINT_ENABLED=False")
    assert plain.returncode == off.returncode == 0
    assert off.hits == plain.hits
    assert sorted(Outputs(off_dir).jsonlines("items.jl")) == sorted(
        Outputs(plain_dir).jsonlines("items.jl"))
    assert not (off_dir / "checkpoints").exists()
    for piece in ("[scrapy_checkpoint]", "CheckpointExtension", "CheckpointMiddleware",
                  "CheckpointFeed", "checkpoint/"):
        assert piece not in off.log


@pytest.mark.parametrize(("setting", "message"), [
    ("CHECKPOINT_DURABILITY=sometimes",
     "Invalid setting CHECKPOINT_DURABILITY='sometimes': Input should be 'fsync', 'flush' or 'none'"),
    ("CHECKPOINT_ON_COMPLETE=never",
     "Invalid setting CHECKPOINT_ON_COMPLETE='never': Input should be 'skip', 'restart' or "
     "'incremental'"),
    ("CHECKPOINT_REFRESH_AFTER=weekly",
     "Invalid setting CHECKPOINT_REFRESH_AFTER='weekly': Value error, use a duration such as "
     "30m, 12h or 7d"),
    ("JOBDIR=jobdir", "JOBDIR and scrapy-checkpoint must not be combined"),
    ("CHECKPOINT_SHARED=True", "CHECKPOINT_SHARED needs a Redis or PostgreSQL backend"),
    ("CHECKPOINT_REDIS_TTL={\"done\": 5}",
     "Invalid setting CHECKPOINT_REDIS_TTL='done': Input should be 'active', 'completed' or"),
])
def test_a_bad_setting_stops_the_crawl_at_start_with_a_clear_error(
    tmp_path: Path, site: Site, setting: str, message: str
) -> None:
    result = crawl(site, Outputs(tmp_path), "-s", setting)
    assert result.returncode != 0
    assert message in result.log
    assert result.hits == {}


def test_a_second_crawl_of_a_running_stage_is_refused(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}", *outputs.args]
    site.gate.clear()  # hold the first crawl at its first requests
    first = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=python_env())
    try:
        assert site.wait_for_hits(1)
        second_log = tmp_path / "second.log"
        with second_log.open("wb") as log:
            code = subprocess.call(cmd, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT,
                                   env=python_env(), timeout=900)
        assert code != 0
        assert f"Stage 'site' is in use by pid {first.pid} on host" in second_log.read_text()
    finally:
        site.gate.set()
        assert first.wait(timeout=900) == 0
    assert _state(tmp_path).status is Status.COMPLETED
    assert sorted(outputs.jsonlines("own.jl")) == list(range(N_PAGES))


def test_unserializable_requests_are_crawled_with_one_warning(tmp_path: Path, site: Site) -> None:
    outputs = Outputs(tmp_path)
    result = crawl(site, outputs, "-a", "unserializable=1")
    assert result.returncode == 0, result.log[-3000:]
    assert result.log.count("cannot be journaled") == 1
    assert "'checkpoint/unserializable':" in result.log
    assert sorted(outputs.jsonlines("own.jl")) == list(range(N_PAGES))


def test_runspider_with_start_urls_resumes_after_a_kill(tmp_path: Path, site: Site) -> None:
    def command(directory: Path, *extra: str) -> list[str]:
        return [PYTHON, "-m", "scrapy", "runspider", str(HERE / "start_urls_spider.py"),
                "-a", f"base={site.url}", "-o", str(directory / "items.jl"),
                "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}", *extra]

    def pages(directory: Path) -> list[int]:
        lines = (directory / "items.jl").read_text().splitlines()
        return sorted(json.loads(line)["page"] for line in lines)

    # Plain Scrapy fetches page 0 twice: start_urls requests have dont_filter, so the
    # dupefilter lets the first link back to page 0 through.
    (tmp_path / "plain").mkdir()
    plain = run(site, command(tmp_path / "plain", "-s", "CHECKPOINT_ENABLED=False"),
                tmp_path / "plain", cwd=tmp_path)
    assert plain.returncode == 0, plain.log[-3000:]
    assert plain.hits == {0: 2, **dict.fromkeys(range(1, N_PAGES), 1)}
    cmd = command(tmp_path)
    first = run(site, cmd, tmp_path, cwd=tmp_path, interrupt=sigint, interrupt_after_hits=30)
    assert first.returncode == 0
    second = run(site, cmd, tmp_path, cwd=tmp_path)
    assert second.returncode == 0, second.log[-3000:]
    # A graceful stop finishes what is in flight: no page is fetched more often than plainly.
    fetched = {p: first.hits.get(p, 0) + second.hits.get(p, 0) for p in range(N_PAGES)}
    assert fetched == plain.hits
    assert pages(tmp_path) == pages(tmp_path / "plain")


def test_crawler_process_script_resumes_after_a_kill(tmp_path: Path, site: Site) -> None:
    cmd = [PYTHON, str(HERE / "crawler_process_job.py"), site.url, str(tmp_path)]
    run(site, cmd, tmp_path, cwd=tmp_path, interrupt=sigkill, interrupt_after_hits=30)
    second = run(site, cmd, tmp_path, cwd=tmp_path)
    assert second.returncode == 0, second.log[-3000:]
    pages = [json.loads(line)["page"] for line in (tmp_path / "items.jl").read_text().splitlines()]
    assert sorted(pages) == list(range(N_PAGES))
    assert _state(tmp_path).status is Status.COMPLETED


_OFFSITE_SPIDER = '''
import scrapy


class OffsiteLinks(scrapy.Spider):
    name = "offsite_links"
    allowed_domains = ["127.0.0.1"]
    custom_settings = {"ADDONS": {"scrapy_checkpoint.Addon": 100}, "RETRY_ENABLED": False,
                       "TELNETCONSOLE_ENABLED": False}

    def __init__(self, base="", **kwargs):
        super().__init__(**kwargs)
        self.start_urls = [f"{base}/p/0"]

    def parse(self, response):
        page = int(response.css("h1::text").get().split()[1])
        yield {"page": page}
        yield scrapy.Request(f"http://offsite.invalid/p/{page}")  # outside allowed_domains
        yield from response.follow_all(css="a", callback=self.parse)
'''


def test_requests_outside_allowed_domains_are_not_units(tmp_path: Path, site: Site) -> None:
    """OffsiteMiddleware refuses them in its request_scheduled handler, which the engine
    drops without a signal: they must not be journaled as pending (the stage would end
    'incomplete', a unit lost for each), and the crawl is plain Scrapy's."""
    spider = tmp_path / "offsite_spider.py"
    spider.write_text(_OFFSITE_SPIDER)

    def crawl_into(directory: Path, *extra: str) -> tuple[list[int], str]:
        directory.mkdir()
        result = run(site, [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a",
                            f"base={site.url}", "-o", str(directory / "items.jl"),
                            "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}", *extra],
                     directory, cwd=tmp_path)
        assert result.returncode == 0, result.log[-3000:]
        lines = (directory / "items.jl").read_text().splitlines()
        filtered = result.log.split("'offsite/filtered': ", 1)[1].split(",", 1)[0]
        return sorted(json.loads(line)["page"] for line in lines), filtered

    plain = crawl_into(tmp_path / "plain", "-s", "CHECKPOINT_ENABLED=False")
    assert crawl_into(tmp_path / "addon") == plain
    assert set(plain[0]) == set(range(N_PAGES))
    state = read_stage(FileStore(tmp_path / "addon" / "checkpoints"), "offsite_links").state
    assert state.status is Status.COMPLETED, state.lost
    assert state.lost == {}
