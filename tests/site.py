"""A local test site: a tree of pages several levels deep with duplicate links.

Page i links to its children 3i+1..3i+3 (``fanout`` of them), to its parent and to the home page,
so most links are duplicates. Every page yields one item. The server counts
hits per path; pages listed in ``fail`` answer 500, ``slow`` ones take a while.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietServer(ThreadingHTTPServer):
    """The threaded HTTP server of a test site: threads die with the test, and the resets
    of a killed crawler's connections are not printed (killing crawlers is the point)."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[QuietServer, str]:
    """Serve ``handler`` on a free port of 127.0.0.1 in a daemon thread: (server, base URL)."""
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def page_html(i: int, n: int, redirect_every: int = 0, fanout: int = 3) -> bytes:
    links = [c for c in range(fanout * i + 1, fanout * i + fanout + 1) if c < n]
    links += [0, max(0, (i - 1) // fanout)]
    body = "".join(
        f'<a href="/{"r" if redirect_every and c % redirect_every == 0 else "p"}/{c}">page {c}</a> '
        for c in links)
    return (f"<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>"
            f"{body}</body></html>").encode()


class Site:
    def __init__(self, n_pages: int, *, fail: frozenset[int] = frozenset(),
                 delay: float = 0.0, redirect_every: int = 0, flaky_every: int = 0,
                 fanout: int = 3) -> None:
        self.n = n_pages
        #: Page i links to its children fanout*i+1 .. fanout*i+fanout.
        self.fanout = fanout
        #: The pages fetched, in the order their requests arrived.
        self.order: list[int] = []
        self.fail = set(fail)
        #: Links to pages that are multiples of this go through /r/<i> -> 302 -> /p/<i>.
        self.redirect_every = redirect_every
        #: Pages that are multiples of this answer 503 to their first request.
        self.flaky_every = flaky_every
        self.delay = delay
        self.hits: Counter[str] = Counter()
        self.total_hits = 0
        #: Cleared: requests wait (hold a crawl in place); set: they are answered.
        self.gate = threading.Event()
        self.gate.set()
        #: Set: a request counted past this many hits in all clears :attr:`gate` (and waits),
        #: so a crawl goes no further until the test sets it again.
        self.hold_after: int | None = None
        self._lock = threading.Condition()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path
                with site._lock:
                    site.hits[path] += 1
                    site.total_hits += 1
                    if path.startswith("/p/") and path[3:].isdigit():
                        site.order.append(int(path[3:]))
                    if site.hold_after is not None and site.total_hits > site.hold_after:
                        site.gate.clear()
                    site._lock.notify_all()
                site.gate.wait(600)  # (a guard: the test sets it again)
                if site.delay:
                    time.sleep(site.delay)
                if path == "/":
                    path = "/p/0"
                if path.startswith("/r/"):
                    self.send_response(302)
                    self.send_header("Location", "/p/" + path[3:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not path.startswith("/p/") or not path[3:].isdigit() or int(path[3:]) >= site.n:
                    self.send_error(404)
                    return
                i = int(path[3:])
                if i in site.fail:
                    self.send_error(500)
                    return
                if site.flaky_every and i % site.flaky_every == 0 and site.hits[path] == 1:
                    self.send_error(503)
                    return
                data = page_html(i, site.n, site.redirect_every, site.fanout)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)  # the crawler may have been killed mid-response

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a killed client resets connections; that is the point of the tests

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def page_hits(self) -> Counter[int]:
        with self._lock:
            return Counter({int(p[3:]): c for p, c in self.hits.items() if p.startswith("/p/")})

    def wait_for_hits(self, total: int, timeout: float = 900, proc: Any = None) -> bool:
        """Block until the server has answered ``total`` requests in all: True, or False once
        ``proc`` (a Popen, if given) has ended first, or after ``timeout`` seconds (a guard
        against a hang, as large as a crawl on a busy machine may need)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.total_hits < total:
                left = deadline - time.monotonic()
                if left <= 0 or (proc is not None and proc.poll() is not None):
                    return False
                self._lock.wait(min(left, 0.5))  # (woken by each hit; checks proc between)
            return True

    def release(self) -> None:
        """Stop holding requests past :attr:`hold_after` and answer the held ones (under the
        lock a request clears the gate with: none clears it again after this)."""
        with self._lock:
            self.hold_after = None
            self.gate.set()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
