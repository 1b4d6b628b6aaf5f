"""Every feed format Scrapy ships, to local files, across kills: real ``scrapy crawl`` processes.

Each crawl is killed (SIGKILL, or a SIGINT that pauses it) at random moments and run
again until it finishes; its feeds are then compared item by item with the feeds of
the same crawl run once by plain Scrapy (``CHECKPOINT_ENABLED=False``):

- ``json`` and ``xml``: one valid document, every item once;
- batch feeds (``%(batch_id)d``, ``FEED_EXPORT_BATCH_ITEM_COUNT``) with ``-o`` and ``-O``: the
  same files as the uninterrupted run (names, item counts), every item once, nothing
  an earlier run wrote truncated;
- ``csv`` whose item gained a field between runs: the columns of the header earlier runs
  wrote, the new field dropped with one warning, as plain Scrapy drops it.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import PYTHON
from .crawl import PROJECT, CrawlRun, by_page, jsonlines_items, once_per_page, run, sigint, sigkill
from .site import Site

N_PAGES = 150
BATCH = 10


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.004)
    yield s
    s.close()


def _crawl(site: Site, directory: Path, *feed_args: str,
           interrupt: Callable[[subprocess.Popen[bytes]], None] | None = None,
           after: int | None = None) -> CrawlRun:
    """``scrapy crawl site`` with feeds named relative to ``directory`` (``-o NAME``)."""
    directory.mkdir(parents=True, exist_ok=True)
    args = [str(directory / arg) if before in ("-o", "-O") else arg
            for before, arg in zip(["", *feed_args], feed_args, strict=False)]
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}", *args,
           "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}"]
    return run(site, cmd, directory, cwd=PROJECT, interrupt=interrupt, interrupt_after_hits=after)


def _plain(site: Site, directory: Path, *feed_args: str) -> None:
    result = _crawl(site, directory, *feed_args, "-s", "CHECKPOINT_ENABLED=False")
    assert result.returncode == 0, result.log[-3000:]


def _interrupted(site: Site, directory: Path, seed: int, *feed_args: str,
                 stops: int = 3) -> list[CrawlRun]:
    """Run the crawl, stopping it ``stops`` times (SIGKILL, and one SIGINT) at random
    moments, then to its end; return every run."""
    rng = random.Random(seed)
    runs = []
    for i in range(stops):
        stop = sigint if i == 1 else sigkill
        runs.append(_crawl(site, directory, *feed_args, interrupt=stop,
                           after=rng.randint(5, N_PAGES // 3)))
    final = _crawl(site, directory, *feed_args)
    assert final.returncode == 0, final.log[-3000:]
    runs.append(final)
    state = read_stage(FileStore(directory / "checkpoints"), "site").state
    assert state.status is Status.COMPLETED
    return runs


def _json_items(path: Path) -> list[dict[str, str]]:
    items = json.loads(path.read_bytes())  # fails on a second document or a missing "]"
    return by_page([{k: str(v) for k, v in item.items()} for item in items])


def _xml_items(path: Path) -> list[dict[str, str]]:
    root = ET.fromstring(path.read_bytes())  # fails on a second root or a missing end tag
    assert root.tag == "items"
    return by_page([{field.tag: field.text or "" for field in item} for item in root])


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    header, body = rows[0], rows[1:]
    assert all(len(row) == len(header) for row in body), "a row does not fit the header"
    assert header not in body, "the CSV header was written twice"
    return header, by_page([dict(zip(header, row, strict=True)) for row in body])


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "flag", "indent"), [(1, "-o", None), (2, "-O", "2"),
                                                     (3, "-O", None)])
def test_json_and_xml_feeds_after_kills_are_one_document_with_the_uninterrupted_items(
    tmp_path: Path, site: Site, seed: int, flag: str, indent: str | None
) -> None:
    feeds = [flag, "items.json", flag, "items.xml"]  # -O: emptied only when the stage starts
    if indent is not None:
        feeds += ["-s", f"FEED_EXPORT_INDENT={indent}"]
    _plain(site, tmp_path / "plain", *feeds)
    runs = _interrupted(site, tmp_path / "resumed", seed, *feeds)
    assert any(r.returncode == -9 for r in runs)
    for name, read in (("items.json", _json_items), ("items.xml", _xml_items)):
        plain = once_per_page(read(tmp_path / "plain" / name))
        resumed = read(tmp_path / "resumed" / name)
        assert [i["page"] for i in resumed] == [str(p) for p in range(N_PAGES)], name
        assert resumed == plain, name
    assert "cannot make crash-safe" not in "".join(r.log for r in runs)


def test_a_paused_json_feed_is_a_valid_document_and_the_resume_continues_inside_it(
    tmp_path: Path, site: Site
) -> None:
    paused = _crawl(site, tmp_path, "-o", "items.json", "-o", "items.xml", interrupt=sigint,
                    after=40)
    assert paused.returncode == 0, paused.log[-3000:]
    first = json.loads((tmp_path / "items.json").read_bytes())
    assert 0 < len(first) < N_PAGES
    assert len(ET.fromstring((tmp_path / "items.xml").read_bytes())) == len(first)
    final = _crawl(site, tmp_path, "-o", "items.json", "-o", "items.xml")
    assert final.returncode == 0, final.log[-3000:]
    assert [i["page"] for i in _json_items(tmp_path / "items.json")] == [
        str(p) for p in range(N_PAGES)]
    assert len(_xml_items(tmp_path / "items.xml")) == N_PAGES
    data = (tmp_path / "items.json").read_bytes()
    assert data.count(b"[") == 1
    assert data.count(b"]") == 1


def _csv_items(path: Path) -> list[dict[str, str]]:
    header, rows = _csv_rows(path)
    assert header == ["page", "title", "url"]
    return rows


def _batch_files(directory: Path, suffix: str) -> dict[str, list[dict[str, str]]]:
    read = {"json": _json_items, "xml": _xml_items, "csv": _csv_items}.get(suffix, jsonlines_items)
    return {p.name: read(p) for p in sorted(directory.glob(f"feed-*.{suffix}"))}


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "suffix", "seed"), [
    ("-O", "jl", 4), ("-O", "jl", 5), ("-o", "jl", 6), ("-O", "json", 7), ("-o", "json", 8),
    ("-O", "xml", 11), ("-o", "csv", 12)])
def test_batch_feeds_after_kills_are_the_files_of_an_uninterrupted_run(
    tmp_path: Path, site: Site, flag: str, suffix: str, seed: int
) -> None:
    feeds = [flag, f"feed-%(batch_id)d.{suffix}", "-s", f"FEED_EXPORT_BATCH_ITEM_COUNT={BATCH}"]
    _plain(site, tmp_path / "plain", *feeds)
    runs = _interrupted(site, tmp_path / "resumed", seed, *feeds)
    plain = once_per_page([item for items in _batch_files(tmp_path / "plain", suffix).values()
                   for item in items])
    resumed = _batch_files(tmp_path / "resumed", suffix)
    # The uninterrupted run's files for these items: feed-1.. with BATCH items each but the last.
    full, rest = divmod(len(plain), BATCH)
    expected = {f"feed-{k}.{suffix}": BATCH for k in range(1, full + 1)}
    if rest:
        expected[f"feed-{full + 1}.{suffix}"] = rest
    assert {name: len(items) for name, items in resumed.items()} == expected
    everything = by_page([item for items in resumed.values() for item in items])
    assert everything == plain
    assert [i["page"] for i in everything] == [str(p) for p in range(N_PAGES)]
    assert "cannot make crash-safe" not in "".join(r.log for r in runs)


def test_a_resumed_dash_capital_o_batch_feed_keeps_the_files_of_earlier_runs(
    tmp_path: Path, site: Site
) -> None:
    """scrapy/scrapy#5153: a stopped crawl run again overwrote its first run's batch files."""
    feeds = ["-O", "feed-%(batch_id)d.jl", "-s", f"FEED_EXPORT_BATCH_ITEM_COUNT={BATCH}"]
    first = _crawl(site, tmp_path, *feeds, interrupt=sigint, after=40)
    assert first.returncode == 0, first.log[-3000:]
    written = _batch_files(tmp_path, "jl")
    assert written
    final = _crawl(site, tmp_path, *feeds)
    assert final.returncode == 0, final.log[-3000:]
    after = _batch_files(tmp_path, "jl")
    for name, items in written.items():
        if len(items) == BATCH:  # full files are never touched again
            assert after[name] == items, name
        else:  # the last one is continued
            assert after[name][:len(items)] == items, name
    assert sorted(int(i["page"]) for f in after.values() for i in f) == list(range(N_PAGES))


@pytest.mark.parametrize("seed", [9, 10])
def test_a_csv_feed_resumed_after_the_item_gained_a_field_keeps_its_columns(
    tmp_path: Path, site: Site, seed: int
) -> None:
    _plain(site, tmp_path / "plain", "-O", "items.csv")
    rng = random.Random(seed)
    resumed = tmp_path / "resumed"
    killed = _crawl(site, resumed, "-O", "items.csv", interrupt=sigkill,
                    after=rng.randint(20, N_PAGES // 2))
    assert killed.returncode == -9
    final = _crawl(site, resumed, "-O", "items.csv", "-a", "extra=1")
    assert final.returncode == 0, final.log[-3000:]
    header, rows = _csv_rows(resumed / "items.csv")
    plain_header, plain_rows = _csv_rows(tmp_path / "plain" / "items.csv")
    assert header == plain_header == ["page", "title", "url"]
    assert rows == once_per_page(plain_rows)
    warnings = [line for line in final.log.splitlines() if "CSV header" in line]
    assert len(warnings) == 1, final.log[-3000:]
    assert "['extra']" in warnings[0]


def test_a_feed_that_cannot_be_opened_stops_the_crawl_and_records_nothing_done(
    tmp_path: Path, site: Site
) -> None:
    # The feed's directory is a file, so opening the feed fails (for any user, as a
    # read-only file or directory does): the crawl must not go on recording requests done
    # whose items are written nowhere (a completed stage would then never write them).
    _plain(site, tmp_path / "plain", "-o", "items.jl")
    blocked = tmp_path / "resumed" / "out"
    blocked.parent.mkdir()
    blocked.write_text("a file where the feed's directory should be\n")
    first = _crawl(site, tmp_path / "resumed", "-o", "out/items.jl")
    errors = [line for line in first.log.splitlines() if "cannot be written" in line]
    assert len(errors) == 1, first.log[-3000:]
    assert "out/items.jl" in errors[0]
    assert "Traceback" not in first.log
    assert "Completed" not in first.log
    state = read_stage(FileStore(tmp_path / "resumed" / "checkpoints"), "site").state
    assert state.status is not Status.COMPLETED
    blocked.unlink()
    final = _crawl(site, tmp_path / "resumed", "-o", "out/items.jl")
    assert final.returncode == 0, final.log[-3000:]
    assert (by_page(jsonlines_items(tmp_path / "resumed" / "out" / "items.jl"))
            == once_per_page(jsonlines_items(tmp_path / "plain" / "items.jl")))


def test_a_csv_feed_resumed_with_other_feed_export_fields_keeps_its_columns(
    tmp_path: Path, site: Site
) -> None:
    # FEED_EXPORT_FIELDS gained a column between runs: the rows written by the resumed run
    # must still fit the header the first run wrote, not be shifted under it.
    fields = ["-s", "FEED_EXPORT_FIELDS=page,title"]
    _plain(site, tmp_path / "plain", "-O", "items.csv", *fields)
    resumed = tmp_path / "resumed"
    killed = _crawl(site, resumed, "-O", "items.csv", *fields, interrupt=sigkill, after=30)
    assert killed.returncode == -9
    final = _crawl(site, resumed, "-O", "items.csv", "-a", "extra=1",
                   "-s", "FEED_EXPORT_FIELDS=page,extra,title")
    assert final.returncode == 0, final.log[-3000:]
    header, rows = _csv_rows(resumed / "items.csv")
    plain_header, plain_rows = _csv_rows(tmp_path / "plain" / "items.csv")
    assert header == plain_header == ["page", "title"]
    assert rows == once_per_page(plain_rows)
    warnings = [line for line in final.log.splitlines()
                if "FEED_EXPORT_FIELDS names" in line]
    assert len(warnings) == 1, final.log[-3000:]
    assert "['page', 'title']" in warnings[0]


def test_a_crashed_stage_with_a_postprocessed_feed_does_not_end_completed(tmp_path: Path) -> None:
    # A gzip feed is written as plain Scrapy writes it: a kill loses what its compressor
    # held. Once a run of the stage crashed, the end says so instead of 'Completed.'; a stage
    # that never crashed completes as before.
    feeds = {str(tmp_path / "items.jl.gz"): {
        "format": "jsonlines", "postprocessing": ["scrapy.extensions.postprocessing.GzipPlugin"]}}

    def cmd(stage: str) -> list[str]:
        return [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}",
                "-s", f"FEEDS={json.dumps(feeds)}", "-s", f"CHECKPOINT_STAGE_NAME={stage}",
                "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]

    site = Site(60)
    try:
        first = run(site, cmd("gz"), tmp_path, cwd=PROJECT, interrupt=sigkill,
                    interrupt_after_hits=15)
        assert first.returncode != 0, first.log[-3000:]
        again = run(site, cmd("gz"), tmp_path, cwd=PROJECT)
        clean = run(site, cmd("gz-clean"), tmp_path, cwd=PROJECT)
    finally:
        site.close()
    assert again.returncode == 0, again.log[-3000:]
    assert "[gz] Completed" not in again.log, again.log[-3000:]
    assert ("[gz] Every unit is done, but this stage was interrupted by 1 crash(es) and its "
            f"feed(s) '{tmp_path / 'items.jl.gz'}' (postprocessing)") in again.log, again.log[-3000:]
    assert "[gz-clean] Completed." in clean.log, clean.log[-3000:]
