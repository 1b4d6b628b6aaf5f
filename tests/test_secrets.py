"""No password of a backend URL in any output: messages, locations, reprs, the CLI.

Passwords are checked in every URL form redis-py accepts (user info of ``redis://``,
``rediss://`` and ``unix://`` URLs, and a ``password=`` query parameter), and in the
``postgresql://`` and ``postgres://`` forms, against a real Redis where a store is opened.
"""

from __future__ import annotations

import subprocess

import pytest

from scrapy_checkpoint.crawl.settings import CheckpointSettings
from scrapy_checkpoint.errors import CheckpointError, ConfigError, redact
from scrapy_checkpoint.stores import open_backend, open_store
from scrapy_checkpoint.stores.redis import RedisStore

from .conftest import PYTHON, python_env, require_redis

SECRET = "hunter2-Secret"

URLS = [
    f"redis://app:{SECRET}@127.0.0.1:6379/0",
    f"redis://:{SECRET}@127.0.0.1:6379/0",
    f"rediss://:{SECRET}@127.0.0.1:6379/0",
    f"unix://:{SECRET}@/run/redis/redis.sock",
    f"unix:///run/redis/redis.sock?password={SECRET}&db=0",
    f"redis://:p@ss{SECRET}@127.0.0.1:6379/0",
    f"postgresql://app:{SECRET}@127.0.0.1:5432/jobs",
    f"postgres://app:{SECRET}@127.0.0.1:5432/jobs?schema=crawls",
    f"postgresql://app@127.0.0.1:5432/jobs?password={SECRET}&sslmode=disable",
]


@pytest.mark.parametrize("url", URLS)
def test_redact_hides_the_password_of_every_url_form(url: str) -> None:
    shown = redact(f"cannot use {url}: refused")
    assert SECRET not in shown
    assert "***" in shown
    assert shown.startswith("cannot use ")
    assert shown.endswith(": refused")


def test_urls_without_a_password_are_unchanged() -> None:
    for text in ("redis://127.0.0.1:6379/0", "unix:///run/redis.sock?db=1", "redis://user@h/0",
                 "a plain message: 12:30 at host"):
        assert redact(text) == text


@pytest.mark.parametrize("url", [u for u in URLS if u.startswith("unix://")])
def test_an_unreachable_unix_socket_error_names_no_password(url: str) -> None:
    with pytest.raises(CheckpointError) as err:
        RedisStore(url)
    assert SECRET not in str(err.value)
    assert "Cannot reach Redis at unix://" in str(err.value)


def test_a_reachable_store_shows_no_password_in_its_location_and_repr() -> None:
    require_redis()
    store = RedisStore(f"redis://:{SECRET}@127.0.0.1:6379/15?prefix=sctest-secret")
    try:
        assert SECRET not in store.location
        assert SECRET not in repr(store)
    finally:
        store.close()


def test_unknown_backends_are_reported_without_their_password() -> None:
    for bad in (f"mysql://root:{SECRET}@db/x", f"redis//:{SECRET}@h"):
        with pytest.raises(ConfigError) as err:
            open_backend(bad, "unused")
        assert SECRET not in str(err.value)
    with pytest.raises(ConfigError) as err:
        open_store(f"http://u:{SECRET}@h/")
    assert SECRET not in str(err.value)


def test_crawl_settings_never_show_the_password() -> None:
    from scrapy.settings import Settings

    settings = CheckpointSettings.from_settings(Settings({
        "CHECKPOINT_BACKEND": f"redis://:{SECRET}@127.0.0.1:6379/0"}))
    assert SECRET not in repr(settings)
    assert SECRET not in settings.completed_message("site")
    with pytest.raises(ConfigError) as err:
        CheckpointSettings.from_settings(Settings({"CHECKPOINT_BACKEND": f"mysql://:{SECRET}@h"}))
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("url", [u for u in URLS if u.startswith("postgres")])
def test_an_unreachable_postgresql_server_error_names_no_password(url: str) -> None:
    unreachable = url.replace(":5432/", ":1/")
    with pytest.raises(CheckpointError) as err:
        open_store(unreachable)
    assert SECRET not in str(err.value)
    assert "Cannot reach PostgreSQL at postgres" in str(err.value)


def test_the_cli_never_prints_the_password() -> None:
    for backend in (f"mysql://:{SECRET}@h/0", f"unix://:{SECRET}@/nonexistent/redis.sock",
                    f"postgresql://app:{SECRET}@127.0.0.1:1/jobs"):
        run = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--backend", backend, "list"],
                             capture_output=True, text=True, env=python_env(), timeout=600,
                             check=False)
        assert run.returncode != 0
        assert SECRET not in run.stdout + run.stderr, run.stdout + run.stderr
