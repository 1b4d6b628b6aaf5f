"""A batch feed starting its next file in the middle of a request's items. The file of a
new batch is recorded in the journal, in a group of its own made durable before its first
byte is written, while a finished request's items are handed to the outputs, before its
done record: a crawl stopped there (here: the next batch file cannot be opened) and run
again redoes the request and has its items once, as plain Scrapy has them, and counts them
once.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

from .conftest import PYTHON, python_env
from .site import Site

SPIDER = '''
import scrapy


class RotationSpider(scrapy.Spider):
    name = "rotation"
    custom_settings = {
        "FEEDS": {
            "all.jl": {"format": "jsonlines"},
            "batches/b-%(batch_id)d.jl": {"format": "jsonlines", "batch_item_count": 3,
                                          "overwrite": True},
        },
        "CONCURRENT_REQUESTS": 1,
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
    }

    async def start(self):
        yield scrapy.Request(self.base + "/p/0")

    def parse(self, response):
        yield {"page": int(response.url.rsplit("/", 1)[1])}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href)
'''

ADDON = ["-s", 'ADDONS={"scrapy_checkpoint.Addon": 100}', "-s", "CHECKPOINT_DIR=checkpoints"]


def _crawl(site: Site, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (directory / "rotation.py").write_text(SPIDER)
    return subprocess.run([PYTHON, "-m", "scrapy", "runspider", "rotation.py", "-a",
                           f"base={site.url}", *extra], cwd=directory, env=python_env(),
                          capture_output=True, text=True, timeout=1200, check=False)


def _pages(path: Path) -> Counter[int]:
    return Counter(json.loads(line)["page"] for line in path.read_text().splitlines())


def test_a_stop_when_a_batch_file_starts_keeps_each_item_once(tmp_path: Path) -> None:
    site = Site(30, delay=0.002)
    try:
        plain, out = tmp_path / "plain", tmp_path / "cp"
        plain.mkdir()
        out.mkdir()
        assert _crawl(site, plain).returncode == 0
        (out / "batches" / "b-4.jl").mkdir(parents=True)  # the 4th batch file cannot be opened
        stopped = _crawl(site, out, *ADDON)
        assert "Cannot write" in stopped.stderr, stopped.stderr[-3000:]
        (out / "batches" / "b-4.jl").rmdir()
        final = _crawl(site, out, *ADDON)
    finally:
        site.close()
    assert final.returncode == 0, final.stderr[-3000:]
    assert "[rotation] Completed." in final.stderr, final.stderr[-3000:]
    expected = _pages(plain / "all.jl")
    assert _pages(out / "all.jl") == expected
    # The 10th request (whose items start the 4th file) is not done, nor counted: the
    # stopped run committed at most the 9 requests before it (none, if it stopped before
    # its first commit: the new file's record is forced to disk alone).
    earlier = re.search(r"earlier runs scraped (\d+) item\(s\)", final.stderr)
    assert int(earlier.group(1) if earlier else 0) <= 9, final.stderr[-3000:]
    batches = sorted(out.glob("batches/b-*.jl"), key=lambda p: int(p.stem[2:]))
    assert [len(_pages(p)) for p in batches] == [3] * 10
    assert sum((_pages(p) for p in batches), Counter()) == expected
