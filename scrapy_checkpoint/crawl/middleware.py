"""CheckpointMiddleware: the downloader middleware of scrapy-checkpoint.

At order 100 (close to the engine) it sees a request's final outcome, after
the retry and redirect middlewares: a download error or a 5xx response makes
the request done-with-failure (fetched again on resume with
``CHECKPOINT_RETRY_FAILED``). It also drops a request whose fingerprint was
finished while it waited in the queue, or that was given to another worker of a
shared stage. Enabled alone, it builds the extension.
"""

from __future__ import annotations

from typing import Any

from scrapy import Request
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import Response

from .extension import CheckpointExtension
from .frontier import Frontier
from .identity import UNIT_META


class CheckpointMiddleware:
    """Downloader middleware; ``frontier`` is the crawl's (None: the stage is not worked on)."""

    def __init__(self, extension: CheckpointExtension) -> None:
        self.ext = extension
        self.frontier: Frontier | None = extension.frontier

    @classmethod
    def from_crawler(cls, crawler: Any) -> CheckpointMiddleware:
        """The middleware of ``crawler``'s extension (built if needed); ``NotConfigured``
        when the plugin is disabled."""
        ext = CheckpointExtension.of(crawler) or CheckpointExtension.from_crawler(crawler)
        if ext is None:
            raise NotConfigured
        return cls(ext)

    def process_request(self, request: Request) -> None:
        """Drop (``IgnoreRequest``) a request whose unit is done or is another worker's."""
        frontier = self.frontier
        code = request.meta.get(UNIT_META)
        if code is None or frontier is None or not frontier.active:
            return
        if code in frontier.cp.live.done:
            frontier.stats.inc_value("checkpoint/duplicates_dropped")
            raise IgnoreRequest("already done in the checkpoint")
        if frontier.should_drop(request):
            raise IgnoreRequest("done, or in flight in another worker of the shared stage")

    def process_response(self, request: Request, response: Response) -> Response:
        """A 5xx response (after retries) makes the request's unit done-with-failure."""
        if response.status >= 500 and self.frontier is not None:
            self.frontier.note_failure(request)
        return response

    def process_exception(self, request: Request, exception: Exception) -> None:
        """A download error fails the unit; an ``IgnoreRequest`` marks it skipped."""
        frontier = self.frontier
        if frontier is None:
            return
        if isinstance(exception, IgnoreRequest):
            frontier.note_ignored(request)
        else:
            frontier.note_failure(request)
