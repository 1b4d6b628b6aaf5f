"""Sessions survive a crash: the cookie jars are part of the checkpoint.

A members-only site: POST /login sets a session cookie (and redirects), every
other page answers 302 to the login page without it. The crawl logs in from
``start()`` and is killed with SIGKILL part-way; the next run must still scrape
every members-only page, exactly once, as the uninterrupted crawl does.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from scrapy_checkpoint import FileStore, read_stage

from .conftest import PYTHON, python_env
from .site import serve

N_ITEMS = 40

SPIDER = '''
import scrapy


class MembersSpider(scrapy.Spider):
    name = "members"
    custom_settings = {
        "ADDONS": {"scrapy_checkpoint.Addon": 100},
        "CONCURRENT_REQUESTS": 4,
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
    }

    async def start(self):
        meta = {"checkpoint_ignore": True} if self.ignore_login == "1" else {}
        yield scrapy.FormRequest(self.base + "/login", formdata={"user": "demo"},
                                 callback=self.after_login, dont_filter=True, meta=meta)

    def after_login(self, response):
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, self.parse_item)

    def parse_item(self, response):
        if response.css("title::text").get() != "item":
            yield {"n": None, "url": response.url}
        else:
            yield {"n": int(response.css("h1::text").get())}
'''


class MembersSite:
    """The members-only site; holds its answers once ``hold_after`` item pages were asked for."""

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.item_hits = 0
        self.hold_after: int | None = None
        self.gate = threading.Event()
        self.gate.set()
        self._cond = threading.Condition()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _logged_in(self) -> bool:
                cookies = dict(part.strip().partition("=")[::2]
                               for part in self.headers.get("Cookie", "").split(";") if part)
                return cookies.get("session") in site.sessions

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                token = secrets.token_hex(8)
                site.sessions.add(token)
                self._answer(302, headers={"Location": "/list", "Set-Cookie": f"session={token}; Path=/"})

            def do_GET(self) -> None:
                if self.path.startswith("/item/"):
                    with site._cond:
                        site.item_hits += 1
                        site._cond.notify_all()
                        hold = site.hold_after is not None and site.item_hits > site.hold_after
                    if hold:
                        site.gate.wait(600)  # (a guard: the test sets it again)
                if not self._logged_in():
                    if self.path.startswith("/login"):
                        self._answer(200, b"<title>login</title>")
                    else:
                        self._answer(302, headers={"Location": "/login?next=" + self.path})
                    return
                if self.path == "/list":
                    links = "".join(f'<a href="/item/{n}">i</a>' for n in range(N_ITEMS))
                    self._answer(200, f"<title>list</title>{links}".encode())
                elif self.path.startswith("/item/"):
                    n = self.path.rsplit("/", 1)[1]
                    self._answer(200, f"<title>item</title><h1>{n}</h1>".encode())
                else:
                    self._answer(404)

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve(Handler)

    def wait_for_item_hits(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.item_hits >= n, 600)  # (a guard against a hang)

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def members_site():  # type: ignore[no-untyped-def]
    site = MembersSite()
    yield site
    site.close()


def _crawl(site: MembersSite, tmp_path: Path, ignore_login: bool, *, kill_after: int | None = None
           ) -> subprocess.CompletedProcess[bytes] | int:
    spider = tmp_path / "members.py"
    spider.write_text(SPIDER)
    cmd = [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
           "-a", f"ignore_login={int(ignore_login)}", "-o", str(tmp_path / "items.jl"),
           "-s", f"CHECKPOINT_DIR={tmp_path / 'checkpoints'}"]
    with (tmp_path / "crawl.log").open("ab") as log:
        if kill_after is None:
            return subprocess.run(cmd, cwd=tmp_path, env=python_env(), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=1200, check=False)
        site.gate.clear()
        site.hold_after = kill_after
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=python_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        assert site.wait_for_item_hits(kill_after + 1), "the crawl never reached the members pages"
        # The crawl is held: kill it once the stage has committed the session and the list
        # page (and a journaled login) as done, as a crash after those commits would.
        assert _wait_for_commit(tmp_path / "checkpoints", 1 if ignore_login else 2, proc)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=600)
        site.hold_after = None
        site.gate.set()
        return code


def _wait_for_commit(directory: Path, done: int, proc: subprocess.Popen[bytes]) -> bool:
    """Poll the stage (read-only) until its cookies and ``done`` requests are committed."""
    deadline = time.monotonic() + 600  # a guard against a hang
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            view = read_stage(FileStore(directory), "members")
        except FileNotFoundError:
            view = None
        if (view is not None and view.attached.get("cookies")
                and view.state.progress.processed_items >= done):
            return True
        time.sleep(0.05)  # polls the stage for the condition
    return False


@pytest.mark.parametrize("ignore_login", [False, True], ids=["login-journaled", "login-ignored"])
def test_a_killed_crawl_behind_a_login_resumes_with_its_session(
    tmp_path: Path, members_site: MembersSite, ignore_login: bool
) -> None:
    assert _crawl(members_site, tmp_path, ignore_login, kill_after=N_ITEMS // 3) == -signal.SIGKILL
    sessions_before = len(members_site.sessions)
    done = _crawl(members_site, tmp_path, ignore_login)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0
    items = [json.loads(line) for line in (tmp_path / "items.jl").read_text().splitlines()]
    scraped = [item["n"] for item in items]
    assert None not in scraped, "a members-only page was answered with the login page"
    assert sorted(scraped) == list(range(N_ITEMS)), "every members-only page exactly once"
    log = (tmp_path / "crawl.log").read_text()
    assert "cookie(s) of earlier runs restored before the resumed requests" in log
    if not ignore_login:  # the journaled login is done: the resumed run used the saved session
        assert len(members_site.sessions) == sessions_before
