"""``spider.state``: the spider's own dict, kept across runs in the journal.

Scrapy gives a spider ``self.state`` only with ``JOBDIR`` (its ``SpiderState``
extension pickles it at ``spider_closed``, so a kill loses it). Here it is a JSON
value journaled with the requests whose callbacks changed it.

**The rule.** A callback changes the dict in place, and the journal cannot tell
which request made which change; so the state is journaled only at a moment when
no callback is running (:func:`~.engine_hooks.callbacks_idle`: no request between
the start of its callback or errback and its done record). The dict taken then
holds the changes of exactly the requests done so far, and it is journaled in the
same group as their done records. While the spider's state is not empty, a commit
that falls due is put off to the first such moment (the commit gate); a request
done after it waits with its change for the next one. So after any crash the
resumed run starts from a state that holds the changes of the requests it will not
run again, and of no other: for deterministic callbacks the final state is the
uninterrupted run's.

**Its limits.** Changes made outside callbacks (``start()``, ``spider_opened``,
pipelines' ``open_spider``) are journaled with whichever group comes next, and
``start()`` runs again on every run. A crawl in which a callback is always running
(long ``await`` in callbacks, many at once) commits only when one is not; a warning
says so after :data:`WAIT_WARNING` seconds. A commit that cannot wait (a status
change, a close without Scrapy's cleanup, e.g. a second Ctrl-C) while a callback
runs journals the requests done without the state of that moment: their changes
are then lost if no later commit follows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ..checkpoint import EnhancedCheckpoint
from ..clock import monotonic
from ..errors import CheckpointError
from ..journal.groups import USER_STATE

logger = logging.getLogger("scrapy_checkpoint")

#: Seconds a due commit may wait for a moment with no callback running before a warning.
WAIT_WARNING = 60.0

_SCALARS = (str, int, float, bool, type(None))


class SpiderStateError(CheckpointError):
    """``spider.state`` holds something JSON cannot hold as it is."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        super().__init__(
            f"{path} {what}. scrapy-checkpoint keeps spider.state across runs as JSON: dicts "
            f"with str keys, lists, str, int, float, bool and None only, so that a resumed "
            f"run reads back exactly what was stored. Store it as one of those (a set or "
            f"tuple as a list, a datetime as an ISO string, an object as a dict of its "
            f"fields)."
        )


def check_json(value: Any, path: str = "spider.state") -> None:
    """Raise :class:`SpiderStateError` naming the first place in ``value`` (reached by
    ``path``) that is not a JSON value of an exact JSON type."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise SpiderStateError(path, f"has the key {key!r} ({type(key).__name__}), "
                                             f"but JSON keys are strings")
            check_json(item, f"{path}[{key!r}]")
    elif kind is list:
        for i, item in enumerate(value):
            check_json(item, f"{path}[{i}]")
    elif kind not in _SCALARS:
        raise SpiderStateError(path, f"is a {kind.__name__}, which JSON cannot hold")


def encode_state(state: Any) -> str:
    """``state`` as compact JSON text; :class:`SpiderStateError` if it is not a dict of JSON
    values."""
    if type(state) is not dict:
        raise SpiderStateError("spider.state", f"is a {type(state).__name__}, not a dict")
    check_json(state)
    return json.dumps(state, ensure_ascii=False, separators=(",", ":"))


def give_completed_state(spider: Any, cp: EnhancedCheckpoint | None) -> None:
    """Give ``spider`` (if any, and unless it has one) the ``spider.state`` its completed stage
    ended with (a copy; ``{}`` if it kept none), for a run that crawls nothing: its
    ``closed()`` and pipelines still read it."""
    if spider is None or isinstance(getattr(spider, "state", None), dict):
        return
    restored = cp.live.user_state if cp is not None else None
    spider.state = json.loads(json.dumps(restored)) if isinstance(restored, dict) else {}


class SpiderStateKeeper:
    """Gives the spider its ``state`` at open and journals it (see the module docstring).

    ``cp`` is the open checkpoint; ``callbacks_idle()`` tells whether no callback is
    running now. :meth:`ready` is the checkpoint's commit gate, :meth:`fields` part of
    its commit hook.
    """

    def __init__(self, cp: EnhancedCheckpoint, callbacks_idle: Callable[[], bool]) -> None:
        self.cp = cp
        self.stage = cp.stage
        self._idle = callbacks_idle
        self._spider: Any = None
        restored = cp.live.user_state
        self._committed = json.dumps(restored if isinstance(restored, dict) else {},
                                     ensure_ascii=False, separators=(",", ":"))
        #: Set once the state could not be journaled: the run cannot record a consistent state.
        self.error: SpiderStateError | None = None
        self._waiting_since: float | None = None
        self._warned = False

    def attach(self, spider: Any) -> None:
        """Set ``spider.state`` to the journaled state (a new dict if there is none); once per
        spider."""
        if spider is self._spider:
            return
        spider.state = json.loads(self._committed)  # a copy: the live state is never shared
        self._spider = spider

    def ready(self) -> bool:
        """The commit gate: False while the state may hold a change of a running callback."""
        spider = self._spider
        if spider is None or self.error is not None:
            return True
        if not getattr(spider, "state", None) and self._committed == "{}":
            return True  # a spider that keeps nothing never waits
        if self._idle():
            self._waiting_since = None
            return True
        now = monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        elif not self._warned and now - self._waiting_since >= WAIT_WARNING:
            self._warned = True
            logger.warning(
                "Stage %s: for %d s a callback was running at every moment, so spider.state "
                "and the requests finished since are not journaled yet (a crash now runs them "
                "again). They are journaled at the first moment no callback runs.",
                self.stage, now - self._waiting_since)
        return False

    def fields(self) -> dict[str, Any] | None:
        """The state to journal with this commit, if it changed and no callback is running.
        Raises :class:`SpiderStateError` (again at every later commit) if it is not JSON."""
        if self.error is not None:
            raise self.error
        spider = self._spider
        if spider is None or not self._idle():
            return None
        try:
            text = encode_state(getattr(spider, "state", None))
        except SpiderStateError as exc:
            self.error = exc
            raise
        if text == self._committed:
            return None
        self._committed = text
        return {USER_STATE: json.loads(text)}


__all__ = ["SpiderStateError", "SpiderStateKeeper", "check_json", "encode_state"]
