"""Run real ``scrapy crawl`` processes of the test project and read what they wrote."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .conftest import PYTHON, python_env
from .site import Site

PROJECT = Path(__file__).resolve().parent / "crawl_project"


@dataclass
class CrawlRun:
    returncode: int
    log: str
    hits: dict[int, int]  # page -> times fetched during this run


@dataclass
class Outputs:
    """The durable outputs of a crawl in one directory (the checkpoint too, or in Redis)."""

    directory: Path
    backend: str | None = None

    @property
    def location(self) -> str:
        """Where the crawl's checkpoint lives (for open_store)."""
        return self.backend or str(self.directory / "checkpoints")

    @property
    def args(self) -> list[str]:
        d = self.directory
        args = ["-o", f"{d / 'items.jl'}", "-o", f"{d / 'items.csv'}",
                "-s", f"CHECKPOINT_OUTPUT={d / 'own.jl'}", "-s", f"CHECKPOINT_DIR={d / 'checkpoints'}"]
        if self.backend:
            args += ["-s", f"CHECKPOINT_BACKEND={self.backend}"]
        return args

    def jsonlines(self, name: str) -> list[int]:
        """Pages in a JSON lines output; fails on a partial or unparsable line."""
        path = self.directory / name
        if not path.exists():
            return []
        data = path.read_text()
        assert data == "" or data.endswith("\n"), f"{name} ends with a partial line"
        return [json.loads(line)["page"] for line in data.splitlines()]

    def csv_pages(self) -> list[int]:
        path = self.directory / "items.csv"
        if not path.exists():
            return []
        data = path.read_text()
        if data == "":  # the header is written with the first item
            return []
        assert data.endswith("\n"), "items.csv ends with a partial line"
        rows = list(csv.reader(data.splitlines()))
        assert rows[0] == ["page", "title", "url"], rows[0]
        assert ["page", "title", "url"] not in rows[1:], "the CSV header was written twice"
        return [int(r[0]) for r in rows[1:]]


def by_page(items: list[dict[str, str]]) -> list[dict[str, str]]:
    """Feed items (field -> text) sorted by their page number."""
    return sorted(items, key=lambda item: int(item["page"]))


def once_per_page(plain: list[dict[str, str]]) -> list[dict[str, str]]:
    """The plain run's items, each page once: its start request (``dont_filter``) is not in
    the dupefilter, so plain Scrapy fetches the home page a second time from a link, which
    the checkpoint's done-set does not (kind 3 of the crawl-fidelity issue)."""
    seen: dict[str, dict[str, str]] = {}
    for item in plain:
        seen.setdefault(item["page"], item)
    return by_page(list(seen.values()))


def jsonlines_items(path: Path) -> list[dict[str, str]]:
    """The items of a JSON lines feed, in file order, values as text; fails on a partial
    last line."""
    data = path.read_text()
    assert data == "" or data.endswith("\n"), f"{path.name} ends with a partial line"
    return [{k: str(v) for k, v in json.loads(line).items()} for line in data.splitlines()]


def crawl(site: Site, outputs: Outputs, *extra: str,
          interrupt: Callable[[subprocess.Popen[bytes]], None] | None = None,
          interrupt_after_hits: int | None = None) -> CrawlRun:
    """Run ``scrapy crawl site`` of the test project with the outputs of ``outputs``."""
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}", *outputs.args, *extra]
    return run(site, cmd, outputs.directory, cwd=PROJECT, interrupt=interrupt,
               interrupt_after_hits=interrupt_after_hits)


def run(site: Site, cmd: list[str], directory: Path, *, cwd: Path,
        interrupt: Callable[[subprocess.Popen[bytes]], None] | None = None,
        interrupt_after_hits: int | None = None) -> CrawlRun:
    """Run ``cmd`` to the end, or interrupt it once the server has answered
    ``interrupt_after_hits`` more requests (``interrupt(proc)`` does it).

    With a plain signal (:func:`sigkill`, :func:`sigint`, :func:`sigterm`) the site holds
    the requests past that count until the signal is sent: the crawl cannot run on (or to
    its end) while this process is slow to send it, so the signal lands on a crawl that
    has fetched at most the in-flight requests more. Other interrupts wait for conditions
    of their own while the crawl goes on."""
    before = site.page_hits()
    start_hits = site.total_hits
    log_path = directory / "crawl.log"
    hold = interrupt in (sigkill, sigint, sigterm) and interrupt_after_hits is not None
    with log_path.open("wb") as log:
        if hold:
            site.hold_after = start_hits + interrupt_after_hits  # type: ignore[operator]
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=python_env(), stdout=log,
                                    stderr=subprocess.STDOUT)
            if (interrupt is not None and interrupt_after_hits is not None
                    and site.wait_for_hits(start_hits + interrupt_after_hits, proc=proc)):
                if interrupt is double_sigint:
                    double_sigint(proc, log_path, site)
                else:
                    interrupt(proc)
        finally:
            if hold:
                site.release()
        proc.wait(timeout=1200)
    after = site.page_hits()
    hits = {p: after[p] - before.get(p, 0) for p in after if after[p] - before.get(p, 0)}
    return CrawlRun(proc.returncode, log_path.read_text(), hits)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)


def sigint(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)


def double_sigint(proc: subprocess.Popen[bytes], log: Path, site: Site) -> None:
    """Ctrl-C, then once Scrapy says it is shutting down gracefully, Ctrl-C again.

    A request is held at the site's gate from before the first Ctrl-C until after the
    second, so the graceful stop cannot finish in between, however slowly this process
    gets to the second one (the second Ctrl-C always lands on a crawl still stopping)."""
    site.gate.clear()
    try:
        held = site.total_hits + 1  # a request counted after clear() waits at the gate
        if not site.wait_for_hits(held, proc=proc):
            return  # the crawl ended: the test finds no forced shutdown in its log
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 600
        while (b"shutting down gracefully" not in log.read_bytes() and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)  # polls the crawl's own log for the condition
        proc.send_signal(signal.SIGINT)
    finally:
        site.gate.set()


def sigterm(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)


#: ``-s`` arguments that enable the gates of the test project (see crawl_project/gates.py).
GATES = {
    "before_completion": ("ITEM_PIPELINES", '{"crawl_project.gates.BeforeCompletionGate": 900}'),
    "after_finished": ("EXTENSIONS", '{"crawl_project.gates.AfterFinishedGate": 900}'),
}


def crawl_killed_at_gate(site: Site, outputs: Outputs, gate: str, *extra: str) -> CrawlRun:
    """Run ``scrapy crawl site`` with the gate ``gate`` (a key of :data:`GATES`) and SIGKILL it
    once the crawl waits there."""
    gate_dir = outputs.directory / f"gate-{gate}"
    gate_dir.mkdir()
    setting, value = GATES[gate]
    cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}", *outputs.args,
           "-s", f"GATE_DIR={gate_dir}", "-s", f"{setting}={value}", *extra]
    before = site.page_hits()
    log_path = outputs.directory / "crawl.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT, env=python_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while (not (gate_dir / "reached").exists() and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)  # polls for the gate's own signal that the crawl waits there
        reached = (gate_dir / "reached").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=1200)
    assert reached, log_path.read_text()[-3000:]
    after = site.page_hits()
    hits = {p: after[p] - before.get(p, 0) for p in after if after[p] - before.get(p, 0)}
    return CrawlRun(proc.returncode, log_path.read_text(), hits)
