from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import scrapy


def uri_params(params: dict[str, Any], spider: scrapy.Spider) -> dict[str, Any]:
    """A ``FEED_URI_PARAMS`` function: ``%(tag)s`` is the spider's ``tag`` and ``-b``."""
    return {**params, "tag": f"{getattr(spider, 'tag', 'x')}-b"}


class SiteSpider(scrapy.Spider):
    """Follows every link of the test site; one item per page.

    ``-a base=http://127.0.0.1:PORT``; ``-a fail_in_callback=7`` raises in page 7's callback;
    ``-a unserializable=1`` puts an object that JSON cannot hold in the children's meta
    (``-a unserializable=engine``: and schedules them with ``engine.crawl()`` instead of
    yielding them);
    ``-a lambdas=1`` follows links with a lambda as callback (not a spider method);
    ``-a extra=1`` gives every item one more field, ``extra``, after ``page``;
    ``-a priority=1`` gives each link the priority ``page * 7 % 10`` of the page it leads to;
    ``-a starts=N`` makes start() yield pages 0 to N-1 (instead of page 0 only);
    ``-a probe=PATH`` writes, at the first callback of the process, the crawl's
    ``checkpoint/rebuilt`` and ``checkpoint/resumed`` stats to PATH (JSON).
    """

    name = "site"

    def __init__(self, base: str = "", fail_in_callback: str = "", unserializable: str = "",
                 extra: str = "", priority: str = "", probe: str = "", starts: str = "",
                 lambdas: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lambdas = bool(lambdas)
        self.starts = int(starts or 1)
        self.priority = bool(priority)
        self.probe = probe
        self.extra = bool(extra)
        self.unserializable = bool(unserializable)
        self.by_engine = unserializable == "engine"
        self.base = base
        self.fail_in_callback = {int(x) for x in fail_in_callback.split(",") if x}

    async def start(self) -> AsyncIterator[Any]:
        # Without dont_filter: with it, plain Scrapy fetches page 0 twice (every page links
        # to it, and the dupefilter never sees a dont_filter request); so does the add-on.
        for page in range(self.starts):
            yield scrapy.Request(f"{self.base}/p/{page}", callback=self.parse)

    def parse(self, response: scrapy.http.Response) -> Iterator[Any]:
        page = int(response.css("h1::text").get().split()[1])
        if self.probe:
            stats = self.crawler.stats
            Path(self.probe).write_text(json.dumps({
                "rebuilt": stats.get_value("checkpoint/rebuilt", 0),
                "resumed": stats.get_value("checkpoint/resumed", 0)}))
            self.probe = ""
        if page in self.fail_in_callback:
            raise ValueError(f"callback failed on page {page}")
        item: dict[str, Any] = {"page": page}
        if self.extra:
            item["extra"] = f"x{page}"
        yield {**item, "title": response.css("title::text").get(), "url": response.url}
        meta = {"handle": object()} if self.unserializable else {}
        for href in response.css("a::attr(href)").getall():
            target = int(href.rsplit("/", 1)[1])
            priority = target * 7 % 10 if self.priority else 0
            callback = (lambda r: self.parse(r)) if self.lambdas else self.parse  # noqa: PLW0108 (the point)
            request = response.follow(href, callback=callback, meta=meta, priority=priority)
            if self.by_engine:
                self.crawler.engine.crawl(request)
            else:
                yield request
