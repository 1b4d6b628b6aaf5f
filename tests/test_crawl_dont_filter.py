"""Requests with ``dont_filter=True`` are crawled as plain Scrapy crawls them, and resumed
exactly after ``kill -9``.

The same board pages read by three users, each in their own cookie session (meta
``cookiejar``, ``dont_filter=True`` on the same URLs: scrapy/scrapy#1987, the Scrapy docs'
way to keep several sessions), each page twice per user. Plain Scrapy writes every
(user, page, visit) once; the add-on must write the same items, with no kill and after
kills at random moments, and never fetch again what the stage recorded done. The same
with the board requests kept out of the checkpoint (``checkpoint_ignore``): they belong
to the login that asked for them.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from scrapy import FormRequest, Request
from scrapy.utils.request import RequestFingerprinter

from scrapy_checkpoint import FileStore, Status, read_stage
from scrapy_checkpoint.crawl.identity import ROOT, derived_code

from .conftest import PYTHON, python_env
from .site import serve

USERS = ("ann", "bob", "cat")
PAGES, VISITS = 15, 2

SPIDER = f'''
import scrapy

USERS = {USERS!r}


class BoardSpider(scrapy.Spider):
    name = "board"
    custom_settings = {{
        "ADDONS": {{"scrapy_checkpoint.Addon": 100}},
        "CONCURRENT_REQUESTS": 4,
        "RETRY_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
    }}

    async def start(self):
        for jar, user in enumerate(USERS):
            yield scrapy.FormRequest(self.base + "/login", formdata={{"user": user}},
                                     callback=self.after_login, meta={{"cookiejar": jar}},
                                     dont_filter=True)

    def after_login(self, response):
        ignore = {{"checkpoint_ignore": True}} if getattr(self, "ignore", "0") == "1" else {{}}
        for visit in range({VISITS}):
            for n in range({PAGES}):
                yield scrapy.Request(f"{{self.base}}/board/{{n}}", callback=self.parse_board,
                                     dont_filter=True, cb_kwargs={{"visit": visit}},
                                     meta={{"cookiejar": response.meta["cookiejar"], **ignore}})

    def parse_board(self, response, visit):
        yield {{"user": response.css(".user::text").get(),
               "page": int(response.css("h1::text").get()), "visit": visit}}
'''

Item = tuple[str, int, int]  # user, page, visit


class BoardSite:
    """POST /login (user=NAME) starts a session; /board/N shows page N to the session's user
    (403 without one). Counts board hits per (user, page), and per User-Agent (each run of
    a test sends its own, so a killed run's last requests are never counted as the next's)."""

    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}
        self.hits: Counter[tuple[str, int]] = Counter()
        self.hits_by_agent: dict[str, Counter[tuple[str, int]]] = {}
        self.total = 0
        self._cond = threading.Condition()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: str, headers: dict[str, str] | None = None
                        ) -> None:
                data = body.encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                token = secrets.token_hex(8)
                with site._cond:
                    site.sessions[token] = parse_qs(body)["user"][0]
                self._answer(200, "<title>welcome</title>",
                             {"Set-Cookie": f"session={token}; Path=/"})

            def do_GET(self) -> None:
                cookies = dict(part.strip().partition("=")[::2]
                               for part in self.headers.get("Cookie", "").split(";") if part)
                with site._cond:
                    user = site.sessions.get(cookies.get("session", ""))
                if user is None or not self.path.startswith("/board/"):
                    self._answer(403, "<title>login</title>")
                    return
                page = int(self.path.rsplit("/", 1)[1])
                agent = self.headers.get("User-Agent", "")
                with site._cond:  # counted as it arrives
                    site.hits[user, page] += 1
                    site.hits_by_agent.setdefault(agent, Counter())[user, page] += 1
                    site.total += 1
                    site._cond.notify_all()
                time.sleep(0.01)
                self._answer(200, f"<title>board</title><h1>{page}</h1>"
                                  f"<span class=user>{user}</span>")

            def log_message(self, *args: object) -> None:
                pass

        self.server, self.url = serve(Handler)

    def snapshot(self) -> Counter[tuple[str, int]]:
        with self._cond:
            return Counter(self.hits)

    def hits_of(self, agent: str) -> Counter[tuple[str, int]]:
        with self._cond:
            return Counter(self.hits_by_agent.get(agent, ()))

    def wait_for_total(self, total: int, proc: subprocess.Popen[bytes]) -> bool:
        """Block until ``total`` board pages were served (False: the crawl ended first)."""
        with self._cond:
            while self.total < total:
                if proc.poll() is not None:
                    return False
                self._cond.wait(0.1)  # wakes on each hit; checks now and then that it runs
            return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def board() -> Iterator[BoardSite]:
    site = BoardSite()
    yield site
    site.close()


def _crawl(site: BoardSite, directory: Path, *extra: str, kill_after: int | None = None
           ) -> int:
    """Run the spider (its feed ``items.jl`` and its checkpoint in ``directory``) to the end,
    or SIGKILL it once ``kill_after`` more board pages were served; returns its exit code."""
    spider = directory / "board.py"
    spider.write_text(SPIDER)
    cmd = [PYTHON, "-m", "scrapy", "runspider", str(spider), "-a", f"base={site.url}",
           "-o", str(directory / "items.jl"), "-s", f"CHECKPOINT_DIR={directory / 'checkpoints'}",
           *extra]
    start = site.total
    with (directory / "crawl.log").open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=directory, env=python_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        if kill_after is not None and site.wait_for_total(start + kill_after, proc):
            proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=1200)


def _items(directory: Path) -> Counter[Item]:
    data = (directory / "items.jl").read_text()
    assert data == "" or data.endswith("\n"), "items.jl ends with a partial line"
    return Counter((d["user"], d["page"], d["visit"])
                   for d in map(json.loads, data.splitlines()))


@pytest.fixture(scope="module")
def plain_items(tmp_path_factory: pytest.TempPathFactory) -> Counter[Item]:
    """What plain Scrapy writes (the add-on disabled)."""
    site = BoardSite()
    try:
        directory = tmp_path_factory.mktemp("plain")
        assert _crawl(site, directory, "-s", "CHECKPOINT_ENABLED=False") == 0
        items = _items(directory)
    finally:
        site.close()
    assert items == Counter((u, n, v) for u in USERS for n in range(PAGES) for v in range(VISITS))
    return items


def _done(site: BoardSite, directory: Path) -> set[Item]:
    """The board requests the stage on disk records done, by their documented units: the
    n-th dont_filter request with a fingerprint that a login's callback yielded (n = visit),
    each login being the start request with its fingerprint (docs/scrapy.md)."""
    view = read_stage(FileStore(directory / "checkpoints"), "board")
    fingerprint = RequestFingerprinter().fingerprint
    done = set()
    for user in USERS:
        login = fingerprint(FormRequest(f"{site.url}/login", formdata={"user": user}))
        parent = derived_code(login, ROOT, 0)
        for n in range(PAGES):
            page = fingerprint(Request(f"{site.url}/board/{n}")).hex()
            done |= {(user, n, v) for v in range(VISITS) if view.is_done(f"{page} {parent} {v}")}
    return done


def test_the_same_pages_under_three_sessions_are_crawled_as_plain_scrapy_crawls_them(
    tmp_path: Path, board: BoardSite, plain_items: Counter[Item]
) -> None:
    assert _crawl(board, tmp_path) == 0
    assert _items(tmp_path) == plain_items
    assert board.snapshot() == Counter({(u, n): VISITS for u in USERS for n in range(PAGES)})
    log = (tmp_path / "crawl.log").read_text()
    assert "checkpoint/duplicates_dropped" not in log
    assert _done(board, tmp_path) == set(plain_items)
    state = read_stage(FileStore(tmp_path / "checkpoints"), "board").state
    assert (state.status, state.done_units) == (Status.COMPLETED, len(USERS) * (1 + PAGES * VISITS))


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_kill_9_at_random_moments_loses_nothing_and_refetches_nothing_done(
    tmp_path: Path, board: BoardSite, plain_items: Counter[Item], seed: int
) -> None:
    rng = random.Random(seed)
    done_before: set[Item] = set()
    kills = 0
    while True:
        final = kills == 3
        agent = f"run-{kills}"
        code = _crawl(board, tmp_path, "-s", "CHECKPOINT_SAVE_EVERY=5", "-s", f"USER_AGENT={agent}",
                      kill_after=None if final else rng.randint(1, 60))
        fetched = board.hits_of(agent)
        for (user, page), times in fetched.items():
            not_done = sum((user, page, v) not in done_before for v in range(VISITS))
            assert times <= not_done, f"{user}'s page {page} was done, and fetched again"
        done_now = _done(board, tmp_path)
        assert done_before <= done_now
        done_before = done_now
        if code == 0:  # the last run, or the crawl ended before the kill point
            break
        assert code == -signal.SIGKILL
        kills += 1
    assert _items(tmp_path) == plain_items
    assert _done(board, tmp_path) == set(plain_items)
    assert set(board.snapshot()) == {(u, n) for u in USERS for n in range(PAGES)}
    state = read_stage(FileStore(tmp_path / "checkpoints"), "board").state
    assert state.status is Status.COMPLETED


@pytest.mark.parametrize("seed", [51, 52, 53])
def test_checkpoint_ignore_requests_of_a_killed_crawl_are_written_once(
    tmp_path: Path, board: BoardSite, plain_items: Counter[Item], seed: int
) -> None:
    rng = random.Random(seed)
    args = ("-a", "ignore=1", "-s", "CHECKPOINT_SAVE_EVERY=1")  # each login committed when done
    code = _crawl(board, tmp_path, *args, kill_after=rng.randint(1, 80))
    if code != 0:  # else the crawl ended before the kill point
        assert code == -signal.SIGKILL
        assert _crawl(board, tmp_path, *args) == 0
    assert _items(tmp_path) == plain_items
    state = read_stage(FileStore(tmp_path / "checkpoints"), "board").state
    assert (state.status, state.done_units) == (Status.COMPLETED, len(USERS))
