"""Who may do what: the bearer token, loopback-only open reads, and the rate limit of
failed attempts."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

logger = logging.getLogger("scrapy_checkpoint.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Paths anyone may fetch: the page and its files hold no stage data (they read the API).
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/", "/favicon.ico"})
#: Host names a browser uses for a loopback server. Open reads are only for requests
#: addressed to one of them: a page of another site whose name was made to resolve to
#: 127.0.0.1 (DNS rebinding) sends its own name, and needs the token.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _loopback_host(request: web.Request) -> bool:
    host = request.host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class FailureLimiter:
    """Failed authentication attempts per client: more than ``limit`` within ``window``
    seconds blocks the client until its oldest failure is ``window`` seconds old."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.setdefault(client, deque())
        while failures and now - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it is not blocked."""
        failures = self._recent(client)
        if len(failures) < self.limit:
            return None
        return max(1.0, self.window - (self._clock() - failures[0]))

    def fail(self, client: str) -> None:
        """Count a failed attempt of ``client``. Clients whose failures all left the window
        are forgotten once many are kept (a scan from many addresses does not grow it)."""
        self._recent(client)
        self._failures.setdefault(client, deque()).append(self._clock())
        if len(self._failures) > 1024:
            for other in list(self._failures):
                self._recent(other)


class Guard:
    """Decides each request: reads are open on a loopback server without a token (to
    requests addressed to a loopback name, see :data:`LOOPBACK_NAMES`), else they need the
    token; actions
    (POST) always need it, and are refused outright without one.

    ``token`` None: no token configured. Responses: 401 (missing or wrong token, with
    ``WWW-Authenticate: Bearer``), 403 (an action on a server without a token), 429 (too
    many failed attempts from this client, with ``Retry-After`` in seconds).
    """

    def __init__(self, token: str | None, open_reads: bool, limiter: FailureLimiter) -> None:
        self._token = token.encode() if token else None
        self.open_reads = open_reads
        self.limiter = limiter

    def _authorized(self, request: web.Request) -> bool | None:
        """True: the right token; False: a wrong one; None: none given."""
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            return None
        if scheme.lower() != "bearer" or self._token is None:
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    def check(self, request: web.Request) -> web.Response | None:
        """None if ``request`` may go on, else the response that refuses it."""
        path = request.path
        action = request.method not in ("GET", "HEAD", "OPTIONS")
        if not action and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
            return None
        if not action and self.open_reads and _loopback_host(request):
            return None
        if action and self._token is None:
            return _error(403, "Actions need a token: start the server with --token-file FILE "
                               "or SCRAPY_CHECKPOINT_TOKEN set.")
        client = request.remote or "?"
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return _error(429, "Too many failed authentication attempts; try again later.",
                          headers={"Retry-After": str(int(wait + 0.999))})
        ok = self._authorized(request)
        if ok:
            return None
        if ok is False:
            self.limiter.fail(client)
            logger.warning("Failed authentication from %s for %s %s.", client, request.method,
                           path)
        return _error(401, "Send 'Authorization: Bearer <token>' with the server's token.",
                      headers={"WWW-Authenticate": 'Bearer realm="scrapy-checkpoint"'})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware that applies :meth:`check`."""
        refused = self.check(request)
        if refused is not None:
            return refused
        return await handler(request)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


__all__ = ["FailureLimiter", "Guard"]
