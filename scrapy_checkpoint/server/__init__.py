"""The status server: ``scrapy-checkpoint serve`` (needs the ``server`` extra: aiohttp,
prometheus-client).

A JSON API under ``/api/v1`` (described by ``/api/v1/openapi.json``), Prometheus
``/metrics``, a live page at ``/`` and two actions (reset, requeue), over the stages of
one store. It reads stages only through the read-only views (never a stage's lock) and
imports nothing from Scrapy. docs/server.md documents every endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from ..manager import UnifiedCheckpointManager
from .app import StatusServer
from .config import TOKEN_ENV, ServerConfig, is_loopback, load_token

logger = logging.getLogger("scrapy_checkpoint.server")


async def serve(manager: UnifiedCheckpointManager, config: ServerConfig,
                ready: Callable[[list[str]], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM. ``ready(urls)`` is called once listening, with the
    base URL of each bound address (the real port when ``config.port`` is 0).

    Raises :class:`~scrapy_checkpoint.errors.ConfigError` (before listening) for a
    non-loopback host without a token, OSError if the address cannot be bound.
    """
    config.check_bind()
    runner = web.AppRunner(StatusServer(manager, config).app(), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        urls = []
        for address in runner.addresses:
            host, port = address[0], address[1]
            urls.append(f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/")
        if ready is not None:
            ready(urls)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(manager: UnifiedCheckpointManager, config: ServerConfig) -> None:
    """:func:`serve` in a new event loop, printing where it listens on stdout."""
    def ready(urls: list[str]) -> None:
        print(f"Serving the stages of {manager.directory} on {', '.join(urls)} "
              f"(actions {'enabled' if config.token else 'disabled: no token'}; Ctrl-C to stop)",
              flush=True)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    asyncio.run(serve(manager, config, ready))


__all__ = ["TOKEN_ENV", "ServerConfig", "StatusServer", "is_loopback", "load_token", "run",
           "serve"]
