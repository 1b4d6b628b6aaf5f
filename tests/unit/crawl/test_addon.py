"""The add-on's wiring, read from a crawler's settings (no crawl), and the old import paths."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import scrapy
from scrapy.extensions.feedexport import FeedExporter
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object

import scrapy_checkpoint
from scrapy_checkpoint.crawl.extension import CheckpointExtension
from scrapy_checkpoint.crawl.feeds import CheckpointFeedExporter, CheckpointFeedStorage
from scrapy_checkpoint.crawl.middleware import CheckpointMiddleware
from scrapy_checkpoint.crawl.pipeline import CheckpointItemPipeline
from scrapy_checkpoint.errors import ConfigError

from ..conftest import MakeCrawler

FEED_EXPORTER = "scrapy.extensions.feedexport.FeedExporter"
STORAGE = "scrapy_checkpoint.CheckpointFeedStorage"


class TreeSpider(scrapy.Spider):
    name = "tree"


def _orders(components: Mapping[Any, Any], cls: type) -> list[Any]:
    """The orders of every entry of a component dict that names ``cls`` (by any path)."""
    return [order for key, order in components.items()
            if (load_object(key) if isinstance(key, str) else key) is cls]


def _feeds(tmp_path: Path) -> dict[str, Any]:
    return {"FEEDS": {str(tmp_path / "items.jl"): {"format": "jsonlines"}}}


def test_the_addon_installs_everything(make_crawler: MakeCrawler, tmp_path: Path) -> None:
    crawler = make_crawler(TreeSpider, **_feeds(tmp_path))
    settings = crawler.settings
    assert settings.getbool("CHECKPOINT_ENABLED") is True
    extensions = settings.getdict("EXTENSIONS")
    assert _orders(extensions, CheckpointExtension) == [0]
    assert _orders(extensions, CheckpointFeedExporter) == [0]
    assert extensions[FEED_EXPORTER] is None
    assert _orders(settings.getdict("DOWNLOADER_MIDDLEWARES"), CheckpointMiddleware) == [100]
    assert _orders(settings.getdict("ITEM_PIPELINES"), CheckpointItemPipeline) == [0]
    storages = settings.getdict("FEED_STORAGES")
    assert (storages[""], storages["file"]) == (STORAGE, STORAGE)
    assert load_object(STORAGE) is CheckpointFeedStorage
    # What Scrapy built from them: our extension and feed exporter, not Scrapy's exporter.
    built = [type(e) for e in crawler.extensions.middlewares]
    assert CheckpointExtension in built
    assert CheckpointFeedExporter in built
    assert FeedExporter not in built
    ext = CheckpointExtension.of(crawler)
    assert ext is not None
    assert ext.active
    # The downloader middleware list Scrapy builds holds ours once.
    middlewares = build_component_list(settings.getwithbase("DOWNLOADER_MIDDLEWARES"))
    assert [load_object(m) for m in middlewares].count(CheckpointMiddleware) == 1


@pytest.mark.parametrize("enabled", [False, "False", "0", 0])
def test_disabled_installs_nothing(make_crawler: MakeCrawler, tmp_path: Path, enabled: Any) -> None:
    crawler = make_crawler(TreeSpider, CHECKPOINT_ENABLED=enabled, **_feeds(tmp_path))
    settings = crawler.settings
    assert settings.getbool("CHECKPOINT_ENABLED") is False
    extensions = settings.getwithbase("EXTENSIONS")
    assert _orders(extensions, CheckpointExtension) == []
    assert _orders(extensions, CheckpointFeedExporter) == []
    assert extensions[FEED_EXPORTER] is not None  # Scrapy's own exporter stays
    assert _orders(settings.getwithbase("DOWNLOADER_MIDDLEWARES"), CheckpointMiddleware) == []
    assert _orders(settings.getwithbase("ITEM_PIPELINES"), CheckpointItemPipeline) == []
    storages = settings.getwithbase("FEED_STORAGES")
    assert STORAGE not in storages.values()
    built = [type(e) for e in crawler.extensions.middlewares]
    assert FeedExporter in built
    assert CheckpointExtension.of(crawler) is None
    assert not (tmp_path / "checkpoints").exists()


def test_a_bad_enabled_value_is_a_config_error(make_crawler: MakeCrawler) -> None:
    with pytest.raises(ConfigError, match="Invalid setting CHECKPOINT_ENABLED='perhaps'"):
        make_crawler(TreeSpider, CHECKPOINT_ENABLED="perhaps")


def test_components_placed_by_their_old_paths_keep_their_place(make_crawler: MakeCrawler) -> None:
    crawler = make_crawler(
        TreeSpider,
        DOWNLOADER_MIDDLEWARES={"scrapy_checkpoint.middleware.CheckpointMiddleware": 543},
        EXTENSIONS={"scrapy_checkpoint.extension.CheckpointExtension": 7},
    )
    settings = crawler.settings
    assert _orders(settings.getdict("DOWNLOADER_MIDDLEWARES"), CheckpointMiddleware) == [543]
    assert _orders(settings.getdict("EXTENSIONS"), CheckpointExtension) == [7]
    middlewares = build_component_list(settings.getwithbase("DOWNLOADER_MIDDLEWARES"))
    assert [load_object(m) for m in middlewares].count(CheckpointMiddleware) == 1
    assert [type(e) for e in crawler.extensions.middlewares].count(CheckpointExtension) == 1


def test_components_placed_by_class_or_new_path_keep_their_place(make_crawler: MakeCrawler) -> None:
    crawler = make_crawler(
        TreeSpider,
        DOWNLOADER_MIDDLEWARES={CheckpointMiddleware: 650},
        EXTENSIONS={"scrapy_checkpoint.CheckpointExtension": 3,
                    "scrapy_checkpoint.outputs.CheckpointFeedExporter": 5},
    )
    settings = crawler.settings
    assert _orders(settings.getdict("DOWNLOADER_MIDDLEWARES"), CheckpointMiddleware) == [650]
    extensions = settings.getdict("EXTENSIONS")
    assert _orders(extensions, CheckpointExtension) == [3]
    assert _orders(extensions, CheckpointFeedExporter) == [5]


def test_a_users_feed_storage_wins(make_crawler: MakeCrawler) -> None:
    mine = "scrapy.extensions.feedexport.StdoutFeedStorage"
    crawler = make_crawler(TreeSpider, FEED_STORAGES={"file": mine})
    storages = crawler.settings.getdict("FEED_STORAGES")
    assert storages["file"] == mine
    assert storages[""] == STORAGE


@pytest.mark.parametrize(("old", "new"), [
    ("scrapy_checkpoint.middleware.CheckpointMiddleware", "scrapy_checkpoint.CheckpointMiddleware"),
    ("scrapy_checkpoint.extension.CheckpointExtension", "scrapy_checkpoint.CheckpointExtension"),
    ("scrapy_checkpoint.outputs.CheckpointFeedStorage", "scrapy_checkpoint.CheckpointFeedStorage"),
    ("scrapy_checkpoint.outputs.CheckpointFeedExporter", "scrapy_checkpoint.CheckpointFeedExporter"),
    ("scrapy_checkpoint.outputs.DurableOutput", "scrapy_checkpoint.crawl.outputs.DurableOutput"),
    ("scrapy_checkpoint.crawl.Addon", "scrapy_checkpoint.Addon"),
    ("scrapy_checkpoint.crawl.CheckpointSettings", "scrapy_checkpoint.CheckpointSettings"),
])
def test_old_import_paths_resolve_to_the_same_classes(old: str, new: str) -> None:
    assert load_object(old) is load_object(new)


def test_the_package_names_its_crawl_classes_lazily() -> None:
    assert scrapy_checkpoint.CheckpointMiddleware is CheckpointMiddleware
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = scrapy_checkpoint.Nothing


def test_without_a_stage_name_the_stage_is_named_after_the_spider(
    make_crawler: MakeCrawler
) -> None:
    crawler = make_crawler(TreeSpider, CHECKPOINT_STAGE_NAME=None)
    ext = CheckpointExtension.of(crawler)
    assert ext is not None
    assert ext.stage == "tree"
