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
from .rules import RULE, has_rule, rule_index, rule_of

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


def callbacks_by_name(request: Request, spider: Spider) -> bool:
    """True when ``request``'s callback and errback can be journaled: none, or methods of
    ``spider`` (found by their name, or under another attribute as ``to_dict`` finds them)."""
    if (_method_name(spider, request.callback) is not _SLOW
            and _method_name(spider, request.errback) is not _SLOW):
        return True
    try:
        request.to_dict(spider=spider)
    except ValueError:
        return False
    return True


def _b64_cached(data: bytes, cache: dict[bytes, str]) -> str:
    """:func:`_b64` of a header value, remembered: the requests a page yields share their
    Referer (the cache is emptied when it holds 64 values)."""
    text = cache.get(data)
    if text is None:
        if len(cache) >= 64:
            cache.clear()
        text = cache[data] = _b64(data)
    return text


_HEADER_TEXT: dict[bytes, str] = {}


def _plain_dict(request: Request, spider: Spider) -> dict[str, Any] | None:
    """:func:`_request_dict` as journaled (headers and body as base64, attributes with
    Request's defaults left out), built in one pass for a :class:`Request` whose callback
    and errback are named directly; else (``None``) the caller takes the general path. The
    keys come in the same order, so the record is the same bytes."""
    if request.attributes is not _PLAIN_ATTRIBUTES:
        return None
    callback = _method_name(spider, request.callback)
    errback = _method_name(spider, request.errback)
    if callback is _SLOW or errback is _SLOW:
        return None
    d: dict[str, Any] = {"url": request.url, "callback": callback}
    if errback is not None:
        d["errback"] = errback
    headers: dict[Any, Any] = dict(request.headers)
    if headers:
        cache = _HEADER_TEXT
        d["headers"] = {k.decode("latin-1"): [_b64_cached(v, cache) for v in vs]
                        for k, vs in headers.items()}
    for attr, default in _PLAIN_DEFAULTS:  # left out as the general path does
        value = getattr(request, attr)
        if value != default:
            d[attr] = value
    if "body" in d:
        d["body"] = _b64(d["body"])
    if type(request) is not Request:
        d["_class"] = f"{type(request).__module__}.{type(request).__name__}"
    return d


#: The attributes of the requests :func:`_plain_dict` builds (a subclass that adds some
#: takes the general path).
_PLAIN_ATTRIBUTES = Request.attributes
#: The attributes :func:`_plain_dict` copies, in Request.attributes' order (so in the
#: general path's), and the values left out (``_SLOW``: none; the body before base64).
_PLAIN_DEFAULTS = tuple((attr, b"" if attr == "body" else _DEFAULTS.get(attr, _SLOW))
                        for attr in _PLAIN_ATTRIBUTES
                        if attr not in ("url", "callback", "errback", "headers"))


def _payload_dict(request: Request, spider: Spider) -> dict[str, Any]:
    """The request's payload, not detached: ``meta``, ``cb_kwargs``, ``cookies`` and
    ``flags`` may be the live request's own (encode it at once)."""
    d = _plain_dict(request, spider)
    if d is None:
        try:
            d = _request_dict(request, spider)
        except ValueError as exc:  # a callback that is not a spider method
            raise UnserializableRequest("callback", str(exc)) from None
        d["headers"] = {k.decode("latin-1"): [_b64(v) for v in vs]
                        for k, vs in d["headers"].items()}
        d["body"] = _b64(d["body"])
        for key, default in _DEFAULTS.items():  # left out: a record is its request's own values
            if key in d and d[key] == default:
                del d[key]
    rule = rule_of(d, spider)
    if rule is not None:  # a CrawlSpider rule's request: the rule by signature, not by index
        d[RULE] = rule
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
    return d


def _dumps_checked(d: dict[str, Any]) -> str:
    """``json.dumps(d)``; UnserializableRequest naming the part that is not JSON."""
    try:
        return json.dumps(d)
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


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _fast_compact() -> Any:
    """``_COMPACT.encode`` without building an encoder per call (``json`` makes one on each
    ``encode``, a third of the cost of a request's record): the C encoder, made once, without
    the circular-reference check (a cycle raises RecursionError, and the caller takes the
    checked path). None when this Python has no C encoder or it does not write what
    ``_COMPACT`` writes."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder = make(None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",",
                       False, False, True)
        sample = {"a": [1, 2.5, None, True, "\u00e9"], "b": {"c": float("inf")}, "d": 1 << 64}
        if "".join(encoder(sample, 0)) != _COMPACT.encode(sample):
            return None
    except Exception:
        return None
    return encoder


_FAST_COMPACT = _fast_compact()


def request_record(request: Request, spider: Spider) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """The request's record (its :func:`request_to_payload` payload as compact UTF-8 JSON,
    encoded once) and what it needs (:func:`needs_of`, as a tuple). Raises
    UnserializableRequest as :func:`request_to_payload`."""
    d = _payload_dict(request, spider)
    text = None
    if _FAST_COMPACT is not None:
        try:
            text = "".join(_FAST_COMPACT(d, 0))
        except (TypeError, ValueError, RecursionError):
            text = None  # the checked path says what is wrong
    if text is None:
        _dumps_checked(d)
        text = _COMPACT.encode(d)
    return text.encode(), _needs(d)


def request_to_payload(request: Request, spider: Spider) -> dict[str, Any]:
    """A JSON-serialisable dict that :func:`payload_to_request` turns back into the request."""
    d = _payload_dict(request, spider)
    text = _dumps_checked(d)
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


def spider_method(spider: Any, name: Any) -> bool:
    """True if ``name``, read from a journal, may be called back on ``spider`` (the spider or
    its class): a callable attribute, and no special method (``__init__``, ``__class__``...):
    a forged journal must not have the crawl re-initialise or rebuild its spider."""
    return (isinstance(name, str) and not (name.startswith("__") and name.endswith("__"))
            and callable(getattr(spider, name, None)))


def payload_to_request(payload: dict[str, Any], spider: Spider) -> Request:
    """Rebuild a Request from :func:`request_to_payload`'s dict (callbacks found by name on
    ``spider``). Raises ValueError (or a subclass) when it cannot be rebuilt, e.g. a renamed callback."""
    d = dict(payload)
    if "_class" in d:
        _request_class(d["_class"])
    for key in ("callback", "errback"):
        name = d.get(key)
        if name and not spider_method(spider, name):
            raise ValueError(f"A journaled request names the {key} {name!r}, which is not a "
                             f"method of spider {getattr(spider, 'name', spider)!r}")
    for part in d.pop(TAGGED, ()):
        d[part] = values.decode(d[part])
    rule = d.pop(RULE, None)
    if rule is not None:  # the index of its rule in the spider's rules of this run
        d["meta"] = dict(d.get("meta") or {})
        rule_index(rule, d["meta"], spider)
    d["headers"] = {k.encode("latin-1"): [base64.b64decode(v) for v in vs]
                    for k, vs in d.get("headers", {}).items()}
    d["body"] = base64.b64decode(d.get("body", ""))
    return request_from_dict(d, spider=spider)


#: The stage's attached data naming what its journaled requests need: ``[[kind, name], ...]``
#: (see :func:`needs_of`), so a resume checks names, not every payload.
NEEDS_ATTACHED = "needs"


def needs_of(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a journaled request needs from the spider and the imported modules to be rebuilt:
    ``(kind, name)`` pairs, ``kind`` being ``"callback"``, ``"errback"``, ``"request class"``,
    ``"item class"`` or ``"rule"`` (a CrawlSpider rule's signature, see :mod:`.rules`)."""
    return list(_needs(payload))


def _needs(payload: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """:func:`needs_of` as a tuple (the same for most requests of a crawl: a set key)."""
    get = payload.get
    callback, errback, cls = get("callback"), get("errback"), get("_class")
    needs: tuple[tuple[str, str], ...] = ()
    if callback:
        needs = (("callback", callback),)
    if errback:
        needs += (("errback", errback),)
    if cls:
        needs += (("request class", cls),)
    rule = get(RULE)
    if rule:
        needs += (("rule", rule),)
    if TAGGED in payload:
        classes: set[str] = set()
        for part in payload[TAGGED]:
            values.item_classes(payload.get(part), classes)
        needs += tuple(("item class", path) for path in sorted(classes))
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
                ok = spider_method(self.spider, name)
            elif kind == "rule":
                ok = has_rule(self.spider, name)
            elif kind == "request class":
                module_name, _, cls_name = name.rpartition(".")
                cls = getattr(sys.modules.get(module_name), cls_name, None)
                ok = isinstance(cls, type) and issubclass(cls, Request)
            else:
                try:
                    values.value_class(name)  # an item class, or a named tuple or enum class
                    ok = True
                except ValueError:
                    ok = False
            self._found[key] = ok
        return not ok


def unrestorable(pending: Iterable[tuple[int, Any]], spider: Any) -> dict[str, list[int]]:
    """What the journaled requests in ``pending`` ((code, payload) pairs) need and ``spider`` (the
    spider or its class) or the imported modules no longer have: ``{what: [codes]}``, each
    ``what`` being ``"callback 'name'"``, ``"errback 'name'"``, ``"request class 'path'"``,
    ``"item class 'path'"`` or ``"CrawlSpider rule 'signature'"`` (a rule removed or
    changed). Each distinct name is looked up once; payloads that are None
    (requests that could not be journaled) are left out."""
    needs = Needs(spider)
    problems: dict[str, list[int]] = {}
    for code, payload in pending:
        if payload is None:
            continue
        for kind, name in needs_of(payload):
            if needs.missing(kind, name):
                what = "CrawlSpider rule" if kind == "rule" else kind
                problems.setdefault(f"{what} {name!r}", []).append(code)
    return problems
