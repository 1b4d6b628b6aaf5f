"""The add-on: ``ADDONS = {"scrapy_checkpoint.Addon": 100}`` enables everything.

Components and defaults are set at the "addon" priority, so the user's own
settings still win. With ``CHECKPOINT_ENABLED = False`` it installs nothing.
"""

from __future__ import annotations

from typing import Any

from .extension import CheckpointExtension
from .middleware import CheckpointMiddleware
from .outputs import CheckpointFeedExporter, CheckpointFeedStorage

_FEED_EXPORTER = "scrapy.extensions.feedexport.FeedExporter"


class Addon:
    def update_settings(self, settings: Any) -> None:
        if settings.get("CHECKPOINT_ENABLED") is not None and not settings.getbool(
            "CHECKPOINT_ENABLED"
        ):
            return
        settings.set("CHECKPOINT_ENABLED", True, priority="addon")
        settings.set_in_component_priority_dict("EXTENSIONS", CheckpointExtension, 0)
        settings.set_in_component_priority_dict("DOWNLOADER_MIDDLEWARES", CheckpointMiddleware, 100)
        # Swap Scrapy's FeedExporter for the subclass that attributes items to requests.
        extensions = settings.getdict("EXTENSIONS")
        extensions[_FEED_EXPORTER] = None
        extensions[CheckpointFeedExporter] = 0
        settings.set("EXTENSIONS", extensions, settings.getpriority("EXTENSIONS") or 0)
        storage = f"{CheckpointFeedStorage.__module__}.{CheckpointFeedStorage.__name__}"
        storages = {**settings.getdict("FEED_STORAGES"), "": storage, "file": storage}
        settings.set("FEED_STORAGES", storages, priority="addon")
