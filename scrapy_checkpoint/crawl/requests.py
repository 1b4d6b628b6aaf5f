"""Requests as JSON for the journal: callbacks by name, bytes as base64. No pickle.

Loading never imports a module: a request class named in a payload must
already be imported and be a :class:`scrapy.Request` subclass.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from scrapy import Request, Spider
from scrapy.utils.request import request_from_dict

from ..errors import CorruptCheckpointError


class UnserializableRequest(Exception):
    """The request cannot be journaled; ``kind`` says why (one warning per kind)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_SLOW = object()


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
    d["headers"] = {k.encode("latin-1"): [base64.b64decode(v) for v in vs]
                    for k, vs in d["headers"].items()}
    d["body"] = base64.b64decode(d["body"])
    return request_from_dict(d, spider=spider)
