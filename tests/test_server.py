"""The status server as a real process (``scrapy-checkpoint serve`` on 127.0.0.1, a free
port), read with aiohttp's client, on stages made by real runs: a tracker job run to the
end, one killed with SIGKILL, one holding its stage, a shared stage in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.shared import open_shared, sub_stage_name
from scrapy_checkpoint.stores import open_store
from scrapy_checkpoint.stores.redis import RedisStore

from .conftest import PYTHON, SCRIPTS, StageHolder, python_env, require_redis

aiohttp = pytest.importorskip("aiohttp")
parser = pytest.importorskip("prometheus_client.parser")

TOKEN = "s3cret-token-0123456789abcdef"
WRONG = "wrong-token-0123456789abcdefgh"


class Server:
    """``scrapy-checkpoint serve`` in a process of its own, until :meth:`stop`."""

    def __init__(self, location: str, *args: str, token: str | None = None) -> None:
        where = ["--backend", location] if "://" in location else ["--dir", location]
        env = python_env()
        env.pop("SCRAPY_CHECKPOINT_TOKEN", None)
        if token is not None:
            env["SCRAPY_CHECKPOINT_TOKEN"] = token
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "scrapy_checkpoint.cli", *where, "serve", "--port", "0",
             "--sample-interval", "0.2", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("Serving"), line + self.proc.stderr.read()  # type: ignore[union-attr]
        self.url = line.split(" on ", 1)[1].split(" ", 1)[0].rstrip(",")
        self.log = ""

    def stop(self) -> str:
        """Stop it (SIGTERM) and return what it logged on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=600)
        self.log = out + err
        return self.log


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Server] = []

    def start(location: str, *args: str, token: str | None = None) -> Server:
        server = Server(location, *args, token=token)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def call(method: str, url: str, token: str | None = None,
         host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with aiohttp's client (``host``: the Host header to send): status,
    headers, body."""
    async def go() -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if host is not None:
            headers["Host"] = host
        async with aiohttp.ClientSession() as session, \
                session.request(method, url, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()
    return asyncio.run(go())


def get_json(url: str, token: str | None = None) -> Any:
    status, _, body = call("GET", url, token)
    assert status == 200, body
    return json.loads(body)


def cli(location: str, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--backend", location] if "://" in location else ["--dir", location]
    return subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", *where, *args], check=False,
                          capture_output=True, text=True, env=python_env(), timeout=900)


def run_tracker_job(location: str, stage: str, n: int, tmp_path: Path,
                    kill_after: int | None = None) -> None:
    """tests/scripts/tracker_job.py to the end, or SIGKILLed after ``kill_after`` items."""
    proc = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "tracker_job.py"), location, stage, str(n),
         str(tmp_path / f"{stage}.log"), "4", "1", "fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
    assert proc.stdout is not None
    for seen, _ in enumerate(proc.stdout, 1):
        if kill_after is not None and seen >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    _, err = proc.communicate()
    if kill_after is None:
        assert proc.returncode == 0, err.decode()
    else:
        assert proc.returncode == -signal.SIGKILL


def make_failed_stage(location: str, stage: str, n: int = 10) -> list[int]:
    """A completed stage where every third unit failed; returns the failed indexes."""
    cp = EnhancedCheckpoint(stage=stage, store=open_store(location), log_every=0)
    cp.start(total_items=n)
    failed = []
    for i in range(n):
        if i % 3 == 0:
            cp.update(processed=1, failed=1, index=i)
            failed.append(i)
        else:
            cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    return failed


@pytest.fixture
def location(persistent_location: str) -> str:
    """Where the stages live: a directory, a Redis URL or a PostgreSQL URL, each with a
    prefix of its own (the stores whose stages outlive the jobs' processes)."""
    return persistent_location


# -- the JSON API -------------------------------------------------------------------------


def test_the_api_serves_the_cli_documents_of_a_completed_and_a_killed_stage(
    location: str, tmp_path: Path, serve: Any
) -> None:
    run_tracker_job(location, "finished", 40, tmp_path)
    run_tracker_job(location, "killed", 1500, tmp_path, kill_after=30)
    server = serve(location)
    api = server.url + "api/v1"

    listed = get_json(f"{api}/stages")
    assert {e["stage"]: e["display_status"] for e in listed["stages"]} == {
        "finished": "completed", "killed": "crashed"}
    assert listed == json.loads(cli(location, "list", "--json").stdout)
    for stage in ("finished", "killed"):
        assert get_json(f"{api}/stages/{stage}") == json.loads(
            cli(location, "show", stage, "--json").stdout)
    report = get_json(f"{api}/report")
    assert report == json.loads(cli(location, "report", "--json").stdout)
    assert (report["overall"]["completed"], report["overall"]["crashed"]) == (1, 1)

    status, _, body = call("GET", f"{api}/stages/nope")
    assert status == 404
    assert b"No checkpoint for stage 'nope'" in body
    status, _, body = call("GET", f"{api}/stages/-bad")
    assert status == 400
    assert b"Invalid stage name '-bad'" in body

    health = get_json(f"{api}/health")
    assert health["status"] == "ok"
    assert health["store"]["reachable"] is True
    assert health["crashed"] == ["killed"]
    assert health["stuck"] == []
    if "://" in location:
        assert set(health["store"]["round_trip_ms"]) == {"p50", "p95", "p99"}
    else:
        directory = health["store"]["directory"]
        assert directory["writable"]
        assert directory["free_bytes"] > 0

    openapi = get_json(f"{api}/openapi.json")
    assert openapi["openapi"].startswith("3.")
    for path in ("/api/v1/stages", "/api/v1/stages/{stage}", "/api/v1/report", "/api/v1/health",
                 "/api/v1/stages/{stage}/reset", "/api/v1/stages/{stage}/requeue", "/metrics"):
        assert path in openapi["paths"]


def test_a_running_stage_that_stopped_committing_is_flagged_stuck(tmp_path: Path,
                                                                  serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    gated = subprocess.Popen([PYTHON, str(SCRIPTS / "gated_job.py"), location, "gated", "3"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(),
                             text=True)
    assert gated.stdout is not None
    assert gated.stdin is not None
    try:
        assert gated.stdout.readline().strip() == "ready"  # then waits, committing nothing
        server = serve(location, "--stuck-after", "0.5")
        while not (health := get_json(server.url + "api/v1/health"))["stuck"]:
            pass  # until its last commit is older than 0.5 s
        assert health["status"] == "degraded"
        (stuck,) = health["stuck"]
        assert (stuck["stage"], stuck["owner_pid"]) == ("gated", gated.pid)
        assert stuck["seconds_since_commit"] >= 0.5
        gated.stdin.write("go\n")
        gated.stdin.close()
        assert gated.wait(timeout=900) == 0
        health = get_json(server.url + "api/v1/health")
        assert (health["status"], health["stuck"]) == ("ok", [])
    finally:
        if gated.poll() is None:
            gated.kill()
            gated.wait()
        gated.stdout.close()
        gated.stdin.close()


def test_the_history_holds_samples_taken_by_the_server(tmp_path: Path, serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    run_tracker_job(location, "finished", 20, tmp_path)
    server = serve(location)
    # Sampled every 0.2 s from the start: wait for two samples, not for a time.
    while len(samples := get_json(server.url + "api/v1/stages/finished/history")["samples"]) < 2:
        pass
    assert samples[-1]["processed"] == 20
    assert samples[-1]["rate"] == 0.0
    assert "finished" in get_json(server.url + "api/v1/history")["stages"]


def test_a_shared_stage_shows_its_workers(tmp_path: Path, serve: Any) -> None:
    require_redis()
    from .conftest import drop_redis_prefix, redis_location

    prefix = f"sctest-server-shared-{os.getpid()}"
    backend = redis_location(prefix)
    try:
        store = RedisStore(backend)
        for worker in ("a", "b"):
            cp = EnhancedCheckpoint(stage=sub_stage_name("site", worker), store=store,
                                    log_every=0)
            cp.start()
            cp.add_unit(1, {"url": "http://127.0.0.1/1"})
            cp.finish_unit(1, processed=1, successful=1)
            cp.complete()
            cp.close()
            open_shared(store, "site", worker=worker).beat("finished")
        store.close()
        server = serve(backend)
        doc = get_json(server.url + "api/v1/stages/site")
        assert doc == json.loads(cli(backend, "show", "site", "--json").stdout)
        assert (doc["shared"], doc["status"]) == (True, "completed")
        assert sorted(w["id"] for w in doc["workers"]) == ["a", "b"]
        assert sorted(get_json(server.url + "api/v1/stages")["shared"]["site"][i]["id"]
                      for i in range(2)) == ["a", "b"]
    finally:
        drop_redis_prefix(prefix)


# -- /metrics -----------------------------------------------------------------------------


def test_metrics_parse_with_the_prometheus_parser(tmp_path: Path, serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    run_tracker_job(location, "finished", 40, tmp_path)
    run_tracker_job(location, "killed", 1500, tmp_path, kill_after=30)
    server = serve(location)
    status, headers, body = call("GET", server.url + "metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    values = {(f.name, tuple(sorted(s.labels.items()))): s.value
              for f in families.values() for s in f.samples}

    def value(name: str, stage: str, **labels: str) -> float:
        key = tuple(sorted({"stage": stage, "store": location, **labels}.items()))
        return values[(f"scrapy_checkpoint_{name}", key)]

    killed = get_json(server.url + "api/v1/stages/killed")
    assert value("stage_processed_items", "finished") == 40
    assert value("stage_total_items", "finished") == 40
    assert value("stage_processed_items", "killed") == killed["progress"]["processed_items"]
    assert value("stage_done_units", "killed") == killed["done_units"]
    assert value("stage_status", "finished", status="completed") == 1
    assert value("stage_status", "killed", status="crashed") == 1
    assert value("stage_status", "killed", status="running") == 0
    assert value("stage_eta_seconds", "finished") == 0
    assert value("stage_owner_alive", "killed") == 0
    assert value("stage_seconds_since_last_commit", "finished") >= 0
    assert value("stage_items", "finished", kind="scraped") == 0
    assert families["scrapy_checkpoint_stage_status"].type == "gauge"
    durations = families["scrapy_checkpoint_stage_commit_duration_seconds"]
    assert durations.type == "histogram"
    finished = [s for s in durations.samples if s.labels["stage"] == "finished"]
    count = next(s.value for s in finished if s.name.endswith("_count"))
    buckets = [s.value for s in finished if s.name.endswith("_bucket")]
    assert count >= 1  # every commit of the job's process, by duration
    assert buckets == sorted(buckets)
    assert buckets[-1] == count  # the +Inf bucket
    assert next(s.value for s in finished if s.name.endswith("_sum")) > 0


# -- auth ---------------------------------------------------------------------------------


def test_actions_need_the_token_even_on_loopback(tmp_path: Path, serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    make_failed_stage(location, "fetch")
    without = serve(location)
    status, _, body = call("POST", without.url + "api/v1/stages/fetch/requeue")
    assert status == 403
    assert b"token" in body
    assert get_json(without.url + "api/v1/stages/fetch")["progress"]["failed_items"] == 4
    # Reads are open on loopback without a token, to requests addressed to loopback only:
    # another name resolved to 127.0.0.1 (DNS rebinding) is refused.
    assert call("GET", without.url + "api/v1/stages", host="rebound.example:8000")[0] == 401
    without.stop()

    server = serve(location, token=TOKEN)
    requeue = server.url + "api/v1/stages/fetch/requeue"
    assert call("POST", requeue)[0] == 401
    assert call("POST", requeue, WRONG)[0] == 401
    # With a token every read needs it, on loopback too (a reverse proxy in front sends
    # Host: 127.0.0.1 by default).
    assert call("GET", server.url + "api/v1/stages")[0] == 401
    assert call("GET", server.url + "api/v1/stages", TOKEN)[0] == 200
    assert call("GET", server.url + "api/v1/stages", TOKEN, host="rebound.example:8000")[0] == 200
    status, _, body = call("POST", requeue, TOKEN)
    assert (status, json.loads(body)) == (200, {"stage": "fetch", "requeued": 4})
    assert TOKEN not in server.stop()


def test_beyond_loopback_without_a_token_the_server_refuses_to_start(tmp_path: Path) -> None:
    env = python_env()
    env.pop("SCRAPY_CHECKPOINT_TOKEN", None)
    proc = subprocess.run(
        [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(tmp_path), "serve", "--host",
         "0.0.0.0", "--port", "0"], capture_output=True, text=True, env=env, timeout=600,
        check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("Refusing to serve on 0.0.0.0 without a token")
    assert "--token-file" in proc.stderr
    assert "SCRAPY_CHECKPOINT_TOKEN" in proc.stderr
    # The token is never an option of the command line.
    proc = subprocess.run(
        [PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(tmp_path), "serve", "--token",
         TOKEN], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 2
    assert "No such option '--token'" in proc.stderr


def test_beyond_loopback_with_a_token_file_reads_need_the_token(tmp_path: Path,
                                                                  serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    make_failed_stage(location, "fetch")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = serve(location, "--host", "0.0.0.0", "--token-file", str(token_file))
    url = server.url.replace("0.0.0.0", "127.0.0.1")
    for path in ("api/v1/stages", "api/v1/health", "metrics", "api/v1/openapi.json"):
        status, headers, _ = call("GET", url + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert call("GET", url + path, TOKEN)[0] == 200
    assert call("GET", url)[0] == 200  # the page itself holds no data: it asks for the token
    assert TOKEN not in server.stop()


def test_failed_attempts_are_limited_per_client(tmp_path: Path, serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    make_failed_stage(location, "fetch")
    server = serve(location, token=TOKEN)
    requeue = server.url + "api/v1/stages/fetch/requeue"
    bodies = []
    for _ in range(10):
        status, _, body = call("POST", requeue, WRONG)
        assert status == 401
        bodies.append(body)
    status, headers, body = call("POST", requeue, WRONG)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    status, _, body = call("POST", requeue, TOKEN)  # blocked, even with the right token
    assert status == 429
    bodies.append(body)
    shown = json.loads(cli(location, "show", "fetch", "--json").stdout)
    assert shown["progress"]["failed_items"] == 4  # nothing was requeued
    log = server.stop()
    assert "Failed authentication from 127.0.0.1" in log
    for secret in (TOKEN, WRONG):
        assert secret not in log
        assert all(secret.encode() not in b for b in bodies)


# -- actions ------------------------------------------------------------------------------


def test_requeue_makes_the_failed_units_run_again(tmp_path: Path, serve: Any) -> None:
    location = str(tmp_path / "checkpoints")
    failed = make_failed_stage(location, "fetch")
    make_failed_stage(location, "parse")
    server = serve(location, token=TOKEN)
    status, _, body = call("POST", server.url + "api/v1/stages/fetch/requeue", TOKEN)
    assert (status, json.loads(body)["requeued"]) == (200, len(failed))
    doc = get_json(server.url + "api/v1/stages/fetch", TOKEN)
    assert (doc["progress"]["processed_items"], doc["progress"]["failed_items"]) == (6, 0)
    assert doc["status"] == "completed"
    status, _, body = call("POST", server.url + "api/v1/stages/fetch/requeue", TOKEN)
    assert json.loads(body)["requeued"] == 0
    assert call("POST", server.url + "api/v1/stages/nope/requeue", TOKEN)[0] == 404

    # The CLI does the same.
    done = cli(location, "requeue", "parse", "--failed")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Requeued 4 failed unit(s) of parse: its next run does them again.\n"
    again = cli(location, "requeue", "parse", "--failed")
    assert (again.returncode, again.stdout) == (1, "Stage parse has no failed units to requeue.\n")

    # The next run does exactly the requeued units again.
    cp = EnhancedCheckpoint(location, "fetch", log_every=0)
    cp.start(total_items=10)
    redone = [i for i in range(10) if not cp.should_skip(i)]
    for i in redone:
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()
    assert redone == failed
    doc = get_json(server.url + "api/v1/stages/fetch", TOKEN)
    assert (doc["progress"]["processed_items"], doc["progress"]["successful_items"]) == (10, 10)


def test_a_stage_with_a_live_owner_is_neither_reset_nor_requeued(tmp_path: Path,
                                                                   serve: Any) -> None:
    location = tmp_path / "checkpoints"
    holder = StageHolder(location, "held")
    server = serve(str(location), token=TOKEN)
    for action in ("reset", "requeue"):
        status, _, body = call("POST", server.url + f"api/v1/stages/held/{action}", TOKEN)
        assert status == 409, body
        assert f"pid {holder.pid}" in json.loads(body)["error"]
    refused = cli(str(location), "requeue", "held", "--failed")
    assert refused.returncode == 1
    assert f"pid {holder.pid}" in refused.stderr
    holder.close()
    status, _, body = call("POST", server.url + "api/v1/stages/held/reset", TOKEN)
    assert (status, json.loads(body)) == (200, {"stage": "held", "reset": True})
    assert call("GET", server.url + "api/v1/stages/held", TOKEN)[0] == 404


# -- the page -----------------------------------------------------------------------------


def test_the_page_needs_nothing_from_the_internet() -> None:
    from importlib import resources

    static = resources.files("scrapy_checkpoint.server") / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text("utf-8")
        assert "://" not in text, name  # no URL of another host: no CDN, no font service


def _chromium() -> tuple[str, str]:
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        message = "no chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("selenium")
    return browser, driver


def test_the_page_shows_each_stage_and_follows_a_commit(tmp_path: Path, serve: Any) -> None:
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    location = str(tmp_path / "checkpoints")
    run_tracker_job(location, "finished", 40, tmp_path)
    gated = subprocess.Popen([PYTHON, str(SCRIPTS / "gated_job.py"), location, "gated", "3"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(),
                             text=True)
    assert gated.stdout is not None
    assert gated.stdin is not None
    assert gated.stdout.readline().strip() == "ready"  # 3 of 4 done and committed
    server = serve(location)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 600)  # (a guard against a hang)

        def shown(stage: str) -> tuple[str, str]:
            cards = driver.find_elements(By.CSS_SELECTOR, f'section.stage[data-stage="{stage}"]')
            if not cards:
                return "", ""
            return (cards[0].find_element(By.CSS_SELECTOR, ".percent").text,
                    cards[0].find_element(By.CSS_SELECTOR, ".status").text)

        wait.until(lambda _: shown("finished") == ("100.0%", "completed"))
        wait.until(lambda _: shown("gated") == ("75.0%", "running"))
        url_before = driver.current_url
        gated.stdin.write("go\n")
        gated.stdin.close()
        assert gated.wait(timeout=900) == 0
        wait.until(lambda _: shown("gated") == ("100.0%", "completed"))
        assert driver.current_url == url_before  # updated in place, not reloaded
        assert driver.find_elements(By.CSS_SELECTOR, 'section[data-stage="gated"] canvas')
    finally:
        driver.quit()
        if gated.poll() is None:
            gated.kill()
            gated.wait()
        gated.stdout.close()
        gated.stdin.close()
