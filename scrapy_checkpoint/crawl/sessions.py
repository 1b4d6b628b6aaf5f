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

What is journaled is each jar as the done requests left it: the ``Set-Cookie``
of a unit's responses (its redirects' included) joins the journaled jars when
the unit is done, not when the response arrives. A unit in flight at a crash is
redone, and sends the cookies it sent the first time, not the ones its own
response set (``step=7`` read back by the page that set it). Cookies set with no
unit (setup requests, a request's own ``cookies``) join at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
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
    """A Scrapy cookie jar, the one of ``key``, that tells ``jars`` (a :class:`CookieJars`)
    what changed in it: the cookies a response sets (and deletes), or a cookie set
    otherwise."""

    def __init__(self, jars: CookieJars, key: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jars = jars
        self._key = key
        #: The cookies of the last response (the middleware sets them next).
        self._made: list[Cookie] = []

    def make_cookies(self, response: Response, request: Request) -> Sequence[Cookie]:
        """Scrapy's (CookiesMiddleware reads a response's cookies with it, and sets them with
        :meth:`set_cookie_if_ok`), noting the response."""
        self._made = list(super().make_cookies(response, request))
        if b"Set-Cookie" in response.headers:
            self._jars.extracted(self._key, response, request)
        return self._made

    def extract_cookies(self, response: Response, request: Request) -> None:
        """Scrapy's, noting the response."""
        super().extract_cookies(response, request)
        if b"Set-Cookie" in response.headers:
            self._jars.extracted(self._key, response, request)

    def set_cookie_if_ok(self, cookie: Cookie, request: Request) -> None:
        """Scrapy's (a request's own cookies, or a response's), noting a change."""
        super().set_cookie_if_ok(cookie, request)
        if not any(cookie is made for made in self._made):  # a response's: see extracted
            self._jars.journaled(self._key).set_cookie_if_ok(cookie, request)
            self._jars.mark()

    def set_cookie(self, cookie: Cookie) -> None:
        """Scrapy's, noting a change."""
        super().set_cookie(cookie)
        self._jars.journaled(self._key).set_cookie(cookie)
        self._jars.mark()


class _Jars(defaultdict[Any, CookieJar]):
    """The middleware's jars by key (a defaultdict, as Scrapy's): a missing one is made by
    ``factory(key)``."""

    def __init__(self, factory: Callable[[Any], CookieJar]) -> None:
        super().__init__(CookieJar)
        self.factory = factory

    def __missing__(self, key: Any) -> CookieJar:
        jar = self[key] = self.factory(key)
        return jar


class CookieJars:
    """The cookie jars of one crawl, kept with its checkpoint (see the module docstring).

    ``saved`` is what the stage holds (``[[key, [cookie, ...]], ...]``), from the
    checkpoint's attached data; ``warn_once(kind, message)`` logs a warning once;
    ``unit_of(request)`` is the unit a request works for in this run (None: none).
    :meth:`release` is called when a unit is done, :meth:`discard` when it leaves the run
    undone.
    """

    def __init__(self, saved: Any, warn_once: Any,
                 unit_of: Callable[[Request], int | None] = lambda request: None) -> None:
        self._saved = saved
        self._warn_once = warn_once
        self._unit_of = unit_of
        self._middleware: CookiesMiddleware | None = None
        self._dirty = False
        #: The jars as the done units left them: what is journaled.
        self._journaled: dict[Any, CookieJar] = {}
        #: Unit -> the cookies its responses set, until it is done: (jar key, response, request).
        self._pending: dict[int, list[tuple[Any, Response, Request]]] = {}

    def attach(self, crawler: Any) -> int:
        """Give the crawl's CookiesMiddleware tracked jars and restore the saved ones into
        it, before any resumed request is scheduled. Returns how many cookies were restored."""
        self._middleware = mw = find_cookies_middleware(crawler)
        if mw is None:
            return 0
        jars = _Jars(partial(TrackedJar, self))
        for key, jar in list(mw.jars.items()):  # jars made before now (none in a plain crawl)
            for cookie in jar:
                jars[key].set_cookie(cookie)
        mw.jars = jars
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

    def mark(self) -> None:
        self._dirty = True

    def journaled(self, key: Any) -> CookieJar:
        """The journaled jar of ``key`` (made empty if there is none)."""
        jar = self._journaled.get(key)
        if jar is None:
            jar = self._journaled[key] = CookieJar()
        return jar

    def extracted(self, key: Any, response: Response, request: Request) -> None:
        """``response`` to ``request`` sets (or deletes) cookies in the jar of ``key``: they
        join the journaled jar when the unit of ``request`` is done (at once if it has none)."""
        lite = Response(response.url, headers={"Set-Cookie": response.headers.getlist("Set-Cookie")})
        unit = self._unit_of(request)
        if unit is None:
            self._apply(key, lite, request)
        else:
            self._pending.setdefault(unit, []).append((key, lite, request))

    def release(self, unit: int) -> None:
        """``unit`` is done: the cookies its responses set join the journaled jars."""
        for key, response, request in self._pending.pop(unit, ()):
            self._apply(key, response, request)

    def _apply(self, key: Any, response: Response, request: Request) -> None:
        """Set the cookies of ``response`` in the journaled jar of ``key`` as the middleware
        set them in its own (expired ones deleted)."""
        jar = self.journaled(key)
        cookies = jar.make_cookies(response, request)
        process = getattr(self._middleware, "_process_cookies", None)
        if callable(process):
            process(cookies, jar=jar, request=request)
        else:
            for cookie in cookies:
                jar.set_cookie_if_ok(cookie, request)
        self._dirty = True

    def discard(self, unit: int) -> None:
        """``unit`` left this run without being done here: its cookies are not journaled."""
        self._pending.pop(unit, None)

    def changed(self) -> list[list[Any]] | None:
        """Every journaled jar as JSON if one changed since the last call, else None (called
        before each journal commit)."""
        if not self._dirty or self._middleware is None:
            return None
        self._dirty = False
        jars = []
        for key, jar in self._journaled.items():
            if key is not None and (not isinstance(key, (str, int)) or isinstance(key, bool)):
                self._warn_once(f"cookiejar:{type(key).__name__}",
                                f"Cookie jar key {key!r} is not a string or an integer: its "
                                f"cookies are not kept with the checkpoint.")
                continue
            jars.append([key, [cookie_to_json(cookie) for cookie in jar]])
        return jars
