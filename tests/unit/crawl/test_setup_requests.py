"""Setup requests: holding the resumed requests, and units redirected to the login page."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.utils.test import get_crawler

from scrapy_checkpoint import EnhancedCheckpoint, Status
from scrapy_checkpoint.crawl.setup_requests import (
    LOST_SESSION_EXPIRED,
    SETUP_META,
    SetupRequests,
    finish_expired,
    url_key,
)
from scrapy_checkpoint.journal.groups import ATTACHED

LOGIN = "https://example.com/login"


def _setup(saved: Any = None, crawled: list[Request] | None = None
           ) -> tuple[SetupRequests, list[str]]:
    warnings: list[str] = []
    sent = crawled if crawled is not None else []
    setup = SetupRequests(saved, get_crawler().stats, lambda kind, msg: warnings.append(msg),
                          "s", sent.append)
    return setup, warnings


def _login(url: str = LOGIN, **meta: Any) -> Request:
    return Request(url, meta={SETUP_META: True, **meta}, dont_filter=True)


class Releases:
    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def __call__(self, pairs: list[Any]) -> int:
        self.calls.append(pairs)
        return len(pairs)


def test_the_url_key_is_scheme_host_and_path() -> None:
    assert url_key("HTTPS://Example.COM/login?next=/item/3#x") == LOGIN
    assert url_key("https://example.com") == "https://example.com/"
    assert url_key("http://example.com/login") != LOGIN


def test_a_stage_without_setup_requests_holds_nothing() -> None:
    setup, _ = _setup()
    assert not setup.hold([(1, {})], Releases())
    assert not setup.holding


def test_resumed_requests_wait_for_a_whole_chain_of_setup_requests() -> None:
    setup, _ = _setup({"urls": [LOGIN]})
    release = Releases()
    assert setup.hold([(1, {"url": "a"}), (2, {"url": "b"})], release)
    token = _login("https://example.com/csrf")
    setup.scheduled(token)
    setup.finished(Request("https://example.com/other"))  # not a setup request
    # The token's callback yields the login before the engine is done with the token.
    form = _login()
    setup.scheduled(form)
    setup.finished(token)
    assert release.calls == []
    # The login redirects: the redirect is the same setup request, scheduled before the POST ends.
    redirected = _login("https://example.com/list", redirect_urls=[LOGIN])
    setup.scheduled(redirected)
    setup.finished(form)
    assert release.calls == []
    setup.finished(redirected)
    assert release.calls == [[(1, {"url": "a"}), (2, {"url": "b"})]]
    assert not setup.holding
    assert setup.issued == 2
    assert setup.idle() is False  # nothing held any more: the spider may close


def test_a_setup_request_the_dupefilter_refuses_does_not_hold_for_ever() -> None:
    setup, _ = _setup({"urls": [LOGIN]})
    release = Releases()
    setup.hold([(1, {})], release)
    login = _login()
    setup.scheduled(login)
    setup.dropped(login)
    assert len(release.calls) == 1


def test_a_run_that_issues_no_setup_request_releases_them_when_idle_with_one_warning() -> None:
    setup, warnings = _setup({"urls": [LOGIN]})
    release = Releases()
    setup.hold([(1, {})], release)
    assert setup.idle() is True  # keep the spider open: they were just scheduled
    assert len(release.calls) == 1
    assert len(warnings) == 1
    assert "issued none" in warnings[0]


def test_setup_urls_are_recorded_once_and_journaled_when_they_change() -> None:
    setup, _ = _setup()
    assert setup.changed() is None
    setup.scheduled(_login(LOGIN + "?next=/a"))
    setup.scheduled(_login(LOGIN + "?next=/b"))
    assert setup.changed() == {"urls": [LOGIN], "expired": []}
    assert setup.changed() is None
    assert setup.known


def test_only_a_redirect_to_a_setup_url_is_a_session_that_expired() -> None:
    setup, _ = _setup({"urls": [LOGIN]})
    redirect = Request(LOGIN + "?next=/item/3", meta={"redirect_urls": ["https://example.com/item/3"]})
    assert setup.redirected_to_setup(redirect)
    assert not setup.redirected_to_setup(Request(LOGIN))  # asked for, not redirected to
    assert not setup.redirected_to_setup(Request("https://example.com/item/4",
                                                 meta={"redirect_urls": [LOGIN]}))


def test_expired_units_make_the_stage_incomplete_and_run_again_next_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = EnhancedCheckpoint(tmp_path, "s", log_every=0)
    cp.start()
    cp.add_unit(7, {"url": "https://example.com/item/7"})
    cp.add_unit(8, {"url": "https://example.com/item/8"})
    cp.finish_unit(8, processed=1, successful=1)
    cp.finish_unit(7, processed=1, failed=1)
    setup, _ = _setup({"urls": [LOGIN]})
    setup.note_expired(7)

    def attached() -> dict[str, Any] | None:
        value = setup.changed()
        return None if value is None else {ATTACHED: {"setup": value}}

    cp.add_commit_hook(attached)
    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint"):
        finish_expired(setup, cp, "s", finished=True)
        cp.complete()
    assert cp.status is Status.INCOMPLETE
    assert cp.live.info.lost == {LOST_SESSION_EXPIRED: 1}
    assert "1 request(s) were redirected to the login page" in caplog.text
    assert "Completed" not in caplog.text
    cp.close()

    again = EnhancedCheckpoint(tmp_path, "s", log_every=0)
    again.start()
    saved = again.live.attached["setup"]
    assert saved == {"urls": [LOGIN], "expired": [7]}
    setup2, _ = _setup(saved)
    assert setup2.retry_expired(again) == 1
    live = again.live
    assert 7 in live.pending
    assert 7 not in live.done
    assert LOST_SESSION_EXPIRED not in live.info.lost
    assert (live.processed, live.failed, live.successful) == (1, 0, 1)
    assert setup2.changed() == {"urls": [LOGIN], "expired": []}
    again.close()


def test_a_session_that_expires_during_the_run_runs_the_start_setup_again_then_the_page() -> None:
    crawled: list[Request] = []
    setup, _ = _setup(crawled=crawled)
    login = _login(is_start_request=True)
    setup.scheduled(login)
    setup.finished(login)
    page = Request("https://example.com/item/3", dont_filter=True)
    assert not setup.requeue(3, lambda: page), "no page worked since the login: it does not work"
    setup.worked()
    assert setup.requeue(3, lambda: page)
    assert [r.url for r in crawled] == [LOGIN], "the login again, and the page waits"
    again = crawled[0]
    setup.scheduled(again)  # what the engine's crawl() does at once
    assert setup.issued == 1, "the login issued again is not a new setup request of the run"
    assert setup.requeue(4, lambda: Request("https://example.com/item/4"))
    assert len(crawled) == 1, "one login again for the pages redirected while it runs"
    setup.finished(again)
    assert [r.url for r in crawled[1:]] == ["https://example.com/item/3",
                                            "https://example.com/item/4"]
    assert not setup.requeue(3, lambda: page), "a page is sent again once per run"


def test_no_setup_request_from_start_means_nothing_is_sent_again() -> None:
    setup, _ = _setup()
    login = _login()  # yielded by a callback, not by start()
    setup.scheduled(login)
    setup.finished(login)
    setup.worked()
    assert not setup.requeue(3, lambda: Request("https://example.com/item/3"))


def test_a_page_redirected_while_the_login_runs_waits_for_it_without_a_second_login() -> None:
    crawled: list[Request] = []
    setup, _ = _setup(crawled=crawled)
    login = _login(is_start_request=True)
    setup.scheduled(login)  # start() yields the login and a members page at once
    page = Request("https://example.com/item/3", dont_filter=True)
    assert setup.requeue(3, lambda: page)
    assert crawled == [], "the login runs already: it is not issued again"
    setup.finished(login)
    assert crawled == [page]
