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

from .extension import UNIT_META, CheckpointExtension


class CheckpointMiddleware:
    def __init__(self, extension: CheckpointExtension) -> None:
        self.ext = extension

    @classmethod
    def from_crawler(cls, crawler: Any) -> CheckpointMiddleware:
        ext = CheckpointExtension.of(crawler) or CheckpointExtension.from_crawler(crawler)
        if ext is None:
            raise NotConfigured
        return cls(ext)

    def process_request(self, request: Request) -> None:
        ext = self.ext
        code = request.meta.get(UNIT_META)
        if code is None or not ext.active or ext.cp is None:
            return
        if code in ext.cp.live.done:
            ext.stats.inc_value("checkpoint/duplicates_dropped")
            raise IgnoreRequest("already done in the checkpoint")
        if ext.should_drop(request):
            raise IgnoreRequest("done, or in flight in another worker of the shared stage")

    def process_response(self, request: Request, response: Response) -> Response:
        if response.status >= 500:
            self.ext.note_failure(request)
        return response

    def process_exception(self, request: Request, exception: Exception) -> None:
        if isinstance(exception, IgnoreRequest):
            self.ext.note_ignored(request)
        else:
            self.ext.note_failure(request)
