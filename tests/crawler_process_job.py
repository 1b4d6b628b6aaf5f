"""Run the test project's spider from a script with CrawlerProcess (``python job.py BASE DIR``)."""

from __future__ import annotations

import sys

from scrapy.crawler import CrawlerProcess

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "crawl_project"))
from crawl_project.spiders.site import SiteSpider

base, directory = sys.argv[1], sys.argv[2]
process = CrawlerProcess({
    "ADDONS": {"scrapy_checkpoint.Addon": 100},
    "CHECKPOINT_DIR": f"{directory}/checkpoints",
    "FEEDS": {f"{directory}/items.jl": {"format": "jsonlines"}},
    "REMOTE_CONTROL_ENABLED": False,
    "TELNETCONSOLE_ENABLED": False,
    "CONCURRENT_REQUESTS": 8,
    "LOG_LEVEL": "INFO",
})
process.crawl(SiteSpider, base=base)
process.start()
