"""The pieces of scrapy_checkpoint.crawl.deliveries that need no crawl."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy.settings import Settings

from scrapy_checkpoint.crawl.deliveries import from_ranges, possible, to_ranges


def test_ordinals_are_kept_as_ranges_and_read_back() -> None:
    ordinals = {0, 1, 2, 5, 7, 8}
    assert to_ranges(ordinals) == [[0, 2], [5, 5], [7, 8]]
    assert from_ranges(to_ranges(ordinals)) == ordinals
    assert to_ranges(set()) == []


@pytest.mark.parametrize("value", [None, "0-3", [[3, 1]], [[0, "2"]], [[-1, 2]], [[0]], {"a": 1}])
def test_malformed_ranges_are_ignored(value: Any) -> None:
    assert from_ranges(value) == set()


@pytest.mark.parametrize(("feeds", "batch", "expected"), [
    ({}, 0, True),
    ({"items.jl": {"format": "jsonlines"}, "file:///tmp/x.csv": {"format": "csv"}}, 0, True),
    ({"items.jl": {"format": "jsonlines"}}, 10, False),
    ({"items-%(batch_id)d.jl": {"format": "jsonlines"}}, 0, False),
    ({"items.jl": {"format": "jsonlines", "batch_item_count": 5}}, 0, False),
    ({"s3://bucket/items.jl": {"format": "jsonlines"}}, 0, False),
    ({"items.jl.gz": {"format": "jsonlines", "postprocessing": ["gzip"]}}, 0, False),
    ({"items.txt": {"format": "mine"}}, 0, False),
])
def test_items_are_kept_one_by_one_only_where_every_feed_can(
        feeds: dict[str, Any], batch: int, expected: bool) -> None:
    settings = Settings({"FEEDS": feeds, "FEED_EXPORT_BATCH_ITEM_COUNT": batch})
    assert possible(settings) is expected
