"""Cookie jars as JSON, and the stage's attached data across a snapshot and a crash."""

from __future__ import annotations

from http.cookiejar import Cookie
from pathlib import Path

from scrapy import Request
from scrapy.http import Response

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.crawl.sessions import CookieJars, TrackedJar, cookie_from_json, cookie_to_json
from scrapy_checkpoint.journal.groups import ATTACHED


def _cookie(**changes: object) -> Cookie:
    fields: dict[str, object] = dict(
        version=0, name="session", value="abc", port=None, port_specified=False,
        domain="example.com", domain_specified=False, domain_initial_dot=False, path="/",
        path_specified=True, secure=True, expires=2_000_000_000, discard=False, comment=None,
        comment_url=None, rest={"HttpOnly": None, "SameSite": "Lax"}, rfc2109=False)
    fields.update(changes)
    return Cookie(**fields)  # type: ignore[arg-type]


def test_a_cookie_round_trips_through_json_with_its_flags() -> None:
    cookie = _cookie()
    back = cookie_from_json(cookie_to_json(cookie))
    for name in ("name", "value", "domain", "path", "secure", "expires", "discard", "version"):
        assert getattr(back, name) == getattr(cookie, name)
    assert back.has_nonstandard_attr("HttpOnly")
    assert back.get_nonstandard_attr("SameSite") == "Lax"


def test_a_tracked_jar_reports_a_change() -> None:
    jars = CookieJars(None, lambda kind, message: None)
    jar = TrackedJar(jars, "a")
    jar.set_cookie(_cookie())
    assert [c.value for c in jar] == ["abc"]
    assert [c.value for c in jars.journaled("a")] == ["abc"]


def _set_by_response(jar: TrackedJar, unit: int, set_cookie: str) -> None:
    """What CookiesMiddleware does with a response of unit ``unit``."""
    request = Request("http://example.com/p", meta={"unit": unit})
    response = Response("http://example.com/p", headers={"Set-Cookie": set_cookie})
    for cookie in jar.make_cookies(response, request):
        jar.set_cookie_if_ok(cookie, request)


def test_a_response_s_cookies_are_journaled_when_its_unit_is_done() -> None:
    jars = CookieJars(None, lambda kind, message: None, lambda request: request.meta["unit"])
    jar = TrackedJar(jars, "a")
    _set_by_response(jar, 7, "step=7; Path=/")
    assert [c.value for c in jar] == ["7"]  # the crawl sends it at once
    assert list(jars.journaled("a")) == []  # unit 7 is not done: a crash redoes it without
    jars.release(7)
    assert [c.value for c in jars.journaled("a")] == ["7"]
    _set_by_response(jar, 8, "step=; Path=/; Max-Age=0")  # deleted
    assert list(jar) == []
    assert [c.value for c in jars.journaled("a")] == ["7"]
    _set_by_response(jar, 9, "other=1; Path=/")
    jars.discard(9)  # left the run undone
    jars.release(8)
    assert list(jars.journaled("a")) == []


def _commit_attached(directory: Path, value: object) -> EnhancedCheckpoint:
    cp = EnhancedCheckpoint(directory, "s", log_every=0)
    cp.add_commit_hook(lambda: {ATTACHED: {"cookies": value}})
    cp.start()
    cp.update(processed=1, index=0)
    cp.save()
    return cp


def test_attached_data_survives_a_clean_close_and_its_snapshot(tmp_path: Path) -> None:
    _commit_attached(tmp_path, [[None, []]]).close()
    cp = EnhancedCheckpoint(tmp_path, "s", log_every=0)
    cp.start()
    assert cp.live.attached == {"cookies": [[None, []]]}
    cp.close()


def test_attached_data_survives_a_crash_in_the_journal(tmp_path: Path) -> None:
    cp = _commit_attached(tmp_path, [["a", []]])
    cp.save(force=True)  # what kill -9 leaves: committed groups on disk, the stage never closed
    cp._lock.release()  # type: ignore[union-attr]
    cp._committer.close()
    again = EnhancedCheckpoint(tmp_path, "s", log_every=0)
    again.start()
    assert again.live.attached == {"cookies": [["a", []]]}
    again.close()
