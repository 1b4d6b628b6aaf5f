"""What a user's item pipeline learns in memory, which a resumed run does not have.

A pipeline that keeps what it saw in its own attributes (the ``DuplicatesPipeline``
of Scrapy's documentation: ``self.ids_seen = set()``) starts each run empty. After a
crash the resumed run's pipeline has not seen the items of earlier runs, so what it
decides from them (dropping a duplicate) is not what one uninterrupted run decides,
and nothing else says so. State kept in ``spider.state`` is kept by the checkpoint.

:class:`PipelineMemory` takes the sizes of the containers (``set``, ``dict``, ``list``
and their subclasses) held in the attributes of the project's own pipelines at the first
item, and :meth:`PipelineMemory.grown` names those that grew since: memory learned from
the items. Pipelines of Scrapy and of this package are left out.
"""

from __future__ import annotations

from typing import Any

_CONTAINERS = (set, dict, list)
_OWN = ("scrapy.", "scrapy_checkpoint.", "itemadapter.")


def _user_pipelines(crawler: Any) -> list[Any]:
    """The item pipelines of the project (not Scrapy's nor this package's)."""
    itemproc = getattr(getattr(getattr(crawler, "engine", None), "scraper", None), "itemproc", None)
    pipelines = getattr(itemproc, "middlewares", ()) or ()
    return [p for p in pipelines if not type(p).__module__.startswith(_OWN)]


def _sizes(crawler: Any) -> dict[tuple[str, str], int]:
    """``{(pipeline class name, attribute): size}`` of the containers the pipelines hold."""
    sizes: dict[tuple[str, str], int] = {}
    for pipeline in _user_pipelines(crawler):
        for name, value in list(getattr(pipeline, "__dict__", {}).items()):
            if isinstance(value, _CONTAINERS):
                sizes[(type(pipeline).__qualname__, name)] = len(value)
    return sizes


class PipelineMemory:
    """The containers of the project's pipelines, watched from the first item of a run
    (see the module docstring). ``crawler`` is the running crawler."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self._first: dict[tuple[str, str], int] | None = None

    def item(self) -> None:
        """An item left the pipelines: the first one takes the sizes."""
        if self._first is None:
            self._first = _sizes(self.crawler)

    def grown(self) -> list[str]:
        """``Class.attribute (a -> b entries)`` of each container that grew since the first
        item (empty: none, or no item)."""
        if self._first is None:
            return []
        now = _sizes(self.crawler)
        return [f"{cls}.{name} ({self._first[key]} -> {n} entries)"
                for key, n in sorted(now.items()) if key in self._first
                for cls, name in [key] if n > self._first[key]]


def resumed_memory_caveat(memory: PipelineMemory | None) -> str | None:
    """What to say instead of 'Completed' when a resumed run's pipelines learned from the
    items in memory (None: nothing to say)."""
    grown = memory.grown() if memory is not None else []
    if not grown:
        return None
    return (f"this run resumed a crawl, and item pipelines kept what they learned from the "
            f"items in memory: {', '.join(grown)}. They started this run without what they "
            f"had learned from the items of earlier runs, so what they decided from it (e.g. "
            f"dropping a duplicate) may differ from one uninterrupted crawl. Keep such state in "
            f"spider.state, which the checkpoint keeps with each request, then crawl again "
            f"with -s CHECKPOINT_RESET=True for an exact result.")


__all__ = ["PipelineMemory", "resumed_memory_caveat"]
