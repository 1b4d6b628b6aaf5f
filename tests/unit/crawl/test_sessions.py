"""Cookie jars as JSON, and the stage's attached data across a snapshot and a crash."""

from __future__ import annotations

from http.cookiejar import Cookie
from pathlib import Path

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.crawl.sessions import TrackedJar, cookie_from_json, cookie_to_json
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
    changes: list[int] = []
    jar = TrackedJar(lambda: changes.append(1))
    jar.set_cookie(_cookie())
    assert changes
    assert [c.value for c in jar] == ["abc"]


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
