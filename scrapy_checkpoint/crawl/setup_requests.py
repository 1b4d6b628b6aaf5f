"""Setup requests: what every run must do again before resumed requests go out.

Sessions expire. A crawl that logs in (or fetches a CSRF token, then logs in) and is
killed resumes with the cookie jars it had (:mod:`.sessions`), but the server may
have forgotten that session by then. Mark such requests::

    yield scrapy.FormRequest(url, formdata=..., callback=self.after_login,
                             dont_filter=True, meta={"checkpoint_setup": True})

A setup request is not a unit of the checkpoint: it runs in every run (never skipped
as done by an earlier run, never resumed from the journal: ``start()`` or a setup
callback issues it again), it is not counted in the stage's progress, and its items
are written when scraped (as with ``checkpoint_ignore``). The mark is carried by
``meta``, so its redirects and retries are setup requests too; requests its callback
yields are not, unless marked.

The stage records the URLs of its setup requests (scheme, host and path). From then on:

- a run that resumes pending requests holds them (:meth:`SetupRequests.hold`) until
  every setup request issued in this run so far has finished, its callback's output
  included (so a chain of marked requests is waited for as a whole); if the run
  goes idle without issuing one, they are released with one warning;
- a unit whose request is redirected to the URL of a setup request (the login page:
  the session expired) is not done and successful, and the login page is not scraped
  for it (the redirect is dropped). The setup requests ``start()`` yielded run again
  and the unit's request is sent once more after them (:meth:`SetupRequests.requeue`).
  A unit redirected again, or when that cannot be done, counts as failed
  (``checkpoint/session_expired``): the stage ends ``incomplete`` rather than
  ``completed``, and the next run fetches it again after its setup requests
  (:meth:`SetupRequests.retry_expired`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from weakref import WeakSet

from scrapy import Request

from ..state import LOST_SESSION_EXPIRED

if TYPE_CHECKING:
    from ..checkpoint import EnhancedCheckpoint

logger = logging.getLogger("scrapy_checkpoint")

#: Set ``request.meta["checkpoint_setup"] = True`` on a request every run must make again
#: before resumed requests are sent (a login, a CSRF token fetch).
SETUP_META = "checkpoint_setup"
#: The name the setup URLs and the session-expired units are kept under in the stage's
#: attached data: ``{"urls": [str, ...], "expired": [code, ...]}``.
ATTACHED_NAME = "setup"
#: At most this many setup URLs are kept (a spider that marks every request stays cheap).
MAX_URLS = 32
#: A setup request from ``start()`` issued again by this module (not a new one of the run).
_AGAIN_META = "_checkpoint_setup_again"


def url_key(url: str) -> str:
    """``scheme://host/path`` of ``url``, lower-cased scheme and host, without query or fragment:
    what a redirect to the login page is recognised by (``/login?next=/item/3`` is ``/login``)."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path or '/'}"


class SetupRequests:
    """The setup requests of one crawl, and the resumed requests they hold back.

    ``saved`` is what the stage holds under :data:`ATTACHED_NAME` (None: nothing yet);
    ``warn_once(kind, message)`` logs a warning once; ``stage`` names the stage in messages;
    ``crawl(request)`` hands a request to the engine (setup requests issued again, and the
    requests sent again after them).
    """

    def __init__(self, saved: Any, stats: Any, warn_once: Callable[[str, str], None],
                 stage: str, crawl: Callable[[Request], None]) -> None:
        saved = saved if isinstance(saved, dict) else {}
        self.stats = stats
        self.crawl = crawl
        self.warn_once = warn_once
        self.stage = stage
        #: The setup URLs of the stage (see :func:`url_key`), earlier runs' first.
        self.urls: list[str] = [u for u in saved.get("urls", ()) if isinstance(u, str)]
        self._url_set = set(self.urls)
        #: URLs of logins that are not setup requests: POST requests answered with cookies
        #: (see :func:`url_key`). Those of earlier runs are "stale" in this run until it logs
        #: in again: a redirect to one is a session that expired while the crawl was stopped.
        self.logins: list[str] = [u for u in saved.get("logins", ()) if isinstance(u, str)]
        self._stale_logins = set(self.logins)
        #: The cookie jars (``meta["cookiejar"]``) that logged in during this run.
        self._renewed_jars: set[Any] = set()
        #: A unit was redirected to a stale login (the warning names the mark to use).
        self.stale_hit = False
        #: Units redirected to a setup URL and not fetched again since (failed units).
        self.expired: set[int] = {int(c) for c in saved.get("expired", ())}
        #: Setup requests issued in this run (not counting their redirects and retries).
        self.issued = 0
        #: Units of this run redirected to a setup URL.
        self.expired_here = 0
        # Setup requests scheduled and not finished. Weak: one dropped by another component
        # without a signal does not hold the resumed requests for ever.
        self._outstanding: WeakSet[Request] = WeakSet()
        self._held: list[Any] | None = None
        self._release: Callable[[list[Any]], int] | None = None
        self._dirty = False
        # Sessions that expire during the run: the setup requests start() yielded (issued
        # again when a unit is redirected to a setup URL), the units' requests waiting for
        # them, the units sent again in this run (once each), whether the setup requests were
        # issued again and have not finished, and whether a unit succeeded since they last were.
        self._roots: list[Request] = []
        self._again: list[Request] = []
        self._sent_again: set[int] = set()
        self._rerunning = False
        self._worked = False

    @property
    def known(self) -> bool:
        """True when the stage is known (journaled) to use setup requests."""
        return bool(self._url_set)

    @property
    def holding(self) -> bool:
        """True while resumed requests are held."""
        return self._held is not None

    # -- at open ------------------------------------------------------------------------

    def retry_expired(self, cp: EnhancedCheckpoint) -> int:
        """Make the units an earlier run found redirected to a setup URL pending again (they
        are fetched with the resumed requests, after this run's setup requests), and take
        back their ``session_expired`` loss. Returns how many run again."""
        codes = [code for code in self.expired if code in cp.live.failed_units]
        again = cp.retry_units(codes)
        lost = cp.live.info.lost.get(LOST_SESSION_EXPIRED, 0)
        if lost:
            cp.record_lost(LOST_SESSION_EXPIRED, -lost)
        if self.expired:
            self.expired.clear()
            self._dirty = True
        if again:
            logger.info("Stage %s: %d request(s) redirected to the login page (a setup "
                        "request's URL) in an earlier run are fetched again.", self.stage, again)
        return again

    def hold(self, payloads: list[Any], release: Callable[[list[Any]], int]) -> bool:
        """Keep ``payloads`` (the resumed requests) until this run's setup requests finished,
        when the stage uses setup requests; ``release(payloads)`` schedules them then and
        returns how many it scheduled (not those the crawl scheduled again meanwhile). True
        if they are held."""
        if not self.known or not payloads:
            return False
        self._held, self._release = payloads, release
        logger.info("Stage %s: %d resumed request(s) held until this run's setup requests "
                    "(meta %r) have finished.", self.stage, len(payloads), SETUP_META)
        return True

    # -- the setup requests' lifecycle (from the frontier) ------------------------------------

    def scheduled(self, request: Request) -> None:
        """A setup request was handed to the scheduler."""
        self._outstanding.add(request)
        meta = request.meta
        if "redirect_urls" in meta or "retry_times" in meta or _AGAIN_META in meta:
            return  # the same setup request, continued or issued again
        if meta.get("is_start_request"):
            self._roots.append(request.replace(dont_filter=True))
        self.issued += 1
        self.stats.inc_value("checkpoint/setup_requests")
        key = url_key(request.url)
        if key not in self._url_set and len(self._url_set) < MAX_URLS:
            self._url_set.add(key)
            self.urls.append(key)
            self._dirty = True

    def dropped(self, request: Request) -> None:
        """A setup request was refused by the scheduler (its dupefilter)."""
        self.finished(request)

    def finished(self, request: Request) -> None:
        """The engine is done with a setup request (its callback's output included): release
        the held requests once no setup request is outstanding."""
        if request not in self._outstanding:
            return
        self._outstanding.discard(request)
        if self._outstanding:
            return
        if self._held is not None:
            self._do_release("after this run's setup requests finished")
        self._rerunning = False
        self._send_again()

    def idle(self) -> bool:
        """The engine is about to go idle (``spider_idle``): release the held requests. True
        if there were some (keep the spider open: they are scheduled now)."""
        if self._again:  # the setup requests issued again never finished (dropped unseen)
            self._rerunning = False
            self._send_again()
            return True
        if self._held is None:
            return False
        if not self.issued:
            self.warn_once("setup:none", (
                f"Stage {self.stage} used setup requests (meta {SETUP_META!r}) in earlier runs, "
                f"but this run issued none: {len(self._held)} resumed request(s) are sent "
                f"without them."))
            self._do_release("without setup requests")
        else:
            self._do_release("with setup requests unfinished")
        return True

    def _do_release(self, how: str) -> None:
        held, release = self._held, self._release
        self._held = self._release = None
        assert held is not None
        assert release is not None
        sent = release(held)
        logger.info("Stage %s: %d resumed request(s) released %s (%d sent, %d already "
                    "scheduled again by the crawl meanwhile).", self.stage, len(held), how,
                    sent, len(held) - sent)

    # -- sessions that expired -------------------------------------------------------------

    def redirected_to_setup(self, request: Request) -> bool:
        """True when ``request`` is a redirect to the URL of one of the stage's setup requests
        (scheme, host and path compared), or to the URL of a login an earlier run made, while
        this run has not logged in again in the request's cookie jar (the session expired
        while the crawl was stopped)."""
        if not ((self._url_set or self._stale_logins) and request.meta.get("redirect_urls")):
            return False
        key = url_key(request.url)
        if key in self._url_set:
            return True
        if key in self._stale_logins and request.meta.get("cookiejar") not in self._renewed_jars:
            self.stale_hit = True
            return True
        return False

    def response_downloaded(self, response: Any, request: Request, **_: Any) -> None:
        """``response_downloaded`` signal: a POST that is not a setup request answered with
        cookies is a login; its URL is kept for the next runs (see :attr:`logins`), and this
        run has a session of its own in that request's cookie jar from now on."""
        if (request.method != "POST" or request.meta.get(SETUP_META)
                or not response.headers.getlist(b"Set-Cookie")):
            return
        self._renewed_jars.add(request.meta.get("cookiejar"))
        key = url_key(request.url)
        if key not in self.logins and len(self.logins) < MAX_URLS:
            self.logins.append(key)
            self._dirty = True

    def worked(self) -> None:
        """A unit was done successfully: the session worked (since the setup requests last ran,
        unless they run again now)."""
        if not self._rerunning:
            self._worked = True

    def requeue(self, code: int, rebuild: Callable[[], Request | None]) -> bool:
        """Unit ``code``'s request was redirected to a setup URL during this run: keep
        ``rebuild()`` (its request, to send again) until no setup request is running (the
        setup requests ``start()`` yielded are issued again now, unless some are running),
        then send it. False, and nothing kept, when it cannot be: the unit was sent again
        already in this run, ``rebuild()`` returns None, or no setup request runs and they
        cannot run again (``start()`` yielded none, or they ran again and no unit succeeded
        since: the login does not work)."""
        running = bool(self._outstanding)  # the run's first setup requests, or again
        if code in self._sent_again or not (running or (self._roots and self._worked)):
            return False
        request = rebuild()
        if request is None:
            return False
        self._sent_again.add(code)
        self._again.append(request)
        self.stats.inc_value("checkpoint/session_expired_sent_again")
        if not running:
            self._rerunning, self._worked = True, False
            self.stats.inc_value("checkpoint/setup_requests_again")
            logger.info("Stage %s: %s was redirected to the login page (the session "
                        "expired); the %d setup request(s) of start() run again, and the "
                        "requests redirected so are sent once more after them.", self.stage,
                        request.url, len(self._roots))
            for root in self._roots:
                again = root.replace()
                again.meta[_AGAIN_META] = True
                self.crawl(again)
        return True

    def _send_again(self) -> None:
        again, self._again = self._again, []
        for request in again:
            self.crawl(request)

    def note_expired(self, code: int) -> None:
        """Unit ``code`` was redirected to a setup URL: it is done as failed, and fetched again
        by the next run."""
        self.expired.add(code)
        self.expired_here += 1
        self._dirty = True
        self.stats.inc_value("checkpoint/session_expired")

    def pending_expired(self, cp: EnhancedCheckpoint) -> int:
        """Units redirected to a setup URL that are still failed (not fetched again)."""
        failed = cp.live.failed_units
        return sum(code in failed for code in self.expired)

    def changed(self) -> dict[str, Any] | None:
        """What the stage keeps (see :data:`ATTACHED_NAME`) if it changed since the last call
        (called before each journal commit), else None."""
        if not self._dirty:
            return None
        self._dirty = False
        saved: dict[str, Any] = {"urls": list(self.urls), "expired": sorted(self.expired)}
        if self.logins:
            saved["logins"] = list(self.logins)
        return saved


def finish_expired(setup: SetupRequests, cp: EnhancedCheckpoint, stage: str, *,
                   finished: bool) -> None:
    """At the end of a run: say how many units were redirected to a setup URL and not fetched
    again (one warning). ``finished`` (the crawl ran out of requests): that is work not done,
    so the stage ends ``incomplete``, not ``completed``. They stay failed units either way;
    the next run fetches them again."""
    n = setup.pending_expired(cp)
    if not n:
        return
    if finished:
        cp.record_lost(LOST_SESSION_EXPIRED, n - cp.live.info.lost.get(LOST_SESSION_EXPIRED, 0))
    if setup.stale_hit and not setup.known:
        logger.warning(
            "Stage %s: %d request(s) were redirected to the login page that an earlier run "
            "logged in at (%s): the session it opened expired while the crawl was stopped, and "
            "this run did not log in again. They are not scraped and count as failed "
            "(checkpoint/session_expired). Mark the requests that log in (the login page and "
            "its form) meta[%r] = True, so that every run makes them again before the resumed "
            "requests, and run the same command again.", stage, n, ", ".join(setup.logins),
            SETUP_META)
        return
    logger.warning(
        "Stage %s: %d request(s) were redirected to the login page (the URL of a setup "
        "request: the session expired) and not scraped. They count as failed "
        "(checkpoint/session_expired); run the same command again to fetch them after the "
        "setup requests.", stage, n)
