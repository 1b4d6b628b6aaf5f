"""No value from the store names a file: a journal entry for an output this run's
configuration does not name is left alone (not cut, not closed, not written), and said.

A real ``scrapy crawl`` killed with SIGKILL, then a journal entry planted in its stage for
a file outside the crawl's outputs (as a damaged or crafted store could hold), then the
same command run again to the end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.crawl.outputs import configured_outputs
from scrapy_checkpoint.journal.groups import DOC_CLOSING, DOC_ITEMS, DOC_OPENING

from .conftest import PYTHON
from .crawl import PROJECT, Outputs, crawl, run, sigkill
from .site import Site

PRECIOUS = b"not the crawl's: 60 bytes of someone else's data, untouched\n"


def test_a_recorded_output_the_run_does_not_name_is_never_cut_or_written(tmp_path: Path) -> None:
    site = Site(60)
    try:
        (tmp_path / "run").mkdir()
        outputs = Outputs(tmp_path / "run")
        first = crawl(site, outputs, interrupt=sigkill, interrupt_after_hits=15)
        assert first.returncode != 0
        victims = {name: tmp_path / name for name in ("victim.txt", "victim.json")}
        for path in victims.values():
            path.write_bytes(PRECIOUS)
        cp = EnhancedCheckpoint(outputs.location, "site", log_every=0)
        cp.start()
        cp.record_output(str(victims["victim.txt"]), 0, 3)  # "cut it to 3 bytes"
        cp.record_output(str(victims["victim.json"]), 0, 3,  # "close the document there"
                         {DOC_ITEMS: 1, DOC_OPENING: "[", DOC_CLOSING: "\n]"})
        cp.save(force=True)
        cp.close()
        again = crawl(site, outputs)
    finally:
        site.close()
    assert again.returncode == 0, again.log[-3000:]
    for path in victims.values():
        assert path.read_bytes() == PRECIOUS
    assert "which this run's FEEDS and CHECKPOINT_OUTPUT do not name: it is left as it is" \
        in again.log
    assert sorted(outputs.jsonlines("items.jl")) == list(range(60))


def test_configured_outputs_are_the_feeds_and_the_own_output() -> None:
    from scrapy.settings import Settings

    settings = Settings({"FEEDS": {
        "out/items.jl": {"format": "jsonlines"},
        "file:///data/%(name)s/batch-%(batch_id)03d.json": {"format": "json"},
        "s3://bucket/items.jl": {"format": "jsonlines"},
    }})
    configured = configured_outputs(settings, "books", "/var/own.jl")
    assert configured(str(Path("out/items.jl").resolve()))
    assert configured("/data/books/batch-001.json")
    assert configured("/data/books/batch-17.json")
    assert configured("/var/own.jl")
    assert not configured("/data/other/batch-001.json")  # another spider's name
    assert not configured("/data/books/sub/batch-001.json")  # a parameter is one component
    assert not configured("/etc/passwd")
    assert not configured("/bucket/items.jl")


def test_a_feed_named_by_spider_attributes_and_uri_params_is_cut_back_on_resume(
    tmp_path: Path,
) -> None:
    # FEEDS URIs made of the spider's attributes (-a outdir=...) and of what FEED_URI_PARAMS
    # adds: the feed is the run's own, so a resume cuts it back to its committed length
    # (the line appended here stands for what a killed run wrote after its last commit).
    site = Site(60)
    feeds = {"%(outdir)s/items-%(tag)s.jl": {"format": "jsonlines"}}
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}",
           "-a", f"outdir={tmp_path}", "-a", "tag=a", "-s", f"FEEDS={json.dumps(feeds)}",
           "-s", "FEED_URI_PARAMS=crawl_project.spiders.site.uri_params",
           "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    feed = tmp_path / "items-a-b.jl"
    try:
        first = run(site, cmd, tmp_path, cwd=PROJECT, interrupt=sigkill, interrupt_after_hits=15)
        assert first.returncode != 0, first.log[-3000:]
        with feed.open("a") as f:
            f.write('{"page": 999}\n')
        again = run(site, cmd, tmp_path, cwd=PROJECT)
    finally:
        site.close()
    assert again.returncode == 0, again.log[-3000:]
    assert "do not name" not in again.log, again.log[-3000:]
    # The killed run may itself have written lines after its last commit: at least the
    # appended one is removed.
    cut = re.search(r"removing (\d+) line\(s\) written after the last commit", again.log)
    assert cut is not None, again.log[-3000:]
    assert int(cut.group(1)) >= 1
    assert sorted(json.loads(line)["page"] for line in feed.read_text().splitlines()) == list(range(60))


def tag_params(params: dict[str, Any], spider: Any) -> dict[str, Any]:
    return {**params, "tag": f"{spider.tag}-b"}


def test_configured_outputs_give_uri_parameters_the_values_scrapy_gives_them() -> None:
    from scrapy.settings import Settings

    class Spider:
        name = "books"
        outdir = "/data/out"
        tag = "a"

    settings = Settings({"FEEDS": {
        "%(outdir)s/%(name)s.jl": {"format": "jsonlines"},
        "%(outdir)s/batch-%(batch_id)03d-%(tag)s.json": {"format": "json"},
    }, "FEED_URI_PARAMS": f"{__name__}.tag_params"})
    configured = configured_outputs(settings, "books", None, Spider())
    assert configured("/data/out/books.jl")
    assert configured("/data/out/batch-001-a-b.json")
    assert configured("/data/out/batch-17-a-b.json")
    assert not configured("/data/out/batch-001-c-b.json")
    assert not configured("/data/out/sub/batch-001-a-b.json")
    assert not configured("/data/other/books.jl")
