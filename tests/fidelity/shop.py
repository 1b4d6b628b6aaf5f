"""A small shop site for the fidelity suite, served on 127.0.0.1 at a free port.

Public part: ``/`` links to the categories; ``/category/C?page=P`` lists
:data:`PER_PAGE` products a page with a "next" link and links to the other
categories; ``/product/N`` links to its reviews page, its category and two
related products; ``/product/N/reviews`` gives its rating. ``/sitemap_index.xml``
names ``/sitemap-products.xml`` and ``/sitemap-categories.xml``.

Members part: ``GET /login`` answers a form with a CSRF token (also set as the
``csrftoken`` cookie); ``POST /login`` with that token, a known user and the
password ``secret`` sets a ``sessionid`` cookie and redirects to ``/account``.
``/account`` and ``/account/orders?page=P`` list the orders, ``/account/order/N``
shows one, with a total that depends on who is logged in; without a valid
session each of them redirects to ``/login?next=PATH``. Sessions last until
:meth:`ShopSite.forget`.

``/old/N`` redirects (301) to ``/product/N``, ``/refresh/N`` sends on to it by a meta
refresh, ``/flaky/N`` answers 503 to every other request of that path and the product
page to the rest.

The server counts every request. ``hold_at(n)`` makes the n-th request in all
wait until :meth:`release`, so a crawl can be killed while it is surely still
running, after a chosen number of requests.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from ..site import serve

CATEGORIES = ("books", "games", "music", "tools")
PRODUCTS_PER_CATEGORY = 9
PER_PAGE = 4
N_PRODUCTS = len(CATEGORIES) * PRODUCTS_PER_CATEGORY
USERS = ("alice", "bob", "carol")
PASSWORD = "secret"
N_ORDERS = 24
ORDERS_PER_PAGE = 5


def _pages(n: int, per_page: int) -> int:
    return (n + per_page - 1) // per_page


def product_category(n: int) -> int:
    return n // PRODUCTS_PER_CATEGORY


def product_price(n: int) -> str:
    return f"{5 + (n * 37) % 90}.{(n * 13) % 100:02d}"


def order_total(n: int, user: str) -> int:
    return 10 * n + USERS.index(user) + 1


def _html(title: str, body: str) -> bytes:
    return f"<html><head><title>{title}</title></head><body>{body}</body></html>".encode()


def _links(hrefs: list[tuple[str, str]]) -> str:
    return "".join(f'<a href="{href}">{text}</a> ' for href, text in hrefs)


def home() -> bytes:
    return _html("Shop", "<h1>Shop</h1>" + _links(
        [(f"/category/{c}", name) for c, name in enumerate(CATEGORIES)]))


def category(c: int, page: int) -> bytes | None:
    pages = _pages(PRODUCTS_PER_CATEGORY, PER_PAGE)
    if not (0 <= c < len(CATEGORIES) and 1 <= page <= pages):
        return None
    first = c * PRODUCTS_PER_CATEGORY + (page - 1) * PER_PAGE
    last = min(first + PER_PAGE, (c + 1) * PRODUCTS_PER_CATEGORY)
    products = "".join(
        f'<li class="product"><a href="/product/{n}">Product {n}</a></li>' for n in range(first, last))
    nav = _links([(f"/category/{o}", CATEGORIES[o]) for o in range(len(CATEGORIES)) if o != c])
    if page < pages:
        nav += f'<a class="next" href="/category/{c}?page={page + 1}">next</a>'
    return _html(f"{CATEGORIES[c]} {page}",
                 f'<h1 data-category="{c}">{CATEGORIES[c]}</h1><ul>{products}</ul><nav>{nav}</nav>')


def product(n: int) -> bytes | None:
    if not 0 <= n < N_PRODUCTS:
        return None
    c = product_category(n)
    related = _links([(f"/product/{(n + d) % N_PRODUCTS}", "related") for d in (1, 7)])
    return _html(f"Product {n}", (
        f'<h1 data-id="{n}">Product {n}</h1><span class="price">{product_price(n)}</span>'
        f'<a class="category" href="/category/{c}">{CATEGORIES[c]}</a>'
        f'<a class="reviews" href="/product/{n}/reviews">reviews</a><div class="related">{related}</div>'))


def reviews(n: int) -> bytes | None:
    if not 0 <= n < N_PRODUCTS:
        return None
    return _html(f"Reviews of {n}", (
        f'<span class="rating">{1 + n % 5}</span><span class="count">{(n * 3) % 11}</span>'))


def _xml(body: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'.encode()


def sitemap(base: str, path: str) -> bytes | None:
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    if path == "/sitemap_index.xml":
        maps = "".join(f"<sitemap><loc>{base}/{name}</loc></sitemap>"
                       for name in ("sitemap-products.xml", "sitemap-categories.xml"))
        return _xml(f"<sitemapindex {ns}>{maps}</sitemapindex>")
    if path == "/sitemap-products.xml":
        locs = [f"{base}/product/{n}" for n in range(N_PRODUCTS)]
    elif path == "/sitemap-categories.xml":
        locs = [f"{base}/category/{c}" for c in range(len(CATEGORIES))]
    else:
        return None
    urls = "".join(f"<url><loc>{loc}</loc><lastmod>2026-01-0{1 + i % 9}</lastmod></url>"
                   for i, loc in enumerate(locs))
    return _xml(f"<urlset {ns}>{urls}</urlset>")


def login_form(token: str, next_path: str) -> bytes:
    return _html("Log in", (
        '<form id="login" method="post" action="/login">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
        f'<input type="hidden" name="next" value="{next_path}">'
        '<input type="text" name="username"><input type="password" name="password">'
        '<input type="submit" value="Log in"></form>'))


def orders_page(user: str, page: int) -> bytes | None:
    pages = _pages(N_ORDERS, ORDERS_PER_PAGE)
    if not 1 <= page <= pages:
        return None
    first = (page - 1) * ORDERS_PER_PAGE
    orders = "".join(f'<li><a class="order" href="/account/order/{n}">order {n}</a></li>'
                     for n in range(first, min(first + ORDERS_PER_PAGE, N_ORDERS)))
    nav = f'<a class="next" href="/account/orders?page={page + 1}">next</a>' if page < pages else ""
    return _html(f"Orders {page}", f'<p class="user">{user}</p><ul>{orders}</ul>{nav}')


def order(user: str, n: int) -> bytes | None:
    if not 0 <= n < N_ORDERS:
        return None
    return _html(f"Order {n}", (
        f'<p class="user">{user}</p><h1 data-order="{n}">Order {n}</h1>'
        f'<span class="total">{order_total(n, user)}</span>'))


class ShopSite:
    def __init__(self) -> None:
        #: Requests answered or being answered, by path with query.
        self.hits: Counter[str] = Counter()
        self.total_hits = 0
        self._hold_at: int | None = None
        self._gate = threading.Event()
        self._gate.set()
        self._cond = threading.Condition()
        self.csrf_tokens: set[str] = set()
        self.sessions: dict[str, str] = {}  # session id -> user
        self.logins: Counter[str] = Counter()  # successful logins per user
        site = self

        class Handler(BaseHTTPRequestHandler):
            def _count(self) -> None:
                with site._cond:
                    site.hits[self.path] += 1
                    site.total_hits += 1
                    hold = site._hold_at is not None and site.total_hits == site._hold_at
                    site._cond.notify_all()
                if hold:
                    site._gate.wait(600)

            def _answer(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] = (),
                        content_type: str = "text/html") -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # the crawler may have been killed meanwhile

            def _cookies(self) -> dict[str, str]:
                return dict(part.strip().partition("=")[::2]
                            for part in self.headers.get("Cookie", "").split(";") if part.strip())

            def do_POST(self) -> None:
                self._count()
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                field = {k: v[0] for k, v in form.items()}
                token = field.get("csrfmiddlewaretoken", "")
                if (urlsplit(self.path).path != "/login" or token not in site.csrf_tokens
                        or self._cookies().get("csrftoken") != token):
                    self._answer(403, _html("Forbidden", "CSRF verification failed"))
                    return
                user = field.get("username", "")
                if user not in USERS or field.get("password") != PASSWORD:
                    self._answer(200, login_form(token, field.get("next", "/account")))
                    return
                session = secrets.token_hex(8)
                with site._cond:
                    site.sessions[session] = user
                    site.logins[user] += 1
                next_path = field.get("next") or "/account"
                self._answer(302, headers=[("Location", next_path),
                                           ("Set-Cookie", f"sessionid={session}; Path=/; HttpOnly")])

            def do_GET(self) -> None:
                self._count()
                url = urlsplit(self.path)
                path, query = url.path, parse_qs(url.query)
                page = int(query.get("page", ["1"])[0]) if query.get("page", ["1"])[0].isdigit() else 0
                parts = path.strip("/").split("/")
                body: bytes | None = None
                content_type = "text/html"
                if path == "/":
                    body = home()
                elif len(parts) == 2 and parts[0] in ("old", "refresh", "flaky") and parts[1].isdigit():
                    if parts[0] == "old":  # moved for good: a redirect to the product
                        self._answer(301, headers=[("Location", f"/product/{parts[1]}")])
                        return
                    if parts[0] == "refresh":  # a page that sends the browser on by meta refresh
                        body = _html("Moved", '<meta http-equiv="refresh" content="0; '
                                     f'url=/product/{parts[1]}">')
                    elif site.hits[self.path] % 2:  # every other request of the path fails
                        self._answer(503, _html("Busy", "try again"))
                        return
                    else:
                        body = product(int(parts[1]))
                elif path.endswith(".xml"):
                    body, content_type = sitemap(site.url, path), "application/xml"
                elif len(parts) == 2 and parts[0] == "category" and parts[1].isdigit():
                    body = category(int(parts[1]), page)
                elif parts[0] == "product" and len(parts) in (2, 3) and parts[1].isdigit():
                    if len(parts) == 2:
                        body = product(int(parts[1]))
                    elif parts[2] == "reviews":
                        body = reviews(int(parts[1]))
                elif path == "/login":
                    token = secrets.token_hex(8)
                    with site._cond:
                        site.csrf_tokens.add(token)
                    self._answer(200, login_form(token, query.get("next", ["/account"])[0]),
                                 [("Set-Cookie", f"csrftoken={token}; Path=/")])
                    return
                elif parts[0] == "account":
                    user = site.sessions.get(self._cookies().get("sessionid", ""))
                    if user is None:
                        self._answer(302, headers=[("Location", f"/login?next={path}")])
                        return
                    if path in ("/account", "/account/orders"):
                        body = orders_page(user, page)
                    elif len(parts) == 3 and parts[1] == "order" and parts[2].isdigit():
                        body = order(user, int(parts[2]))
                if body is None:
                    self._answer(404, _html("Not found", "not found"))
                else:
                    self._answer(200, body, content_type=content_type)

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve(Handler)

    def hold_at(self, total: int) -> None:
        """Make the request that brings :attr:`total_hits` to ``total`` wait for :meth:`release`."""
        with self._cond:
            self._gate.clear()
            self._hold_at = total

    def requests(self) -> Counter[str]:
        """A copy of :attr:`hits`: the requests received so far, by path and query."""
        with self._cond:
            return Counter(self.hits)

    def release(self) -> None:
        with self._cond:
            self._hold_at = None
            self._gate.set()

    def wait_for(self, total: int, timeout: float) -> bool:
        """Block until ``total`` requests were received in all (False after ``timeout`` s)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.total_hits >= total, timeout)

    def forget(self) -> None:
        """Forget every session and CSRF token, as a restarted server or sessions that timed
        out while the crawl was stopped."""
        with self._cond:
            self.sessions.clear()
            self.csrf_tokens.clear()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
