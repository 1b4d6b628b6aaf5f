"""The values of ``meta`` and ``cb_kwargs`` as JSON, with their types: no pickle.

JSON holds ``str``, ``int``, ``float``, ``bool``, ``None``, lists and dicts with
string keys. A request's ``meta`` or ``cb_kwargs`` holding only those is
journaled as it is. Anything else that a callback commonly receives is written
as a tagged object ``{"$t": <type>, "v": <value>}`` and rebuilt with its type:

=============  ==============================================================
``$t``         value
=============  ==============================================================
``tuple``      list of the elements
``set``        list of the elements (``frozenset`` likewise)
``bytes``      base64 text
``datetime``   ISO 8601 text; ``"z"``: the zoneinfo key, ``"f"``: 1 for ``fold=1``
``date``       ISO 8601 text
``decimal``    ``str(value)``
``dict``       ``[[key, value], ...]``: a dict with a key that is not a str, or
               with a ``"$t"`` key of its own
``item``       ``"c"``: ``"module:QualName"`` of the class, ``"v"``: its fields
``namedtuple`` ``"c"``: the class's path, ``"v"``: list of the elements
``enum``       ``"c"``: the ``Enum`` class's path, ``"v"``: the member's name
``defaultdict`` ``"f"``: the name of its ``default_factory`` (one of
               :data:`FACTORIES`, or ``None``), ``"v"``: ``[[key, value], ...]``
``odict``      an ``OrderedDict``: ``[[key, value], ...]`` in its order
``counter``    a ``Counter``: ``[[key, count], ...]``
=============  ==============================================================

Items are ``scrapy.Item`` subclasses, dataclasses and attrs classes (the item types
of itemadapter). An item class (likewise a named tuple or enum class) is found again
by its path among the modules already imported (a spider's module imports its item
classes); loading never imports a module and never builds any other class: a named
tuple is made with ``tuple.__new__``, an enum member is looked up by name. Any other
value raises :class:`NotJSON` when it is encoded, also a subclass of ``dict``,
``list`` or ``tuple`` not named above: written as its base type it would come back
without what its class adds (a ``defaultdict`` without its default, a named tuple
without its fields), and a callback using that would fail after a resume. Subclasses
of ``str``, ``int`` and ``float`` other than enums are written as those.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import sys
from collections import Counter, OrderedDict, defaultdict
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from scrapy import Item

try:  # attrs is optional (itemadapter supports it when installed)
    import attr as _attr
except ImportError:  # pragma: no cover - attrs is installed with the test dependencies
    _attr = None  # type: ignore[assignment]
try:
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover - Python < 3.9
    ZoneInfo = None  # type: ignore[assignment,misc]

#: The key of a tagged object.
TAG = "$t"

_PLAIN = frozenset({str, int, float, bool, type(None)})


class NotJSON(TypeError):
    """A value that has no JSON form here (the message names its type)."""


def is_plain(value: Any) -> bool:
    """True if ``value`` is JSON as it is (no tag needed): the check made for every request,
    so exact types only, no copies."""
    t = type(value)
    if t in _PLAIN:
        return True
    # Loops rather than all(): no generator per container on this path.
    if t is dict:
        for k, v in value.items():  # noqa: SIM110
            if type(k) is not str or not is_plain(v):
                return False
        return True
    if t is list:
        for v in value:  # noqa: SIM110
            if not is_plain(v):
                return False
        return True
    return False


def encode(value: Any) -> Any:
    """``value`` as JSON-serialisable data, non-JSON types tagged. Raises :class:`NotJSON`."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is list:
        return [encode(v) for v in value]
    if t is dict:
        return _encode_dict(value)
    if t is tuple:
        return {TAG: "tuple", "v": [encode(v) for v in value]}
    if t is set or t is frozenset:
        return {TAG: t.__name__, "v": [encode(v) for v in value]}
    if t is bytes:
        return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if t is datetime:
        return _encode_datetime(value)
    if t is date:
        return {TAG: "date", "v": value.isoformat()}
    if t is Decimal:
        return {TAG: "decimal", "v": str(value)}
    path = _item_class_path(t)
    if path is not None:
        return {TAG: "item", "c": path, "v": {k: encode(v) for k, v in _item_fields(value).items()}}
    if isinstance(value, (dict, list, tuple, enum.Enum)):
        return _encode_subclass(value)
    if isinstance(value, (str, int, float)):  # e.g. a str subclass of a parser: as its base type
        return value
    raise NotJSON(f"Object of type {t.__name__} is not JSON serializable")


#: The ``default_factory`` values of a ``defaultdict`` that can be journaled, by name.
FACTORIES: dict[str, Any] = {f.__name__: f for f in (
    list, dict, set, frozenset, tuple, int, float, str, bytes, bool, Decimal,
    Counter, OrderedDict)}


def _pairs(value: dict[Any, Any]) -> list[list[Any]]:
    return [[encode(k), encode(v)] for k, v in value.items()]


def _encode_subclass(value: Any) -> Any:
    """A subclass of dict, list or tuple, or an enum member, tagged with its type (see the
    module's table). Raises :class:`NotJSON` for any other subclass."""
    t = type(value)
    if t is defaultdict:
        factory = value.default_factory
        name = None if factory is None else getattr(factory, "__name__", None)
        if factory is not None and FACTORIES.get(name) is not factory:  # type: ignore[arg-type]
            raise NotJSON(f"Object of type defaultdict with default_factory {factory!r} is "
                          f"not JSON serializable")
        return {TAG: "defaultdict", "f": name, "v": _pairs(value)}
    if t is OrderedDict:
        return {TAG: "odict", "v": _pairs(value)}
    if t is Counter:
        return {TAG: "counter", "v": _pairs(value)}
    path = _value_class_path(t)
    if path is not None and isinstance(value, enum.Enum):
        return {TAG: "enum", "c": path, "v": value.name}
    if path is not None and isinstance(value, tuple):
        return {TAG: "namedtuple", "c": path, "v": [encode(v) for v in value]}
    raise NotJSON(f"Object of type {t.__name__} is not JSON serializable")


def _is_value_class(cls: Any) -> bool:
    """A named tuple class or an ``Enum`` class."""
    if not isinstance(cls, type):
        return False
    if issubclass(cls, enum.Enum):
        return True
    return issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


def _value_class_path(cls: type) -> str | None:
    """``module:QualName`` of a named tuple or enum class found again by that path (None:
    another class, or one that cannot be found again)."""
    if not _is_value_class(cls):
        return None
    path = f"{cls.__module__}:{cls.__qualname__}"
    return path if _find_class(path) is cls else None


def _encode_dict(value: dict[Any, Any]) -> Any:
    for k in value:
        if type(k) is not str or k == TAG:
            return {TAG: "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    return {k: encode(v) for k, v in value.items()}


def _encode_datetime(value: datetime) -> dict[str, Any]:
    tz = value.tzinfo
    out: dict[str, Any] = {TAG: "datetime"}
    if tz is None or type(tz) is timezone:
        out["v"] = value.isoformat()
    elif ZoneInfo is not None and isinstance(tz, ZoneInfo):
        out["v"], out["z"] = value.replace(tzinfo=None).isoformat(), tz.key
    else:
        raise NotJSON(f"datetime with tzinfo of type {type(tz).__name__} is not JSON "
                      f"serializable (use datetime.timezone or zoneinfo.ZoneInfo)")
    if value.fold:
        out["f"] = 1
    return out


# -- items --------------------------------------------------------------------------------

_class_paths: dict[type, str | None] = {}


def _is_item_class(cls: Any) -> bool:
    if not isinstance(cls, type):
        return False
    if issubclass(cls, Item) or dataclasses.is_dataclass(cls):
        return True
    return _attr is not None and _attr.has(cls)


def _item_class_path(cls: type) -> str | None:
    """``module:QualName`` of an item class found again by that path (None: not an item class,
    or not one that can be found again, e.g. a class defined inside a function)."""
    try:
        return _class_paths[cls]
    except KeyError:
        pass
    path = None
    if _is_item_class(cls):
        candidate = f"{cls.__module__}:{cls.__qualname__}"
        if _find_class(candidate) is cls:
            path = candidate
    _class_paths[cls] = path
    return path


def _find_class(path: str) -> Any:
    """The object at ``module:QualName`` among the imported modules (None if absent)."""
    module_name, _, qualname = path.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        if obj is None or part.startswith("<"):
            return None
        obj = getattr(obj, part, None)
    return obj


def _item_fields(value: Any) -> dict[str, Any]:
    if isinstance(value, Item):
        return dict(value)
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return {a.name: getattr(value, a.name) for a in _attr.fields(type(value))}


def item_class(path: str) -> type:
    """The item class at ``path`` (``module:QualName``). Raises :class:`MissingItemClass`
    unless it is an item class of an imported module."""
    cls = _find_class(path)
    if not _is_item_class(cls):
        raise MissingItemClass(path)
    return cls  # type: ignore[no-any-return]


def value_class(path: str) -> type:
    """The class at ``path`` named by a journaled value: an item, named tuple or enum class.
    Raises :class:`MissingItemClass` unless it is one of those of an imported module."""
    cls = _find_class(path)
    if not (_is_item_class(cls) or _is_value_class(cls)):
        raise MissingItemClass(path)
    return cls  # type: ignore[no-any-return]


class MissingItemClass(ValueError):
    """A journaled item names a class that is not an item class of an imported module."""

    def __init__(self, path: str) -> None:
        super().__init__(f"item class {path!r} is not an item class of an imported module")
        self.path = path


def _build_item(cls: Any, fields: dict[str, Any]) -> Any:
    """An instance of item class ``cls`` holding ``fields`` as they were journaled: an Item
    from its dict; a dataclass or attrs instance made without calling its constructor, so
    ``__post_init__``, attrs converters and validators (which ran when the item was first
    built) do not run again on their own output. A field the journal lacks (one added to
    the class since) takes its default. Raises ValueError for a missing field without one."""
    if issubclass(cls, Item):
        return cls(fields)
    obj = object.__new__(cls)
    for name, default in _field_defaults(cls):
        if name in fields:
            value = fields[name]
        elif default is _NO_DEFAULT:
            raise ValueError(f"item class {cls.__qualname__} has a field {name!r} without "
                             f"default that the journaled item lacks")
        else:
            value = default()
        object.__setattr__(obj, name, value)  # frozen classes too
    return obj


_NO_DEFAULT = object()


def _field_defaults(cls: Any) -> list[tuple[str, Any]]:
    """``(name, make_default)`` of each field of a dataclass or attrs class
    (``make_default`` is ``_NO_DEFAULT`` for a field without default)."""
    out: list[tuple[str, Any]] = []
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out.append((f.name, lambda d=f.default: d))
            elif f.default_factory is not dataclasses.MISSING:
                out.append((f.name, f.default_factory))
            else:
                out.append((f.name, _NO_DEFAULT))
        return out
    for a in _attr.fields(cls):
        d = a.default
        if d is _attr.NOTHING:
            out.append((a.name, _NO_DEFAULT))
        elif isinstance(d, _attr.Factory):  # type: ignore[arg-type]
            if d.takes_self:  # needs the instance: not supported, the field is required
                out.append((a.name, _NO_DEFAULT))
            else:
                out.append((a.name, d.factory))
        else:
            out.append((a.name, lambda d=d: d))
    return out


# -- decoding -------------------------------------------------------------------------------

def decode(value: Any) -> Any:
    """Inverse of :func:`encode`. Raises ValueError for an unknown tag or item class."""
    t = type(value)
    if t is list:
        return [decode(v) for v in value]
    if t is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    v = value.get("v")
    if tag == "tuple":
        return tuple(decode(x) for x in v)
    if tag == "set":
        return {decode(x) for x in v}
    if tag == "frozenset":
        return frozenset(decode(x) for x in v)
    if tag == "bytes":
        return base64.b64decode(v)
    if tag == "datetime":
        dt = datetime.fromisoformat(v)
        if "z" in value:
            if ZoneInfo is None:  # pragma: no cover
                raise ValueError("zoneinfo is not available")
            dt = dt.replace(tzinfo=ZoneInfo(value["z"]))
        return dt.replace(fold=1) if value.get("f") else dt
    if tag == "date":
        return date.fromisoformat(v)
    if tag == "decimal":
        return Decimal(v)
    if tag == "dict":
        return {decode(k): decode(x) for k, x in v}
    if tag == "item":
        return _build_item(item_class(value["c"]), {k: decode(x) for k, x in v.items()})
    return _decode_subclass(tag, value)


def _decode_subclass(tag: Any, value: dict[str, Any]) -> Any:
    """Inverse of :func:`_encode_subclass`. Raises ValueError for an unknown tag or class."""
    v: Any = value.get("v")
    if tag == "defaultdict":
        name = value.get("f")
        if name is not None and name not in FACTORIES:
            raise ValueError(f"unknown default_factory {name!r} in a journaled request")
        return defaultdict(None if name is None else FACTORIES[name],
                           {decode(k): decode(x) for k, x in v})
    if tag == "odict":
        return OrderedDict((decode(k), decode(x)) for k, x in v)
    if tag == "counter":
        return Counter({decode(k): decode(x) for k, x in v})
    if tag in ("enum", "namedtuple"):
        cls = value_class(value["c"])
        if tag == "enum" and issubclass(cls, enum.Enum):
            return cls.__members__[v]
        if tag == "namedtuple" and not issubclass(cls, enum.Enum):
            new: Any = tuple.__new__
            return new(cls, [decode(x) for x in v])  # no user __new__ runs
        raise MissingItemClass(value["c"])
    raise ValueError(f"unknown value type {tag!r} in a journaled request")


def item_classes(value: Any, into: set[str]) -> None:
    """Add to ``into`` the item class paths named in encoded ``value``."""
    t = type(value)
    if t is list:
        for v in value:
            item_classes(v, into)
    elif t is dict:
        if value.get(TAG) in ("item", "namedtuple", "enum"):
            into.add(value["c"])
        for v in value.values():
            item_classes(v, into)


__all__ = ["FACTORIES", "TAG", "MissingItemClass", "NotJSON", "decode", "encode", "is_plain",
           "item_class", "item_classes", "value_class"]
