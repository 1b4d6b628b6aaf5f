"""A CrawlSpider's rules by what they are, not by their place in ``rules``.

A CrawlSpider's request names its rule by index (``meta["rule"]``): reorder the rules or
add one before it between two runs, and a pending request rebuilt with the same index
goes to another rule (another callback, follow or not). So a journaled request of a rule
carries its rule's signature (:data:`RULE`), and a resume gives it the index of the rule
with that signature in the spider's current rules, or cannot rebuild it when no rule has
it (the rule was removed or changed), as for a renamed callback. The signatures the
stage's requests were made with are kept with the stage (:data:`RULES_ATTACHED`), so a
resume can say which rules are new: the pages already done were parsed without them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

#: Payload key: the signature of the rule of a CrawlSpider request (``meta["rule"]``).
RULE = "_rule"
#: The stage's attached data: the signatures of the rules its requests were made with.
RULES_ATTACHED = "rules"

logger = logging.getLogger("scrapy_checkpoint")

_SIGNATURES: dict[int, tuple[Any, list[str]]] = {}


def _name(value: Any) -> str | None:
    """A callable's name (a bound method's, so the name in a rule and the method compiled
    from it agree)."""
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "__name__", None) or type(value).__qualname__


def _plain(value: Any) -> Any:
    """``value`` reduced to text, numbers and lists, the same in every process."""
    if isinstance(value, re.Pattern):
        return value.pattern
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return sorted((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if callable(value):
        return _name(value)
    return type(value).__qualname__


def signature(rule: Any) -> str:
    """The rule's signature: its callback's name and a digest of the rest (link extractor,
    follow, errback, ``cb_kwargs``, ``process_links``, ``process_request``)."""
    extractor = rule.link_extractor
    parts = [
        _name(rule.callback), _name(rule.errback), bool(rule.follow), _plain(rule.cb_kwargs),
        _name(rule.process_links), _name(rule.process_request), type(extractor).__qualname__,
        sorted((k, _plain(v)) for k, v in vars(extractor).items() if not k.startswith("_")),
    ]
    digest = hashlib.sha1(repr(parts).encode()).hexdigest()[:8]
    return f"{_name(rule.callback) or 'follow'}/{digest}"


def signatures(spider: Any) -> list[str]:
    """The signatures of ``spider``'s rules, by index (compiled ones if it has them; a
    spider or a spider class; none if it is no CrawlSpider)."""
    rules: Sequence[Any] = getattr(spider, "_rules", None) or getattr(spider, "rules", None) or ()
    cached = _SIGNATURES.get(id(spider))
    if cached is not None and cached[0] is rules:
        return cached[1]
    found = [signature(rule) for rule in rules if hasattr(rule, "link_extractor")]
    _SIGNATURES[id(spider)] = (rules, found)
    return found


def rule_of(d: dict[str, Any], spider: Any) -> str | None:
    """The signature of the rule of a CrawlSpider request's payload dict ``d`` (None: the
    request is not one of a rule)."""
    if d.get("callback") != "_callback" and d.get("errback") != "_errback":
        return None
    meta = d.get("meta")
    index = meta.get("rule") if isinstance(meta, dict) else None
    if not isinstance(index, int):
        return None
    found = signatures(spider)
    return found[index] if 0 <= index < len(found) else None


def rule_index(rule: str, meta: dict[str, Any], spider: Any) -> None:
    """Point ``meta["rule"]`` at the rule with signature ``rule`` in ``spider``'s rules;
    ValueError if it has none."""
    found = signatures(spider)
    index = meta.get("rule")
    if isinstance(index, int) and 0 <= index < len(found) and found[index] == rule:
        return
    if rule not in found:
        raise ValueError(f"the spider has no rule {rule!r} any more (rules changed)")
    meta["rule"] = found.index(rule)


def has_rule(spider: Any, rule: str) -> bool:
    return rule in signatures(spider)


def note_rules(cp: Any, spider: Any, name: str) -> None:
    """Keep the signatures of ``spider``'s rules with the started stage ``cp``, warning when
    a resume finds rules its done requests were not parsed with: what those would have
    followed from the done pages is not crawled (plain Scrapy with the new rules would)."""
    current = signatures(spider)
    recorded = cp.live.attached.get(RULES_ATTACHED)
    known = [str(rule) for rule in recorded] if isinstance(recorded, list) else []
    new = [rule for rule in current if rule not in known]
    if not new:
        return
    if isinstance(recorded, list) and len(cp.live.done):
        logger.warning(
            "Stage %s: the spider has %d CrawlSpider rule(s) that its %d done request(s) "
            "were not parsed with (%s): the links only they match on those pages are not "
            "followed in this run. Set CHECKPOINT_RESET = True to crawl with the new rules "
            "from the start.", name, len(new), len(cp.live.done), ", ".join(new))
    cp.attach(RULES_ATTACHED, known + new)
