"""Cookie jars kept with the checkpoint: a resumed crawl sends the session it had.

Scrapy's CookiesMiddleware keeps one jar per ``meta["cookiejar"]`` key, in
memory only: after a crash the resumed requests would go out without the
session a login set, and members-only pages would answer with the login page.
:class:`CookieJars` gives the middleware jars that note when they change (a
response's ``Set-Cookie``, redirects included, or a request's own cookies),
writes every jar to the journal as JSON (never pickle) in the first commit
after a change, and puts them back into the middleware before the first
resumed request is scheduled. The default jar (no ``cookiejar`` key) and jars
keyed by a string or an integer are kept; any other key is not (one warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from http.cookiejar import Cookie
from typing import Any

from scrapy import Request
from scrapy.downloadermiddlewares.cookies import CookiesMiddleware
from scrapy.http import Response
from scrapy.http.cookies import CookieJar

logger = logging.getLogger("scrapy_checkpoint")

#: The name the jars are kept under in the stage's attached data.
ATTACHED_NAME = "cookies"

#: Non-standard cookie attributes kept (http.cookiejar keeps these in a private dict).
_NONSTANDARD = ("HttpOnly", "SameSite", "Priority", "Partitioned")

#: The attributes of an http.cookiejar.Cookie kept, in the constructor's order.
_FIELDS = ("version", "name", "value", "port", "port_specified", "domain", "domain_specified",
           "domain_initial_dot", "path", "path_specified", "secure", "expires", "discard",
           "comment", "comment_url")


def cookie_to_json(cookie: Cookie) -> dict[str, Any]:
    """A cookie as a JSON object (its attributes, and its non-standard ones as ``rest``)."""
    data = {name: getattr(cookie, name) for name in _FIELDS}
    data["rest"] = {name: cookie.get_nonstandard_attr(name) for name in _NONSTANDARD
                    if cookie.has_nonstandard_attr(name)}
    data["rfc2109"] = cookie.rfc2109
    return data


def cookie_from_json(data: dict[str, Any]) -> Cookie:
    """Inverse of :func:`cookie_to_json`. Raises KeyError/TypeError on a malformed object."""
    fields = {name: data[name] for name in _FIELDS}
    return Cookie(**fields, rest=dict(data.get("rest") or {}),
                  rfc2109=bool(data.get("rfc2109", False)))


def find_cookies_middleware(crawler: Any) -> CookiesMiddleware | None:
    """The crawl's CookiesMiddleware (None: cookies are disabled or the engine is not built)."""
    engine = getattr(crawler, "engine", None)
    manager = getattr(getattr(engine, "downloader", None), "middleware", None)
    for mw in getattr(manager, "middlewares", ()):
        if isinstance(mw, CookiesMiddleware):
            return mw
    return None


class TrackedJar(CookieJar):
    """A Scrapy cookie jar that calls ``on_change()`` whenever cookies may have changed."""

    def __init__(self, on_change: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_change = on_change

    def extract_cookies(self, response: Response, request: Request) -> None:
        """Scrapy's, noting a change when the response sets cookies."""
        super().extract_cookies(response, request)
        if b"Set-Cookie" in response.headers:
            self._on_change()

    def set_cookie_if_ok(self, cookie: Cookie, request: Request) -> None:
        """Scrapy's (a request's own cookies), noting a change."""
        super().set_cookie_if_ok(cookie, request)
        self._on_change()

    def set_cookie(self, cookie: Cookie) -> None:
        """Scrapy's, noting a change."""
        super().set_cookie(cookie)
        self._on_change()


class CookieJars:
    """The cookie jars of one crawl, kept with its checkpoint (see the module docstring).

    ``saved`` is what the stage holds (``[[key, [cookie, ...]], ...]``), from the
    checkpoint's attached data; ``warn_once(kind, message)`` logs a warning once.
    """

    def __init__(self, saved: Any, warn_once: Any) -> None:
        self._saved = saved
        self._warn_once = warn_once
        self._middleware: CookiesMiddleware | None = None
        self._dirty = False

    def attach(self, crawler: Any) -> int:
        """Give the crawl's CookiesMiddleware tracked jars and restore the saved ones into
        it, before any resumed request is scheduled. Returns how many cookies were restored."""
        self._middleware = mw = find_cookies_middleware(crawler)
        if mw is None:
            return 0
        factory = partial(TrackedJar, self._mark)
        for key, jar in list(mw.jars.items()):  # jars made before now (none in a plain crawl)
            tracked = mw.jars[key] = factory()
            for cookie in jar:
                tracked.set_cookie(cookie)
        mw.jars.default_factory = factory
        if not self._saved:
            return 0
        restored = 0
        try:
            for key, cookies in self._saved:
                jar = mw.jars[key]
                for data in cookies:
                    jar.set_cookie(cookie_from_json(data))
                    restored += 1
        except (KeyError, TypeError, ValueError) as exc:
            self._warn_once("cookies", f"The saved cookie jars could not be read ({exc!r}); the "
                                       f"resumed requests go out without them.")
        self._dirty = False  # what was just restored is what the stage holds
        return restored

    def _mark(self) -> None:
        self._dirty = True

    def changed(self) -> list[list[Any]] | None:
        """Every jar as JSON if one changed since the last call, else None (called before
        each journal commit)."""
        if not self._dirty or self._middleware is None:
            return None
        self._dirty = False
        jars = []
        for key, jar in self._middleware.jars.items():
            if key is not None and (not isinstance(key, (str, int)) or isinstance(key, bool)):
                self._warn_once(f"cookiejar:{type(key).__name__}",
                                f"Cookie jar key {key!r} is not a string or an integer: its "
                                f"cookies are not kept with the checkpoint.")
                continue
            jars.append([key, [cookie_to_json(cookie) for cookie in jar]])
        return jars
