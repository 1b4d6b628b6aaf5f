"""The status server's pieces in-process: the failure limiter's window, loopback
detection, the token's sources and checks, the latency percentiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from scrapy_checkpoint.errors import ConfigError
from scrapy_checkpoint.server.auth import FailureLimiter
from scrapy_checkpoint.server.config import TOKEN_ENV, ServerConfig, is_loopback, load_token
from scrapy_checkpoint.server.health import percentiles

TOKEN = "0123456789abcdef0123"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_is_blocked_after_the_limit_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60.0, clock)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.fail("a")
        clock.now += 10
    assert limiter.retry_after("a") == 30.0  # the first failure, at 1000, leaves at 1060
    assert limiter.retry_after("b") is None  # per client
    clock.now = 1060.0
    assert limiter.retry_after("a") is None
    limiter.fail("a")
    assert limiter.retry_after("a") == 10.0  # failures at 1010, 1020, 1060


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_beyond_loopback_without_a_token_is_refused_and_the_repr_hides_the_token() -> None:
    with pytest.raises(ConfigError, match=r"Refusing to serve on 0\.0\.0\.0 without a token"):
        ServerConfig(host="0.0.0.0").check_bind()
    ServerConfig(host="0.0.0.0", token=TOKEN).check_bind()
    ServerConfig().check_bind()
    assert TOKEN not in repr(ServerConfig(token=TOKEN))
    assert "token=set" in repr(ServerConfig(token=TOKEN))


def test_the_token_comes_from_its_file_else_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    path.chmod(0o600)
    assert load_token(str(path), {TOKEN_ENV: "x" * 20}) == TOKEN
    assert load_token(None, {TOKEN_ENV: TOKEN}) == TOKEN
    assert load_token(None, {}) is None


def test_a_short_or_unreadable_token_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16 characters") as short:
        load_token(None, {TOKEN_ENV: "short-secret"})
    assert "short-secret" not in str(short.value)
    with pytest.raises(ConfigError, match="Cannot read the token file"):
        load_token(str(tmp_path / "missing"), {})


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) == {}
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 50.0, "p95": 95.0,
                                                              "p99": 99.0}
    assert percentiles([3.0]) == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
