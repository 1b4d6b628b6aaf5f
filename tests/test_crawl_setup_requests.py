"""Sessions that expire: setup requests run again, and resumed requests wait for them.

A members-only site whose login takes a CSRF token (GET /login, then POST /login with
it); both are marked ``meta["checkpoint_setup"]``. The server forgets every session
(and its CSRF secret) between runs, as a server restarted or a session timed out
while the crawl was stopped; other variants end each session after a number of
pages, and refuse a second login until they forget. Pages asked for without a valid session answer 302 to
``/login?next=<page>``, whose body is the login form: scraping it would write a wrong
item. Every crawl is a real ``scrapy runspider`` process, killed with SIGKILL.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from scrapy_checkpoint import FileStore, Status, read_stage

from .conftest import PYTHON, python_env
from .site import serve

N_ITEMS = 40

SPIDER = '''
import scrapy


class MembersSpider(scrapy.Spider):
    name = "members"
    custom_settings = {
        "CONCURRENT_REQUESTS": 4,
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
    }

    no_login = "0"

    async def start(self):
        if self.no_login != "1":
            yield scrapy.Request(self.base + "/login", callback=self.login, dont_filter=True,
                                 meta={"checkpoint_setup": True})

    def login(self, response):
        yield scrapy.FormRequest.from_response(response, formdata={"user": "demo"},
                                               callback=self.after_login, dont_filter=True,
                                               meta={"checkpoint_setup": True})

    def after_login(self, response):
        links = response.css("a::attr(href)").getall()
        # chain: only the first page; each page links to the next (what is pending after a
        # kill is known from the journal only, the list does not give it again)
        for href in links[:1] if self.chain == "1" else links:
            yield response.follow(href, self.parse_item)

    def parse_item(self, response):
        if response.css("title::text").get() != "item":
            yield {"n": None, "url": response.url}
            return
        yield {"n": int(response.css("h1::text").get()), "secret": response.css("p::text").get()}
        if self.chain == "1":
            yield from response.follow_all(css="a.next", callback=self.parse_item)
'''


@dataclass
class Hit:
    method: str
    path: str
    logged_in: bool


class ExpiringSite:
    """The members-only site (see the module docstring).

    ``forget()`` drops every session and the CSRF secret; with ``pages_per_session`` a
    session ends after that many member pages; with ``one_login`` a second login is
    refused (403) until ``forget()``. Item answers are held once ``hold_after``
    item pages were asked for, until ``release()``.
    """

    def __init__(self, pages_per_session: int | None = None, one_login: bool = False) -> None:
        self.sessions: dict[str, int] = {}
        self.one_login = one_login
        self.logins = 0
        self.csrf = secrets.token_hex(8)
        self.pages_per_session = pages_per_session
        self.log: list[Hit] = []
        self.item_hits = 0
        self.hold_after: int | None = None
        self._gate = threading.Event()
        self._gate.set()
        self._cond = threading.Condition()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes = b"",
                        headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _session(self) -> str | None:
                cookies = dict(part.strip().partition("=")[::2]
                               for part in self.headers.get("Cookie", "").split(";") if part)
                token = cookies.get("session")
                return token if token in site.sessions else None

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                with site._cond:
                    ok = form.get("csrf") == [site.csrf] and not (site.one_login and site.logins)
                    site.logins += ok
                    site.log.append(Hit("POST", self.path, ok))
                    token = secrets.token_hex(8)
                    if ok:
                        site.sessions[token] = 0
                if not ok:
                    self._answer(403, b"<title>bad token</title>")
                    return
                self._answer(302, headers={"Location": "/list",
                                           "Set-Cookie": f"session={token}; Path=/"})

            def do_GET(self) -> None:
                with site._cond:
                    token = self._session()
                    item = self.path.startswith("/item/")
                    site.log.append(Hit("GET", self.path, token is not None))
                    if token is not None and item:
                        site.sessions[token] += 1
                        limit = site.pages_per_session
                        if limit is not None and site.sessions[token] >= limit:
                            del site.sessions[token]  # this page is its last
                    if item:
                        site.item_hits += 1
                        site._cond.notify_all()
                    hold = item and site.hold_after is not None and site.item_hits > site.hold_after
                if hold:
                    site._gate.wait(600)  # (a guard: the test releases it)
                if self.path.startswith("/login"):
                    form = (f'<title>login</title><form action="/login" method="post">'
                            f'<input name="csrf" value="{site.csrf}"></form>')
                    self._answer(200, form.encode())
                elif token is None:
                    self._answer(302, headers={"Location": "/login?next=" + self.path})
                elif self.path == "/list":
                    links = "".join(f'<a href="/item/{n}">i</a>' for n in range(N_ITEMS))
                    self._answer(200, f"<title>list</title>{links}".encode())
                elif item:
                    n = int(self.path.rsplit("/", 1)[1])
                    after = f'<a class="next" href="/item/{n + 1}">next</a>' if n + 1 < N_ITEMS else ""
                    self._answer(200, f"<title>item</title><h1>{n}</h1><p>{n * n}</p>{after}".encode())
                else:
                    self._answer(404)

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve(Handler)

    def forget(self) -> None:
        """Every session expires, and the CSRF secret changes (a restarted server)."""
        with self._cond:
            self.sessions.clear()
            self.logins = 0
            self.csrf = secrets.token_hex(8)

    def hold(self, after: int) -> None:
        self._gate.clear()
        self.hold_after = after

    def release(self) -> None:
        self.hold_after = None
        self._gate.set()

    def wait_for_item_hits(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.item_hits >= n, 600)  # (a guard against a hang)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():  # type: ignore[no-untyped-def]
    s = ExpiringSite()
    yield s
    s.close()


@pytest.fixture
def short_sessions():  # type: ignore[no-untyped-def]
    s = ExpiringSite(pages_per_session=25)
    yield s
    s.close()


@pytest.fixture
def short_sessions_one_login():  # type: ignore[no-untyped-def]
    s = ExpiringSite(pages_per_session=25, one_login=True)
    yield s
    s.close()


def _cmd(site: ExpiringSite, directory: Path, *extra: str, plain: bool = False,
         chain: bool = False) -> list[str]:
    spider = directory / "members.py"
    spider.write_text(SPIDER)
    addons = "{}" if plain else '{"scrapy_checkpoint.Addon": 100}'
    return [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
            "-a", f"chain={int(chain)}",
            "-o", str(directory / "items.jl"), "-s", f"ADDONS={addons}",
            "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}", *extra]


def _run(site: ExpiringSite, directory: Path, *extra: str, plain: bool = False,
         chain: bool = False) -> str:
    """Run the crawl to its end; returns its log."""
    log_path = directory / f"run-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        done = subprocess.run(_cmd(site, directory, *extra, plain=plain, chain=chain),
                              cwd=directory,
                              env=python_env(),
                              stdout=log, stderr=subprocess.STDOUT, timeout=1200, check=False)
    text = log_path.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def _run_killed(site: ExpiringSite, directory: Path, after_items: int, *,
                chain: bool = False) -> None:
    """Run the crawl and SIGKILL it once ``after_items`` more item pages were asked for and
    the stage has committed some done requests (answers are held meanwhile)."""
    start = site.item_hits
    site.hold(start + after_items)
    with (directory / "killed.log").open("ab") as log:
        proc = subprocess.Popen(_cmd(site, directory, chain=chain), cwd=directory,
                                env=python_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            assert site.wait_for_item_hits(start + after_items + 1), "no member page reached"
            assert _wait_for_commit(directory / "checkpoints", proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=600)
            site.release()


def _wait_for_commit(directory: Path, proc: subprocess.Popen[bytes]) -> bool:
    """Poll the stage (read-only) until it has committed its setup URLs and a done request."""
    deadline = time.monotonic() + 600  # a guard against a hang
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            view = read_stage(FileStore(directory), "members")
        except FileNotFoundError:
            view = None
        if (view is not None and view.attached.get("setup")
                and view.state.progress.processed_items >= 1):
            return True
        time.sleep(0.05)  # polls the stage for the condition
    return False


def _items(directory: Path) -> list[dict[str, Any]]:
    data = (directory / "items.jl").read_text()
    assert data == "" or data.endswith("\n"), "the feed ends with a partial line"
    return sorted((json.loads(line) for line in data.splitlines()),
                  key=lambda item: (item["n"] is None, item["n"] or 0))


def _stats(log: str) -> str:
    return log[log.index("Dumping Scrapy stats"):]


@pytest.mark.parametrize(("chain", "seed"), [(False, 1), (True, 2)], ids=["list", "chain"])
def test_killed_at_random_moments_behind_an_expiring_login_every_page_is_scraped(
    tmp_path: Path, site: ExpiringSite, chain: bool, seed: int
) -> None:
    plain_dir, ckpt_dir = tmp_path / "plain", tmp_path / "checkpoint"
    plain_dir.mkdir()
    ckpt_dir.mkdir()
    _run(site, plain_dir, plain=True, chain=chain)
    expected = _items(plain_dir)
    assert expected == [{"n": n, "secret": str(n * n)} for n in range(N_ITEMS)]

    rng = random.Random(seed)
    for _ in range(2):
        site.forget()
        _run_killed(site, ckpt_dir, rng.randint(2, N_ITEMS // 3), chain=chain)
    site.forget()
    resumed_from = len(site.log)
    log = _run(site, ckpt_dir, chain=chain)

    assert _items(ckpt_dir) == expected, "every member page exactly once, as the plain run"
    assert "held until this run's setup requests" in log
    assert "[members] Completed." in log
    items_after = [hit for hit in site.log[resumed_from:] if hit.path.startswith("/item/")]
    assert items_after, "the last run had pages left to fetch"
    assert all(hit.logged_in for hit in items_after), "a resumed page went out without a session"


def test_resumed_requests_are_not_sent_before_the_setup_requests_finish(
    tmp_path: Path, site: ExpiringSite
) -> None:
    # One page at a time, each linking to the next: killed with page 10 in flight, which only
    # the journal knows (the list gives page 0 again, done).
    _run_killed(site, tmp_path, 10, chain=True)
    site.forget()
    first = len(site.log)
    log = _run(site, tmp_path, chain=True)
    run = site.log[first:]
    paths = [f"{hit.method} {hit.path}" for hit in run]
    # The setup chain: the token, the login with it, and its redirect to the list; then the
    # resumed page.
    assert paths[:4] == ["GET /login", "POST /login", "GET /list", "GET /item/10"], paths[:6]
    assert all(hit.logged_in for hit in run[1:]), paths
    assert not any(hit.path.startswith("/login?next=") for hit in run)
    assert ("1 resumed request(s) released after this run's setup requests finished (1 sent, "
            "0 already scheduled again by the crawl meanwhile)") in log
    assert [item["n"] for item in _items(tmp_path)] == list(range(N_ITEMS))


def test_a_run_that_issues_no_setup_request_releases_the_resumed_ones_when_idle(
    tmp_path: Path, site: ExpiringSite
) -> None:
    _run_killed(site, tmp_path, 10, chain=True)
    # The session is still valid; start() no longer logs in (it yields nothing at all).
    log = _run(site, tmp_path, "-a", "no_login=1", chain=True)
    assert log.count("but this run issued none: 1 resumed request(s) are sent without them") == 1
    assert "[members] Completed." in log
    assert [item["n"] for item in _items(tmp_path)] == list(range(N_ITEMS))


def test_a_session_that_expires_during_the_run_is_renewed_and_its_pages_sent_again(
    tmp_path: Path, short_sessions: ExpiringSite
) -> None:
    site = short_sessions  # a session ends after 25 member pages: the last 15 go to the login
    log = _run(site, tmp_path)
    items = _items(tmp_path)
    assert [item["n"] for item in items] == list(range(N_ITEMS)), "no login page scraped"
    assert items == [{"n": n, "secret": str(n * n)} for n in range(N_ITEMS)]
    assert sum(hit.method == "POST" and hit.logged_in for hit in site.log) == 2
    stats = _stats(log)
    assert "'checkpoint/session_expired_sent_again': 15," in stats
    assert "'checkpoint/setup_requests_again': 1," in stats
    assert "checkpoint/session_expired'" not in stats
    assert "[members] Completed." in log


def test_a_page_redirected_to_the_login_counts_as_failed_and_is_fetched_again(
    tmp_path: Path, short_sessions_one_login: ExpiringSite
) -> None:
    site = short_sessions_one_login  # 25 pages a session, and no second login in this run
    first = _run(site, tmp_path)
    items = _items(tmp_path)
    assert None not in [item["n"] for item in items], "a login page was scraped as an item"
    scraped = len(items)
    expired = N_ITEMS - scraped
    assert expired == 15
    stats = _stats(first)
    assert f"'checkpoint/session_expired': {expired}," in stats
    assert "'checkpoint/setup_requests_again': 1," in stats  # tried, refused
    assert f"{expired} request(s) were redirected to the login page" in first
    assert "Completed" not in first
    view = read_stage(FileStore(tmp_path / "checkpoints"), "members")
    assert view.state.status is Status.INCOMPLETE
    assert view.state.lost == {"session_expired": expired}
    assert view.state.progress.failed_items == expired
    assert view.state.progress.successful_items == scraped
    show = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir",
                           str(tmp_path / "checkpoints"), "show", "members"], env=python_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert show.returncode == 0, show.stderr
    assert "incomplete" in show.stdout
    assert f"{expired} unit(s) (session_expired: {expired}); the next run does them again" \
        in " ".join(show.stdout.split()), show.stdout

    site.forget()
    second_from = len(site.log)
    second = _run(site, tmp_path)
    assert f"{expired} request(s) redirected to the login page (a setup request's URL) in an " \
           f"earlier run are fetched again" in second
    assert "[members] Completed." in second
    assert _items(tmp_path) == [{"n": n, "secret": str(n * n)} for n in range(N_ITEMS)]
    fetched = [hit.path for hit in site.log[second_from:] if hit.path.startswith("/item/")]
    assert len(fetched) == expired, "only the pages redirected to the login are fetched again"
    view = read_stage(FileStore(tmp_path / "checkpoints"), "members")
    assert view.state.status is Status.COMPLETED
    assert view.state.lost == {}
    assert view.state.progress.failed_items == 0
