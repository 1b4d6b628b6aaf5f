"""A request redone after a crash sends the cookies it sent the first time.

Each page of a chain sets ``step=<its number>`` (page 3 also sets ``tmp``, page 5
deletes it with ``Max-Age=0``, and a redirect on the way sets ``hop``) and shows the
cookies it received, so the items of a plain run are fixed: page i shows ``step=i-1``.
The crawl is killed while the response of the last page of chain ``a`` is in (its
cookies are in the middleware's jar) and its request is not done (it waits for a
``checkpoint_ignore`` request the site holds, which yields its item), after the commits of the last pages of
chain ``b`` (answered only then). The
resumed run redoes that page: it must show ``step`` of the page before it, as plain
Scrapy's does, not its own (the jars journaled are those the done requests left).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from scrapy_checkpoint import FileStore, read_stage

from .conftest import PYTHON, python_env
from .site import serve

PAGES = 8

SPIDER = '''
import scrapy


class JarsSpider(scrapy.Spider):
    name = "jars"
    custom_settings = {"REMOTE_CONTROL_ENABLED": False, "TELNETCONSOLE_ENABLED": False}

    async def start(self):
        for jar in ("a", "b"):
            yield scrapy.Request(f"{self.base}/j/{jar}/0", meta={"cookiejar": jar})

    def parse(self, response):
        jar, page = response.url.split("/")[-2:]
        item = {"jar": jar, "page": int(page), "cookies": response.css("p::text").get(""),
                "redirects": len(response.meta.get("redirect_urls", []))}
        if jar == "a" and int(page) == PAGES - 1:  # its item waits for /hold
            yield scrapy.Request(f"{self.base}/hold", callback=self.held, dont_filter=True,
                                 cb_kwargs={"item": item},
                                 meta={"cookiejar": jar, "checkpoint_ignore": True})
        else:
            yield item
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, meta={"cookiejar": response.meta["cookiejar"]})

    def held(self, response, item):
        yield item
'''.replace("PAGES", str(PAGES))


class ChainSite:
    """Chains of pages setting cookies; ``/hold`` waits for :attr:`gate` once it is cleared."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.split("/")
                headers: list[tuple[str, str]] = []
                if self.path == "/hold":
                    site.held.set()
                    site.gate.wait(600)
                    body = b""
                elif parts[1] == "r":  # /r/<jar>/<page>: 302 to /j/<jar>/<page>, setting hop
                    self.send_response(302)
                    self.send_header("Set-Cookie", f"hop={parts[3]}; Path=/")
                    self.send_header("Location", f"/j/{parts[2]}/{parts[3]}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                else:
                    jar, page = parts[2], int(parts[3])
                    if jar == "b" and page >= PAGES:
                        site.held.wait(600)  # b's last pages: after a's last page is parsed
                    received = sorted(c.strip() for c in self.headers.get("Cookie", "").split(";")
                                      if c.strip())
                    nxt = page + 1
                    link = (f'<a href="/{"r" if nxt % 3 == 0 else "j"}/{jar}/{nxt}">next</a>'
                            if nxt < (PAGES if jar == "a" else PAGES + 3) else "")
                    body = f"<html><body><p>{';'.join(received)}</p>{link}</body></html>".encode()
                    headers.append(("Set-Cookie", f"step={page}; Path=/"))
                    if page == 3:
                        headers.append(("Set-Cookie", "tmp=x; Path=/"))
                    if page == 5:
                        headers.append(("Set-Cookie", "tmp=; Path=/; Max-Age=0"))
                self.send_response(200)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve(Handler)

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def _command(site: ChainSite, directory: Path, *extra: str) -> list[str]:
    spider = directory / "jars.py"
    spider.write_text(SPIDER)
    return [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
            "-o", str(directory / "items.jl"), *extra]


def _items(directory: Path) -> list[str]:
    lines = (directory / "items.jl").read_text().splitlines()
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in lines)


def _wait_for_done(directory: Path, done: int, proc: subprocess.Popen[bytes]) -> bool:
    """Poll the stage (read-only) until at least ``done`` requests, and all but one of those
    it knows (redirects are requests of their own), are committed done."""
    deadline = time.monotonic() + 600  # a guard against a hang
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            view = read_stage(FileStore(directory), "jars")
        except FileNotFoundError:
            view = None
        progress = view.state.progress if view is not None else None
        if (progress is not None and progress.processed_items >= done
                and progress.processed_items >= progress.total_items - 1):
            return True
        time.sleep(0.05)  # polls the stage for the condition
    return False


def test_a_request_redone_after_a_kill_sends_the_cookies_it_sent_first(tmp_path: Path) -> None:
    site = ChainSite()
    try:
        plain_dir = tmp_path / "plain"
        plain_dir.mkdir()
        subprocess.run(_command(site, plain_dir), cwd=plain_dir, env=python_env(), check=True,
                       capture_output=True, timeout=1200)
        expected = _items(plain_dir)
        assert len(expected) == 2 * PAGES + 3
        assert json.dumps({"cookies": "hop=6;step=6", "jar": "a", "page": PAGES - 1,
                           "redirects": 0}, sort_keys=True) in expected

        out = tmp_path / "cp"
        out.mkdir()
        addon = ["-s", 'ADDONS={"scrapy_checkpoint.Addon": 100}',
                 "-s", f"CHECKPOINT_DIR={out / 'checkpoints'}", "-s", "CHECKPOINT_SAVE_EVERY=1"]
        site.gate.clear()
        site.held.clear()
        with (out / "crawl.log").open("ab") as log:
            proc = subprocess.Popen(_command(site, out, *addon), cwd=out, env=python_env(),
                                    stdout=log, stderr=subprocess.STDOUT)
            assert site.held.wait(600), "the crawl never reached the held request"
            # Every page but a's last is done; a's last is held by its /hold request.
            assert _wait_for_done(out / "checkpoints", 2 * PAGES + 2, proc)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=600) == -signal.SIGKILL
        site.gate.set()
        with (out / "final.log").open("wb") as log:
            final = subprocess.run(_command(site, out, *addon), cwd=out, env=python_env(),
                                   stdout=log, stderr=subprocess.STDOUT, timeout=1200, check=False)
    finally:
        site.close()
    log = (out / "final.log").read_text()
    assert final.returncode == 0, log[-3000:]
    assert "[jars] Completed." in log, log[-3000:]
    got = _items(out)
    assert got == expected, (f"missing {sorted(set(expected) - set(got))}, "
                             f"extra {sorted(set(got) - set(expected))}")
