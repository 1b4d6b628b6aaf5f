"""The pieces of scrapy_checkpoint.crawl.deliveries that need no crawl."""

from __future__ import annotations

import random
from typing import Any

import pytest
from scrapy.settings import Settings

from scrapy_checkpoint.crawl.deliveries import Ordinals, from_ranges, possible, to_ranges


def test_ordinals_are_kept_as_ranges_and_read_back() -> None:
    ordinals = {0, 1, 2, 5, 7, 8}
    assert to_ranges(ordinals) == [[0, 2], [5, 5], [7, 8]]
    read = from_ranges(to_ranges(ordinals))
    assert set(read) == ordinals
    assert read.ranges() == [[0, 2], [5, 5], [7, 8]]
    assert [n in read for n in range(-1, 10)] == [n in ordinals for n in range(-1, 10)]
    assert "1" not in read
    assert to_ranges(set()) == []


def test_ordinals_added_in_any_order_merge_into_ranges() -> None:
    """A unit delivering its items in order keeps one range however many there are."""
    kept = Ordinals()
    for start in range(0, 1_000_000, 1000):  # a commit every thousand items
        kept.update(range(start, start + 1000))
    assert kept.ranges() == [[0, 999_999]]
    kept.update({2_000_001, 1_000_001, 1_000_000})  # out of order, a gap
    assert kept.ranges() == [[0, 1_000_001], [2_000_001, 2_000_001]]
    assert [n in kept for n in (1_000_001, 1_000_002, 2_000_001)] == [True, False, True]
    model = set(range(1_000_002)) | {2_000_001}
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randrange(0, 2_100_000)
        assert (n in kept) == (n in model)


@pytest.mark.parametrize("value", [None, "0-3", [[3, 1]], [[0, "2"]], [[-1, 2]], [[0]], {"a": 1}])
def test_malformed_ranges_are_ignored(value: Any) -> None:
    assert set(from_ranges(value)) == set()


def test_overlapping_recorded_ranges_are_merged() -> None:
    assert from_ranges([[5, 9], [0, 2], [3, 4], [8, 12]]).ranges() == [[0, 12]]


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
