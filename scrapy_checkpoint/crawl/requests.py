"""Requests as JSON for the journal: callbacks by name, bytes as base64. No pickle.

``meta`` and ``cb_kwargs`` that are plain JSON are written as they are; values of
other common types (items, datetimes, decimals, bytes, sets, tuples) are written
with their type (:mod:`.values`), and the payload lists those parts under
``"_tags"``. Loading never imports a module: a request class or item class named
in a payload must already be imported (and be a :class:`scrapy.Request` subclass
or an item class).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from scrapy import Request, Spider
from scrapy.utils.request import request_from_dict

from ..errors import CorruptCheckpointError
from . import values

#: Payload key listing the parts (``meta``, ``cb_kwargs``) written with type tags.
TAGGED = "_tags"


class UnserializableRequest(Exception):
    """The request cannot be journaled; ``kind`` says why (one warning per kind)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_SLOW = object()
#: A payload leaves out the attributes that have Request's default values (a record of a
#: plain GET is about 100 bytes, not 260); payloads written with them still load.
_DEFAULTS: dict[str, Any] = {
    "errback": None, "method": "GET", "headers": {}, "body": "", "cookies": {}, "meta": {},
    "encoding": "utf-8", "priority": 0, "dont_filter": False, "flags": [], "cb_kwargs": {},
}


def _method_name(spider: Spider, func: Any) -> Any:
    """The name of the spider method ``func``, looked up directly (``_SLOW`` if it is not
    simply the spider's attribute of its own name: an alias, or not a spider method)."""
    if not callable(func):
        return func
    underlying = getattr(func, "__func__", None)
    if underlying is not None and getattr(func, "__self__", None) is spider:
        name = underlying.__name__
        if getattr(getattr(spider, name, None), "__func__", None) is underlying:
            return name
    return _SLOW


def _request_dict(request: Request, spider: Spider) -> dict[str, Any]:
    """``request.to_dict(spider=spider)``: the same dict, without the scan of every spider
    attribute that ``to_dict`` makes to name the callback (a third of a request's cost)."""
    callback = _method_name(spider, request.callback)
    errback = _method_name(spider, request.errback)
    if callback is _SLOW or errback is _SLOW:
        return request.to_dict(spider=spider)
    d: dict[str, Any] = {"url": request.url, "callback": callback, "errback": errback,
                         "headers": dict(request.headers)}
    for attr in request.attributes:
        d.setdefault(attr, getattr(request, attr))
    if type(request) is not Request:
        d["_class"] = f"{type(request).__module__}.{type(request).__name__}"
    return d


def request_to_payload(request: Request, spider: Spider) -> dict[str, Any]:
    """A JSON-serialisable dict that :func:`payload_to_request` turns back into the request."""
    try:
        d = _request_dict(request, spider)
    except ValueError as exc:  # a callback that is not a spider method
        raise UnserializableRequest("callback", str(exc)) from None
    d["headers"] = {k.decode("latin-1"): [_b64(v) for v in vs] for k, vs in d["headers"].items()}
    d["body"] = _b64(d["body"])
    for key, default in _DEFAULTS.items():  # left out: a record is its request's own values
        if key in d and d[key] == default:
            del d[key]
    tagged = None
    for part in ("meta", "cb_kwargs"):
        value = d.get(part)
        if value and not values.is_plain(value):
            try:
                d[part] = values.encode(value)
            except values.NotJSON as exc:
                raise UnserializableRequest(part, str(exc)) from None
            if tagged is None:
                tagged = d[TAGGED] = []
            tagged.append(part)
    try:
        text = json.dumps(d)
    except (TypeError, ValueError):
        for part in ("meta", "cb_kwargs", "cookies"):
            try:
                json.dumps(d.get(part))
            except (TypeError, ValueError) as exc:
                raise UnserializableRequest(part, str(exc)) from None
        try:
            json.dumps({k: v for k, v in d.items() if k not in ("meta", "cb_kwargs", "cookies")})
        except (TypeError, ValueError) as exc:
            raise UnserializableRequest("attribute", str(exc)) from None
        raise
    # A detached copy: the live request's meta keeps changing (download_slot, latency...)
    # after it was journaled, and snapshots are encoded on another thread.
    payload: dict[str, Any] = json.loads(text)
    return payload


def _request_class(path: str) -> type[Request]:
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    cls = getattr(module, name, None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Request)):
        raise CorruptCheckpointError(
            f"A journaled request names the class {path!r}, which is not an imported "
            f"scrapy.Request subclass; import it in your project or reset the stage."
        )
    return cls


def payload_to_request(payload: dict[str, Any], spider: Spider) -> Request:
    """Rebuild a Request from :func:`request_to_payload`'s dict (callbacks found by name on
    ``spider``). Raises ValueError (or a subclass) when it cannot be rebuilt, e.g. a renamed callback."""
    d = dict(payload)
    if "_class" in d:
        _request_class(d["_class"])
    for part in d.pop(TAGGED, ()):
        d[part] = values.decode(d[part])
    d["headers"] = {k.encode("latin-1"): [base64.b64decode(v) for v in vs]
                    for k, vs in d.get("headers", {}).items()}
    d["body"] = base64.b64decode(d.get("body", ""))
    return request_from_dict(d, spider=spider)


#: The stage's attached data naming what its journaled requests need: ``[[kind, name], ...]``
#: (see :func:`needs_of`), so a resume checks names, not every payload.
NEEDS_ATTACHED = "needs"


def needs_of(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a journaled request needs from the spider and the imported modules to be rebuilt:
    ``(kind, name)`` pairs, ``kind`` being ``"callback"``, ``"errback"``, ``"request class"``
    or ``"item class"``."""
    needs = [(kind, name) for kind, name in (("callback", payload.get("callback")),
                                             ("errback", payload.get("errback")),
                                             ("request class", payload.get("_class"))) if name]
    if TAGGED in payload:
        classes: set[str] = set()
        for part in payload[TAGGED]:
            values.item_classes(payload.get(part), classes)
        needs += [("item class", path) for path in sorted(classes)]
    return needs


class Needs:
    """Whether each need (:func:`needs_of`) is met by ``spider`` (the spider or its class) and
    the imported modules, each looked up once."""

    def __init__(self, spider: Any) -> None:
        self.spider = spider
        self._found: dict[tuple[str, str], bool] = {}

    def missing(self, kind: str, name: str) -> bool:
        key = (kind, name)
        ok = self._found.get(key)
        if ok is None:
            if kind in ("callback", "errback"):
                ok = callable(getattr(self.spider, name, None))
            elif kind == "request class":
                module_name, _, cls_name = name.rpartition(".")
                cls = getattr(sys.modules.get(module_name), cls_name, None)
                ok = isinstance(cls, type) and issubclass(cls, Request)
            else:
                try:
                    values.item_class(name)
                    ok = True
                except ValueError:
                    ok = False
            self._found[key] = ok
        return not ok


def unrestorable(pending: Iterable[tuple[int, Any]], spider: Any) -> dict[str, list[int]]:
    """What the journaled requests in ``pending`` ((code, payload) pairs) need and ``spider`` (the
    spider or its class) or the imported modules no longer have: ``{what: [codes]}``, each
    ``what`` being ``"callback 'name'"``, ``"errback 'name'"``, ``"request class 'path'"`` or
    ``"item class 'path'"``. Each distinct name is looked up once; payloads that are None
    (requests that could not be journaled) are left out."""
    needs = Needs(spider)
    problems: dict[str, list[int]] = {}
    for code, payload in pending:
        if payload is None:
            continue
        for kind, name in needs_of(payload):
            if needs.missing(kind, name):
                problems.setdefault(f"{kind} {name!r}", []).append(code)
    return problems
