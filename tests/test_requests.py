"""Requests as journal payloads: JSON only, the same fields as Scrapy's own to_dict()."""

from __future__ import annotations

import json
from typing import Any

import pytest
import scrapy
from scrapy.http import FormRequest, JsonRequest
from scrapy.http.request import NO_CALLBACK

from scrapy_checkpoint.crawl.requests import (
    UnserializableRequest,
    _request_dict,
    needs_of,
    payload_to_request,
    request_record,
    request_to_payload,
    unrestorable,
)


class Spider(scrapy.Spider):
    name = "payloads"

    def parse(self, response: Any) -> None:
        pass

    def on_error(self, failure: Any) -> None:
        pass

    later = parse  # an alias: the name is found by Scrapy's scan


def _requests(spider: Spider) -> list[scrapy.Request]:
    return [
        scrapy.Request("http://127.0.0.1/a", callback=spider.parse, errback=spider.on_error,
                       meta={"depth": 2, "tags": ["x"]}, cb_kwargs={"n": 1},
                       headers={"X-Token": "t"}, cookies={"c": "d"}, priority=5,
                       dont_filter=True, flags=["f"]),
        scrapy.Request("http://127.0.0.1/b"),
        scrapy.Request("http://127.0.0.1/c", method="POST", body=b"\x00\xff"),
        FormRequest("http://127.0.0.1/d", formdata={"q": "1"}, callback=spider.later),
    ]


def test_the_dict_is_scrapys_own() -> None:
    spider = Spider()
    for request in _requests(spider):
        ours, theirs = _request_dict(request, spider), request.to_dict(spider=spider)
        # An alias may be named either way; both resolve to the same method.
        for key in ("callback", "errback"):
            if ours[key] != theirs[key]:
                assert getattr(spider, ours[key]) == getattr(spider, theirs[key])
                ours[key] = theirs[key]
        assert ours == theirs


def test_round_trip_through_json() -> None:
    spider = Spider()
    for request in _requests(spider):
        payload = json.loads(json.dumps(request_to_payload(request, spider)))
        back = payload_to_request(payload, spider)
        assert type(back) is type(request)
        assert back.to_dict(spider=spider) == request.to_dict(spider=spider)


def test_the_record_is_the_payload_encoded_once() -> None:
    """request_record(): the compact JSON of request_to_payload's dict (the bytes journaled
    before it existed) and what it needs."""
    spider = Spider()
    requests = [*_requests(spider),
                scrapy.Request("http://127.0.0.1/e", callback=spider.parse, priority=0,
                               flags=(), cookies=[{"name": "n", "value": "v"}],
                               meta={"when": (1, 2), "b": b"x", 1: "not a str key"},
                               headers={"Referer": "http://127.0.0.1/\u00e9"}),
                JsonRequest("http://127.0.0.1/f", data={"q": 1}, callback=spider.parse)]
    for request in requests:
        payload = request_to_payload(request, spider)
        data, needs = request_record(request, spider)
        assert data == json.dumps(payload, separators=(",", ":")).encode()
        assert list(needs) == needs_of(payload)


def test_the_payload_is_detached_from_the_live_request() -> None:
    spider = Spider()
    request = _requests(spider)[0]
    payload = request_to_payload(request, spider)
    request.meta["download_slot"] = "changed later"
    request.meta["tags"].append("y")
    assert "download_slot" not in payload["meta"]
    assert payload["meta"]["tags"] == ["x"]


def _cyclic() -> dict[str, Any]:
    cookies: dict[str, Any] = {}
    cookies["me"] = cookies
    return cookies


@pytest.mark.parametrize(("make", "kind"), [
    (lambda s: scrapy.Request("http://127.0.0.1/", callback=lambda r: None), "callback"),
    (lambda s: scrapy.Request("http://127.0.0.1/", callback=NO_CALLBACK), "callback"),
    (lambda s: scrapy.Request("http://127.0.0.1/", meta={"obj": object()}), "meta"),
    (lambda s: scrapy.Request("http://127.0.0.1/", cb_kwargs={"s": {1, object()}}), "cb_kwargs"),
    (lambda s: scrapy.Request("http://127.0.0.1/", cookies={"c": object()}), "cookies"),
    (lambda s: scrapy.Request("http://127.0.0.1/", cookies=_cyclic()), "cookies"),
    (lambda s: scrapy.Request("http://127.0.0.1/", flags=[object()]), "attribute"),
])
def test_what_cannot_be_journaled_says_why(make: Any, kind: str) -> None:
    spider = Spider()
    for journal in (request_to_payload, request_record):
        with pytest.raises(UnserializableRequest) as info:
            journal(make(spider), spider)
        assert info.value.kind == kind


@pytest.mark.parametrize("name", ["__init__", "__class__", "__setattr__", "__del__"])
def test_a_journaled_callback_naming_a_special_method_is_refused(name: str) -> None:
    """A forged request record naming the callback ``__init__`` (or ``__class__``) was
    rebuilt with that bound method: the response would have re-initialised (or built a new)
    spider. Such a name is not a spider method: the request is unrestorable, said at resume."""
    spider = Spider()
    payload = {"url": "http://127.0.0.1/a", "callback": name}
    with pytest.raises(ValueError, match=f"callback '{name}', which is not a method"):
        payload_to_request(payload, spider)
    errback = {"url": "http://127.0.0.1/a", "callback": "parse", "errback": name}
    with pytest.raises(ValueError, match=f"errback '{name}'"):
        payload_to_request(errback, spider)
    assert unrestorable([(1, payload), (2, errback)], spider) == {
        f"callback {name!r}": [1], f"errback {name!r}": [2]}
    assert payload_to_request({"url": "http://127.0.0.1/a", "callback": "parse"},
                              spider).callback == spider.parse
