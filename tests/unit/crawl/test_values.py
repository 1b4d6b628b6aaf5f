"""meta and cb_kwargs values through the journal: their types come back, nothing else is built."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import sys
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest
import scrapy

from scrapy_checkpoint.crawl import values
from scrapy_checkpoint.crawl.requests import (
    TAGGED,
    UnserializableRequest,
    needs_of,
    payload_to_request,
    request_to_payload,
    unrestorable,
)

attr = pytest.importorskip("attr")


class Product(scrapy.Item):
    name = scrapy.Field()
    price = scrapy.Field()
    seen = scrapy.Field()


@dataclasses.dataclass
class Offer:
    sku: str
    price: Decimal
    tags: tuple[str, ...] = ()
    total: int = dataclasses.field(init=False, default=0)


@dataclasses.dataclass(frozen=True)
class Frozen:
    key: str


@attr.s(auto_attribs=True)
class Listing:
    title: str
    _secret: bytes = b""


def _parse_price(text: str) -> float:
    return float(text.replace("$", "").strip())


@attr.s(auto_attribs=True)
class Priced:
    """An attrs item whose converter takes the listing's text: it must not run again."""

    name: str
    price: float = attr.ib(converter=_parse_price)


@dataclasses.dataclass
class Tagged:
    """A dataclass whose ``__post_init__`` changes a field: it must not run again."""

    name: str
    tags: list[str] = dataclasses.field(default_factory=list)
    checked: bool = False

    def __post_init__(self) -> None:
        self.tags.append("listing")


class Point(NamedTuple):
    x: int
    label: str = ""


class Pair(collections.namedtuple("Pair", "a b")):
    def __new__(cls, a: Any, b: Any) -> Pair:
        raise AssertionError("a journaled named tuple is made without its own __new__")


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 2


class UserDict(dict):  # type: ignore[type-arg]
    """A dict subclass of the user's own: not JSON (it would come back a dict)."""

    def __missing__(self, key: Any) -> int:
        return 0


class Spider(scrapy.Spider):
    name = "values"

    def parse(self, response: Any) -> None:
        pass

    def parse_item(self, response: Any, **kwargs: Any) -> None:
        pass

    def on_error(self, failure: Any) -> None:
        pass


def _through_json(value: Any) -> Any:
    return values.decode(json.loads(json.dumps(values.encode(value))))


TYPED = [
    (1, 2, (3, "x")),
    {1, 2, 3},
    frozenset({"a"}),
    b"\x00\xff bytes",
    datetime(2026, 11, 30, 1, 2, 3, 456789),
    datetime(2026, 11, 30, 1, 2, 3, tzinfo=timezone.utc),
    datetime(2026, 11, 30, 1, 2, 3, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1),
    date(2026, 2, 28),
    Decimal("19.990"),
    Decimal("-0"),
    {1: "int key", None: "none key", (1, 2): "tuple key"},
    {"$t": "a user's own key", "v": 1},
    [Decimal("1.5"), {"nested": {"when": date(2020, 1, 1), "ids": (1, 2)}}],
]


@pytest.mark.parametrize("value", TYPED, ids=lambda v: type(v).__name__)
def test_common_types_come_back_with_their_type(value: Any) -> None:
    back = _through_json(value)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, datetime):
        assert back.tzinfo == value.tzinfo
        assert back.fold == value.fold
        assert str(back.utcoffset()) == str(value.utcoffset())


def test_nested_elements_keep_their_types_too() -> None:
    value = {"a": [(1, b"x")], "b": {"c": {Decimal("2")}}}
    back = _through_json(value)
    assert back == value
    assert type(back["a"][0]) is tuple
    assert type(back["a"][0][1]) is bytes
    assert type(next(iter(back["b"]["c"]))) is Decimal


def test_a_scrapy_item_comes_back_as_its_class_with_its_fields() -> None:
    item = Product(name="Lamp", price=Decimal("9.50"), seen={date(2026, 1, 2)})
    back = _through_json({"item": item})["item"]
    assert type(back) is Product
    assert dict(back) == dict(item)
    partial = _through_json(Product(name="only a name"))
    assert dict(partial) == {"name": "only a name"}


def test_dataclass_and_attrs_items_come_back_as_their_classes() -> None:
    offer = Offer("s-1", Decimal("3.10"), ("new",))
    offer.total = 7  # a field the constructor does not take
    back = _through_json(offer)
    assert type(back) is Offer
    assert back == offer
    assert back.total == 7
    assert _through_json(Frozen("k")) == Frozen("k")
    listing = Listing("Chair", b"\x01")
    back_listing = _through_json(listing)
    assert type(back_listing) is Listing
    assert back_listing == listing


def test_items_come_back_as_journaled_without_running_their_constructor() -> None:
    # attrs converters and validators, and __post_init__, ran when the item was built; run
    # again on what they produced, a converter fails ('float' has no 'replace') and a
    # __post_init__ that appends appends twice.
    priced = Priced("Lamp", "$ 1.25")
    back = _through_json({"p": priced})["p"]
    assert type(back) is Priced
    assert back == priced
    assert back.price == 1.25
    tagged = Tagged("Lamp")
    back_tagged = _through_json([tagged])[0]
    assert type(back_tagged) is Tagged
    assert back_tagged.tags == ["listing"]
    assert back_tagged == tagged


def test_a_field_the_journal_lacks_takes_its_default() -> None:
    # A field added to the class since the request was journaled.
    encoded = values.encode(Tagged("Lamp"))
    del encoded["v"]["checked"], encoded["v"]["tags"]
    back = values.decode(json.loads(json.dumps(encoded)))
    assert (back.name, back.tags, back.checked) == ("Lamp", [], False)
    del encoded["v"]["name"]  # a required field missing: the request cannot be rebuilt
    with pytest.raises(ValueError, match="name"):
        values.decode(json.loads(json.dumps(encoded)))


SUBCLASSES = [
    collections.defaultdict(list, {"prices": ["1.5"], 2: []}),
    collections.defaultdict(None, {"a": 1}),
    collections.defaultdict(int),
    collections.OrderedDict([("b", 1), ("a", (2,))]),
    collections.Counter({"seen": 2, ("t",): 1}),
    Point(3, "p"),
    Colour.RED,
    Colour.BLUE,
    Size.LARGE,
]


@pytest.mark.parametrize("value", SUBCLASSES, ids=lambda v: type(v).__name__)
def test_subclasses_of_dict_and_tuple_and_enum_members_come_back_with_their_type(
    value: Any
) -> None:
    # Written as their base types they came back as a dict, a list or an int: a callback
    # appending to a defaultdict's missing key, reading a named tuple's field or an enum
    # member's name failed after a resume.
    back = _through_json({"v": value})["v"]
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, collections.defaultdict):
        assert back.default_factory is value.default_factory
    if isinstance(value, (collections.OrderedDict, collections.Counter)):
        assert list(back.items()) == list(value.items())
    if isinstance(value, enum.Enum):
        assert back is value


def test_a_named_tuple_is_made_without_running_its_own_new() -> None:
    pair = tuple.__new__(Pair, (1, (2, 3)))
    back = _through_json([pair])[0]
    assert type(back) is Pair
    assert (back.a, back.b) == (1, (2, 3))


@pytest.mark.parametrize("value", [
    UserDict(a=1),
    collections.defaultdict(lambda: 0),
    collections.UserList([1]),
    type("Local", (tuple,), {})((1,)),
])
def test_other_subclasses_of_json_types_are_not_json(value: Any) -> None:
    with pytest.raises(values.NotJSON):
        values.encode(value)


def test_a_named_tuple_or_enum_class_that_is_gone_is_a_missing_class() -> None:
    for path in (f"{__name__}:Gone", f"{__name__}:Spider", "os:system"):
        for tag, v in (("namedtuple", [1]), ("enum", "RED")):
            with pytest.raises(values.MissingItemClass):
                values.decode({"$t": tag, "c": path, "v": v})
    with pytest.raises(ValueError, match="default_factory"):
        values.decode({"$t": "defaultdict", "f": "system", "v": []})
    with pytest.raises(values.MissingItemClass):
        values.decode({"$t": "enum", "c": f"{__name__}:Point", "v": "x"})


def test_a_request_with_a_named_tuple_needs_its_class() -> None:
    spider = Spider()
    request = scrapy.Request("http://127.0.0.1/p", callback=spider.parse_item,
                             cb_kwargs={"point": Point(1), "size": Size.SMALL})
    payload = json.loads(json.dumps(request_to_payload(request, spider)))
    assert ("item class", f"{__name__}:Point") in needs_of(payload)
    assert ("item class", f"{__name__}:Size") in needs_of(payload)
    back = payload_to_request(payload, spider)
    assert back.cb_kwargs == {"point": Point(1), "size": Size.SMALL}
    assert type(back.cb_kwargs["point"]) is Point


def test_plain_json_is_not_tagged() -> None:
    for value in ({"a": [1, 2.5, None, True, "x"]}, [], {}, "s"):
        assert values.is_plain(value)
        assert values.encode(value) == value
    assert not values.is_plain({"a": (1,)})
    assert not values.is_plain({1: "x"})


class OtherZone(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)


@pytest.mark.parametrize("value", [object(), lambda: 1, {"f": open}, timedelta(1),
                                   datetime(2026, 1, 1, tzinfo=OtherZone())])
def test_other_objects_are_not_json(value: Any) -> None:
    with pytest.raises(values.NotJSON):
        values.encode(value)


def test_a_class_that_cannot_be_found_again_is_not_json() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(values.NotJSON):
        values.encode(Local(1))


def test_loading_builds_only_item_classes_of_imported_modules() -> None:
    for path in ("os:system", "subprocess:Popen", "not_imported_module:Item",
                 f"{__name__}:Spider"):
        with pytest.raises(values.MissingItemClass):
            values.decode({"$t": "item", "c": path, "v": {}})
    with pytest.raises(ValueError, match="unknown value type"):
        values.decode({"$t": "pickle", "v": "..."})
    assert sys.modules.get("not_imported_module") is None


def test_a_request_with_plain_json_keeps_todays_payload() -> None:
    spider = Spider()
    request = scrapy.Request("http://127.0.0.1/a", callback=spider.parse,
                             meta={"depth": 1, "ctx": {"q": ["x"]}}, cb_kwargs={"n": 1})
    payload = request_to_payload(request, spider)
    assert TAGGED not in payload
    assert payload["meta"] == {"depth": 1, "ctx": {"q": ["x"]}}
    assert payload["cb_kwargs"] == {"n": 1}


def test_a_request_with_an_item_in_cb_kwargs_round_trips() -> None:
    spider = Spider()
    item = Product(name="Lamp", price=Decimal("9.50"))
    request = scrapy.Request("http://127.0.0.1/p/1", callback=spider.parse_item,
                             errback=spider.on_error,
                             cb_kwargs={"item": item, "when": datetime(2026, 1, 1)},
                             meta={"trail": ("a", "b"), "depth": 2})
    payload = json.loads(json.dumps(request_to_payload(request, spider)))
    assert payload[TAGGED] == ["meta", "cb_kwargs"]
    back = payload_to_request(payload, spider)
    assert type(back.cb_kwargs["item"]) is Product
    assert back.cb_kwargs == request.cb_kwargs
    assert back.meta == request.meta
    assert type(back.meta["trail"]) is tuple
    assert back.callback == spider.parse_item
    assert back.errback == spider.on_error


def test_a_request_with_another_object_still_cannot_be_journaled() -> None:
    spider = Spider()
    request = scrapy.Request("http://127.0.0.1/", cb_kwargs={"item": Product(name=object())})
    with pytest.raises(UnserializableRequest) as info:
        request_to_payload(request, spider)
    assert info.value.kind == "cb_kwargs"


def test_unrestorable_names_each_missing_name_with_its_requests() -> None:
    spider = Spider()
    ok = request_to_payload(scrapy.Request("http://127.0.0.1/1", callback=spider.parse), spider)
    item = request_to_payload(scrapy.Request("http://127.0.0.1/2", callback=spider.parse_item,
                                             cb_kwargs={"item": Product(name="x")}), spider)
    renamed = [dict(ok, callback="parse_product", url=f"http://127.0.0.1/r/{i}") for i in range(3)]
    no_errback = dict(ok, errback="gone")
    moved = json.loads(json.dumps(item).replace(f"{__name__}:Product", f"{__name__}:Moved"))
    pending: dict[int, Any] = {1: ok, 2: item, 3: renamed[0], 4: renamed[1], 5: renamed[2],
                               6: no_errback, 7: moved, 8: None}
    problems = unrestorable(pending.items(), Spider)
    assert problems == {"callback 'parse_product'": [3, 4, 5], "errback 'gone'": [6],
                        f"item class '{__name__}:Moved'": [7]}
    assert unrestorable({1: ok, 2: item}.items(), spider) == {}
