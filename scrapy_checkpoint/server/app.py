"""The aiohttp application: the JSON API, the actions, ``/metrics`` and the live page."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..documents import (
    Views,
    list_document,
    read_views,
    report_document,
    shared_stage_document,
    stage_document,
)
from ..errors import (
    CheckpointLockedError,
    CheckpointWriteError,
    ConfigError,
    CorruptCheckpointError,
    UnreadableCheckpointError,
)
from ..manager import UnifiedCheckpointManager
from ..stores.base import check_stage_name
from .auth import FailureLimiter, Guard
from .config import ServerConfig
from .health import health_document
from .history import History
from .openapi import API, openapi_document
from .prometheus import StageCollector

logger = logging.getLogger("scrapy_checkpoint.server")
T = TypeVar("T")
_dumps = functools.partial(json.dumps, default=str)
#: The page loads only its own files and talks only to this server, and is never framed.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _package_version() -> str:
    try:
        return version("scrapy-checkpoint")
    except PackageNotFoundError:
        return "0"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class StatusServer:
    """Serves the stages of ``manager``'s store (see docs/server.md).

    Every store access runs on one worker thread, in turn (the event loop never waits
    for the store); reads use the read-only views and never take a stage's lock. Only
    the two actions write: reset (:meth:`UnifiedCheckpointManager.reset`) and requeue
    (:meth:`UnifiedCheckpointManager.requeue_failed`), each under the stage's lock.
    """

    def __init__(self, manager: UnifiedCheckpointManager, config: ServerConfig) -> None:
        self.manager = manager
        self.config = config
        self.history = History(config.history_size)
        # Reads are open only on loopback without a token: with one, every read needs it (a
        # reverse proxy in front passes Host: 127.0.0.1 by default, nginx's $proxy_host).
        self.guard = Guard(config.token, config.loopback and not config.token,
                           FailureLimiter(config.max_auth_failures, config.auth_window))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-store")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StageCollector(self.read_views, str(manager.directory)))

    # -- plumbing -------------------------------------------------------------------------

    def read_views(self) -> Views:
        """Every stage's view (blocking: call it on the store thread)."""
        return read_views(self.manager)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def app(self) -> web.Application:
        """The aiohttp application, its routes and its sampling task."""
        app = web.Application(middlewares=[self.guard.middleware])
        app.add_routes([
            web.get("/", self.page),
            web.static("/static", str(resources.files(__package__) / "static")),
            web.get("/metrics", self.metrics),
            web.get(f"{API}/openapi.json", self.openapi),
            web.get(f"{API}/stages", self.stages),
            web.get(f"{API}/stages/{{stage}}", self.stage),
            web.get(f"{API}/stages/{{stage}}/history", self.stage_history),
            web.get(f"{API}/history", self.all_history),
            web.get(f"{API}/report", self.report),
            web.get(f"{API}/health", self.health),
            web.post(f"{API}/stages/{{stage}}/reset", self.reset),
            web.post(f"{API}/stages/{{stage}}/requeue", self.requeue),
        ])
        app.cleanup_ctx.append(self._sampling)
        return app

    async def _sampling(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._sample_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.history.record(await self._run(self.read_views))
            except Exception as exc:  # the store is down: sample again later
                logger.warning("Sampling the stages failed: %s", exc)
            await asyncio.sleep(self.config.sample_interval)

    # -- the page and the documents -------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """``GET /``: the live page (static HTML that polls the API)."""
        html = (resources.files(__package__) / "static" / "index.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)

    async def openapi(self, request: web.Request) -> web.Response:
        """``GET /api/v1/openapi.json``."""
        return web.json_response(openapi_document(_package_version()))

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format, read from the store now."""
        body = await self._run(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stages(self, request: web.Request) -> web.Response:
        """``GET /api/v1/stages``: as ``list --json``."""
        def build() -> dict[str, Any]:
            return list_document(self.manager, self.read_views(), self.manager.shared_stages())
        return web.json_response(await self._run(build), dumps=_dumps)

    async def stage(self, request: web.Request) -> web.Response:
        """``GET /api/v1/stages/{stage}``: as ``show STAGE --json`` (400, 404, 422)."""
        name = request.match_info["stage"]

        def build() -> tuple[int, dict[str, Any]]:
            workers = self.manager.shared_stages().get(name)
            if workers is not None and name not in self.manager.stages():
                return 200, shared_stage_document(self.manager, name, workers)
            try:
                return 200, stage_document(self.manager.read(name))
            except ConfigError as exc:
                return 400, {"error": str(exc)}
            except FileNotFoundError:
                return 404, {"error": f"No checkpoint for stage {name!r} in "
                                      f"{self.manager.directory}."}
            except (CorruptCheckpointError, ValueError) as exc:
                return 422, {"stage": name, "error": str(exc)}

        status, doc = await self._run(build)
        return web.json_response(doc, status=status, dumps=_dumps)

    async def stage_history(self, request: web.Request) -> web.Response:
        """``GET /api/v1/stages/{stage}/history``: the samples taken of the stage."""
        name = request.match_info["stage"]
        return web.json_response({"stage": name, "interval_seconds": self.config.sample_interval,
                                  "samples": self.history.of(name)})

    async def all_history(self, request: web.Request) -> web.Response:
        """``GET /api/v1/history``: every stage's samples."""
        return web.json_response({"interval_seconds": self.config.sample_interval,
                                  "stages": self.history.all()})

    async def report(self, request: web.Request) -> web.Response:
        """``GET /api/v1/report``: as ``report --json``."""
        def build() -> dict[str, Any]:
            return report_document(self.manager, self.read_views())
        return web.json_response(await self._run(build), dumps=_dumps)

    async def health(self, request: web.Request) -> web.Response:
        """``GET /api/v1/health``: 200 (ok, degraded) or 503 (down)."""
        def build() -> dict[str, Any]:
            try:
                views = self.read_views()
            except Exception:  # the store is down: the store part says why
                views = []
            return health_document(self.manager.store, views, self.config.stuck_after)
        doc = await self._run(build)
        return web.json_response(doc, status=503 if doc["status"] == "down" else 200,
                                 dumps=_dumps)

    # -- actions --------------------------------------------------------------------------

    async def reset(self, request: web.Request) -> web.Response:
        """``POST /api/v1/stages/{stage}/reset``: 200, or 400, 404, 409 (a live owner)."""
        name = request.match_info["stage"]

        def act() -> web.Response:
            manager = self.manager
            try:
                check_stage_name(name)
            except ConfigError as exc:
                return _error(400, str(exc))
            known = manager.stages()
            if name not in known and name in manager.shared_stages():
                try:
                    removed = manager.reset_shared(name)
                except CheckpointLockedError as exc:
                    return _error(409, f"{exc} Stop every worker of the stage first.")
                return web.json_response({"stage": name, "reset": True, "sub_stages": removed})
            if name not in known:
                return _error(404, f"No checkpoint for stage {name!r} in {manager.directory}.")
            owner = manager.store.live_owner(name)
            if owner is not None:
                return _error(409, f"Stage {name!r} is in use by pid {owner.pid} on {owner.host}; "
                                   f"not reset. Stop that process first.")
            try:
                manager.reset(name)
            except ConfigError as exc:
                return _error(400, str(exc))
            except CheckpointLockedError as exc:
                return _error(409, f"{exc} Not reset.")
            except CheckpointWriteError as exc:
                return _error(409, f"{exc} Not reset.")
            logger.info("Stage %s reset (request from %s).", name, request.remote)
            return web.json_response({"stage": name, "reset": True})

        return await self._run(act)

    async def requeue(self, request: web.Request) -> web.Response:
        """``POST /api/v1/stages/{stage}/requeue``: ``{"stage", "requeued"}``, or 400, 404,
        409 (a live owner), 422."""
        name = request.match_info["stage"]

        def act() -> web.Response:
            try:
                n = self.manager.requeue_failed(name)
            except ConfigError as exc:
                return _error(400, str(exc))
            except FileNotFoundError:
                return _error(404, f"No checkpoint for stage {name!r} in {self.manager.directory}.")
            except CheckpointLockedError as exc:
                return _error(409, f"{exc} Not requeued: stop that process first.")
            except CorruptCheckpointError as exc:  # an unreadable file is no damage: it says so
                damaged = ("" if isinstance(exc, UnreadableCheckpointError)
                           else f"Stage {name!r} is damaged: ")
                return _error(422, f"{damaged}{exc}")
            logger.info("Stage %s: %d failed unit(s) requeued (request from %s).", name, n,
                        request.remote)
            return web.json_response({"stage": name, "requeued": n})

        return await self._run(act)


__all__ = ["StatusServer"]
