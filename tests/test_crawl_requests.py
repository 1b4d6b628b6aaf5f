"""Requests that carry more than JSON, or that the spider can no longer rebuild, with real
``scrapy crawl`` processes and real kills.

- Items (scrapy.Item, dataclass, attrs), datetimes, Decimals, bytes, sets and tuples in
  ``cb_kwargs`` and ``meta`` come back with their types after kills: the output equals the
  plain-Scrapy run item by item.
- A callback renamed between runs stops the resumed run before anything is fetched, naming
  it; with ``CHECKPOINT_DROP_UNRESTORABLE`` the run drops those requests, counts them, and the
  stage ends ``incomplete``.
- Requests that cannot be journaled and were pending at a kill are counted as lost: the stage
  ends ``incomplete``, never ``completed``, and says how many; but those yielded by a unit's
  callback (a lambda as callback, an object such as an ``ItemLoader`` in ``meta``) are found
  again (that unit is done only once they are), and the crawl ends as plain Scrapy's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import PYTHON, python_env
from .crawl import PROJECT, CrawlRun, Outputs, crawl, run, sigkill
from .site import Site

N_PAGES = 150


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.004)
    yield s
    s.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the test project whose spiders a test may edit."""
    copy = tmp_path / "project"
    shutil.copytree(PROJECT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _carry(site: Site, project: Path, out: Path, *extra: str, plain: bool = False,
           kill_after: int | None = None) -> CrawlRun:
    out.mkdir(exist_ok=True)
    cmd = [PYTHON, "-m", "scrapy", "crawl", "carry", "-a", f"base={site.url}",
           "-o", str(out / "items.jl"), "-s", f"CHECKPOINT_DIR={out / 'checkpoints'}", *extra]
    if plain:
        cmd += ["-s", "ADDONS={}"]
    return run(site, cmd, out, cwd=project, interrupt=sigkill if kill_after else None,
               interrupt_after_hits=kill_after)


def _items(out: Path) -> list[dict[str, object]]:
    data = (out / "items.jl").read_text()
    assert data.endswith("\n"), "partial last line"
    return sorted((json.loads(line) for line in data.splitlines()), key=lambda i: i["page"])


def _state(out: Path, stage: str):  # type: ignore[no-untyped-def]
    return read_stage(FileStore(out / "checkpoints"), stage).state


def _rename_callback(project: Path, old: str, new: str) -> None:
    spider = project / "crawl_project" / "spiders" / "carry.py"
    spider.write_text(spider.read_text().replace(old, new))


def test_items_and_typed_values_in_cb_kwargs_and_meta_survive_kills(
    tmp_path: Path, site: Site, project: Path
) -> None:
    reference = _carry(site, project, tmp_path / "plain", plain=True)
    assert reference.returncode == 0, reference.log[-3000:]
    expected = _items(tmp_path / "plain")
    assert len(expected) == N_PAGES
    attrs_type = "Note" if expected[1]["note"] is not None else "NoneType"
    assert expected[1]["types"] == ["PageItem", "datetime", "Decimal", "bytes", "set", "tuple",
                                    "Crumb", attrs_type]

    out = tmp_path / "cp"
    for kill_after in (30, 45):
        killed = _carry(site, project, out, kill_after=kill_after)
        assert killed.returncode == -9
    final = _carry(site, project, out)
    assert final.returncode == 0, final.log[-3000:]
    assert "cannot be journaled" not in final.log
    assert _items(out) == expected
    state = _state(out, "carry")
    assert state.status is Status.COMPLETED
    assert state.lost == {}
    assert state.recoveries == 2


def _killed_with_pending(site: Site, project: Path, out: Path) -> int:
    """Run the carry spider until killed with requests pending; returns how many."""
    killed = _carry(site, project, out, kill_after=40)
    assert killed.returncode == -9
    pending = _state(out, "carry").pending_units
    assert pending > 0
    return pending


def test_a_renamed_callback_stops_the_resume_before_anything_is_fetched(
    tmp_path: Path, site: Site, project: Path
) -> None:
    out = tmp_path / "cp"
    pending = _killed_with_pending(site, project, out)
    _rename_callback(project, "parse_child", "parse_page")

    refused = _carry(site, project, out)
    assert refused.returncode != 0
    assert refused.hits == {}
    assert (f"{pending} pending request(s) need what spider CarrySpider no longer has: "
            f"callback 'parse_child' ({pending} requests)") in refused.log
    assert "CHECKPOINT_DROP_UNRESTORABLE = True" in refused.log
    assert _state(out, "carry").pending_units == pending  # nothing given up

    _rename_callback(project, "parse_page", "parse_child")
    resumed = _carry(site, project, out)
    assert resumed.returncode == 0, resumed.log[-3000:]
    reference = _carry(site, project, tmp_path / "plain", plain=True)
    assert _items(out) == _items(tmp_path / "plain"), reference.log[-2000:]
    assert _state(out, "carry").status is Status.COMPLETED


def test_dropping_unrestorable_requests_ends_the_stage_incomplete_with_the_count(
    tmp_path: Path, site: Site, project: Path
) -> None:
    out = tmp_path / "cp"
    pending = _killed_with_pending(site, project, out)
    _rename_callback(project, "parse_child", "parse_page")

    dropped = _carry(site, project, out, "-s", "CHECKPOINT_DROP_UNRESTORABLE=True")
    assert dropped.returncode == 0, dropped.log[-3000:]
    assert dropped.hits == {}  # every pending request needed the old name; the rest is done
    assert f"{pending} pending request(s) cannot be rebuilt (callback 'parse_child': {pending})" \
        in dropped.log
    assert "Completed." not in dropped.log
    assert re.search(r"Incomplete: the work of \d+ unit\(s\) was lost \(unrestorable: "
                     rf"{pending}\)", dropped.log)
    assert f"'checkpoint/lost': {pending}," in dropped.log
    assert f"'checkpoint/lost/unrestorable': {pending}," in dropped.log
    state = _state(out, "carry")
    assert state.status is Status.INCOMPLETE
    assert state.lost == {"unrestorable": pending}
    assert state.pending_units == 0

    shown = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir",
                            str(out / "checkpoints"), "show", "carry"], capture_output=True,
                           text=True, env={**python_env(), "COLUMNS": "200"}, check=False)
    assert "incomplete" in shown.stdout
    assert re.search(rf"Lost\s+{pending} unit\(s\)", shown.stdout), shown.stdout
    as_json = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir",
                              str(out / "checkpoints"), "show", "carry", "--json"],
                             capture_output=True, text=True, env=python_env(), check=False)
    entry = json.loads(as_json.stdout)
    assert (entry["status"], entry["lost"]) == ("incomplete", {"unrestorable": pending})
    assert entry["percent"] < 100


def test_unjournaled_requests_pending_at_a_kill_are_counted_and_the_stage_ends_incomplete(
    tmp_path: Path
) -> None:
    site = Site(120, delay=0.004)
    try:
        outputs = Outputs(tmp_path)
        # Every request but the start one has an object in its meta, and is scheduled with
        # engine.crawl(): nothing yields it, so nothing can find it again.
        killed = crawl(site, outputs, "-a", "unserializable=engine", interrupt=sigkill,
                       interrupt_after_hits=30)
        assert killed.returncode == -9
        pending = _state(tmp_path, "site").pending_units
        assert pending > 0

        resumed = crawl(site, outputs, "-a", "unserializable=engine")
        assert resumed.returncode == 0, resumed.log[-3000:]
        assert (f"{pending} request(s) that could not be journaled were pending at the "
                f"interruption") in resumed.log
        assert "Completed." not in resumed.log
        assert f"'checkpoint/lost/unjournaled': {pending}," in resumed.log
        state = _state(tmp_path, "site")
        assert state.status is Status.INCOMPLETE
        assert state.lost == {"unjournaled": pending}
        assert state.progress.processed_items < state.progress.total_items

        again = crawl(site, outputs, "-a", "unserializable=engine")  # resumes, does not restart
        assert again.returncode == 0, again.log[-3000:]
        assert "Resuming incomplete stage site" in again.log
        assert again.hits == {}
        assert _state(tmp_path, "site").status is Status.INCOMPLETE
    finally:
        site.close()


@pytest.mark.parametrize(("option", "kills"), [
    # Every link is followed with a lambda: no request but the start one can be journaled
    # with its callback.
    ("lambdas=1", (40,)),
    # Every link is followed with an object in its meta (as an ItemLoader passed to the next
    # callback): no request but the start one can be journaled.
    ("unserializable=1", (30, 60)),
])
def test_requests_that_cannot_be_journaled_are_found_again_after_a_kill(
        tmp_path: Path, option: str, kills: tuple[int, ...]) -> None:
    # Each holds the unit whose callback yielded it until it is done, so a kill redoes that
    # unit, which yields it again: nothing is lost, nothing written twice.
    site = Site(120, delay=0.004)
    try:
        plain = Outputs(tmp_path / "plain")
        plain.directory.mkdir()
        reference = crawl(site, plain, "-a", option, "-s", "ADDONS={}")
        assert reference.returncode == 0, reference.log[-3000:]
        outputs = Outputs(tmp_path / "cp")
        outputs.directory.mkdir()
        for hits in kills:
            killed = crawl(site, outputs, "-a", option, interrupt=sigkill,
                           interrupt_after_hits=hits)
            assert killed.returncode == -9, killed.log[-3000:]
        final = crawl(site, outputs, "-a", option)
    finally:
        site.close()
    assert final.returncode == 0, final.log[-3000:]
    assert "[site] Completed." in final.log, final.log[-3000:]
    assert "checkpoint/lost" not in final.log
    assert sorted(outputs.jsonlines("items.jl")) == sorted(plain.jsonlines("items.jl"))
    assert sorted(outputs.jsonlines("own.jl")) == list(range(120))
    assert sorted(outputs.csv_pages()) == list(range(120))
    state = _state(outputs.directory, "site")
    assert state.status is Status.COMPLETED
    assert state.lost == {}
