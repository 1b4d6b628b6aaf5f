"""Fidelity of a scrapy-redis ``RedisSpider`` (``spiders/redis_starts.py``), whose start URLs
are popped from a Redis list: each run crawls what waits in the list when it starts.

Plain Scrapy is the reference: a run with ten product URLs in the list, then, with four
more pushed, the same command again, both appending to one ``-o`` feed. With the add-on
(killed once in the first run) the feed ends with the same items, each as often: the second
run finds the stage completed but URLs waiting, so it crawls them (a completed stage of
another spider does nothing, ``CHECKPOINT_ON_COMPLETE = "skip"``)."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REDIS_URL, require_redis
from .shop import ShopSite
from .test_fidelity import ADDON, crawl, diff, read_outputs


@pytest.fixture(scope="module")
def site() -> Iterator[ShopSite]:
    s = ShopSite()
    yield s
    s.close()


@pytest.fixture
def redis_key() -> Iterator[str]:
    require_redis()
    import redis

    key = f"fidelity-{secrets.token_hex(4)}:start_urls"
    yield key
    redis.Redis.from_url(REDIS_URL).delete(key)


def test_a_redis_spider_run_again_with_new_start_urls_crawls_them_as_plain_scrapy(
    tmp_path: Path, site: ShopSite, redis_key: str
) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    args = ("-s", f"REDIS_URL={REDIS_URL}", "-s", f"REDIS_START_URLS_KEY={redis_key}")

    def runs(directory: Path, *extra: str, kill_after: int | None = None) -> None:
        client.delete(redis_key)
        client.rpush(redis_key, *[f"{site.url}/product/{n}" for n in range(10)])
        if kill_after is not None:
            killed = crawl(site, "redis_starts", directory, *args, *extra, kill_after=kill_after)
            assert killed.returncode == -signal.SIGKILL, killed.log[-3000:]
        first = crawl(site, "redis_starts", directory, *args, *extra)
        assert first.returncode == 0, first.log[-3000:]
        assert client.llen(redis_key) == 0, first.log[-3000:]
        client.rpush(redis_key, *[f"{site.url}/product/{n}" for n in range(10, 14)])
        second = crawl(site, "redis_starts", directory, *args, *extra)
        assert second.returncode == 0, second.log[-3000:]
        assert client.llen(redis_key) == 0, f"the second run left the new URLs in Redis\n{second.log[-3000:]}"

    runs(tmp_path / "plain")
    expected = read_outputs(tmp_path / "plain").items
    assert sum(expected.values()) == 28  # a product and its reviews, 10 then 4
    runs(tmp_path / "addon", *ADDON, "-s", f"CHECKPOINT_DIR={tmp_path / 'addon' / 'checkpoints'}",
         kill_after=5)
    got = read_outputs(tmp_path / "addon").items
    assert got == expected, diff("feed", got, expected)
    log = (tmp_path / "addon" / "crawl.log").read_text()
    assert "its spider reads its start URLs from Redis" in log, log[-3000:]
