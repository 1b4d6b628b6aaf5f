"""The bundled demo site: a bookstore of 600 books served on 127.0.0.1.

Home -> 12 categories -> 5 listing pages each (10 books a page, "next" links)
-> book pages, with plenty of duplicate links (home, category, related books),
so the crawl must follow links several levels deep and skip what it has seen.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CATEGORIES = ["poetry", "history", "travel", "mystery", "science", "fantasy", "romance",
              "music", "art", "philosophy", "humor", "classics"]
PAGES_PER_CATEGORY = 5
BOOKS_PER_PAGE = 10
N_BOOKS = len(CATEGORIES) * PAGES_PER_CATEGORY * BOOKS_PER_PAGE


def _page(title: str, body: str) -> bytes:
    return (f"<html><head><title>{title}</title></head><body><a href='/'>Home</a>"
            f"<h1>{title}</h1>{body}</body></html>").encode()


def render(path: str) -> bytes | None:
    if path in ("/", "/index.html"):
        links = "".join(f"<li><a class='category' href='/category/{c}/1.html'>{c}</a></li>"
                        for c in CATEGORIES)
        return _page("Bookstore", f"<ul>{links}</ul>")
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "category" and parts[1] in CATEGORIES:
        c, n = CATEGORIES.index(parts[1]), int(parts[2].removesuffix(".html"))
        if not 1 <= n <= PAGES_PER_CATEGORY:
            return None
        first = (c * PAGES_PER_CATEGORY + n - 1) * BOOKS_PER_PAGE
        books = "".join(f"<li><a class='book' href='/book/{b}.html'>Book {b}</a></li>"
                        for b in range(first, first + BOOKS_PER_PAGE))
        nav = f"<a href='/category/{parts[1]}/1.html'>first</a>"
        if n < PAGES_PER_CATEGORY:
            nav += f" <a class='next' href='/category/{parts[1]}/{n + 1}.html'>next</a>"
        return _page(f"{parts[1].title()}, page {n}", f"<ul>{books}</ul>{nav}")
    if len(parts) == 2 and parts[0] == "book":
        b = int(parts[1].removesuffix(".html"))
        if not 0 <= b < N_BOOKS:
            return None
        category = CATEGORIES[b // (PAGES_PER_CATEGORY * BOOKS_PER_PAGE)]
        related = "".join(f"<a class='related' href='/book/{(b + k * 37) % N_BOOKS}.html'>related</a> "
                          for k in (1, 2, 3))
        return _page(f"Book {b}", f"<p class='price'>{(b * 7) % 50 + 5}.99</p>"
                     f"<a class='cat' href='/category/{category}/1.html'>{category}</a> {related}")
    return None


class BookstoreServer:
    """Serves the site in a background thread; counts hits per path."""

    def __init__(self, delay: float = 0.02) -> None:
        self.hits: dict[str, int] = {}
        self._watch: tuple[int, Callable[[], None]] | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] = server.hits.get(self.path, 0) + 1
                    watch = server._watch
                    if watch is not None and server._book_hits() >= watch[0]:
                        server._watch = None
                        watch[1]()
                time.sleep(delay)
                data = render(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the crawler may be killed mid-response
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def book_hits(self) -> int:
        with self._lock:
            return self._book_hits()

    def _book_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if p.startswith("/book/"))

    def when_books_fetched(self, count: int, action: Callable[[], None]) -> None:
        """Call ``action()`` (once) when ``count`` book pages have been requested."""
        with self._lock:
            self._watch = (count, action)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
