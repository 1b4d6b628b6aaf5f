"""The add-on: ``ADDONS = {"scrapy_checkpoint.Addon": 100}`` enables everything.

It installs :class:`~.extension.CheckpointExtension` (``EXTENSIONS``, order 0),
:class:`~.middleware.CheckpointMiddleware` (``DOWNLOADER_MIDDLEWARES``, 100),
:class:`~.pipeline.CheckpointItemPipeline` (``ITEM_PIPELINES``, 0), the feed exporter
and storage, and the scheduler. Components and defaults are set at the "addon" priority, so the user's own
settings still win. With ``CHECKPOINT_ENABLED = False`` it installs nothing, and
nothing either for the Scrapy commands that build a crawler without crawling
(``scrapy shell``, ``fetch``, ``view``, ``parse``, ``check``, ``bench``; see
:mod:`.invocation`).
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.core.scheduler import Scheduler
from scrapy.utils.misc import load_object

from ..errors import ConfigError
from .extension import CheckpointExtension
from .feeds import CheckpointFeedExporter
from .invocation import borrowing_command, describe
from .middleware import CheckpointMiddleware
from .pipeline import ORDER as PIPELINE_ORDER
from .pipeline import CheckpointItemPipeline
from .start_errors import report

logger = logging.getLogger("scrapy_checkpoint")

_FEED_EXPORTER = "scrapy.extensions.feedexport.FeedExporter"
_SCHEDULER = "scrapy.core.scheduler.Scheduler"


class Addon:
    """The Scrapy add-on: ``ADDONS = {"scrapy_checkpoint.Addon": 100}`` (see the module docstring).

    ``spidercls`` is the crawler's spider class (None when built without a crawler).
    """

    def __init__(self, spidercls: type | None = None) -> None:
        self.spidercls = spidercls

    @classmethod
    def from_crawler(cls, crawler: Any) -> Addon:
        """Scrapy's factory for add-ons."""
        return cls(crawler.spidercls)

    def update_settings(self, settings: Any) -> None:
        """Install the extension, the middleware, the item pipeline, the feed exporter and
        storage, and the scheduler (in place of Scrapy's default one) at "addon" priority, unless the plugin
        is disabled or the command does not crawl. Raises
        ConfigError for a CHECKPOINT_ENABLED that is not a bool."""
        enabled = settings.get("CHECKPOINT_ENABLED")
        if enabled is not None and not _as_bool(settings):
            return
        command = borrowing_command(self.spidercls, settings) if self.spidercls else None
        if command is not None:
            logger.info(describe(command))
            return
        settings.set("CHECKPOINT_ENABLED", True, priority="addon")
        # A component the user placed already keeps the user's order.
        for name, cls, order in (("EXTENSIONS", CheckpointExtension, 0),
                                 ("DOWNLOADER_MIDDLEWARES", CheckpointMiddleware, 100),
                                 ("ITEM_PIPELINES", CheckpointItemPipeline, PIPELINE_ORDER)):
            if not _configured(settings, name, cls):
                settings.set_in_component_priority_dict(name, cls, order)
        # Swap Scrapy's FeedExporter for the subclass that attributes items to requests.
        if not _configured(settings, "EXTENSIONS", CheckpointFeedExporter):
            extensions = settings.getdict("EXTENSIONS")
            extensions[_FEED_EXPORTER] = None
            extensions[CheckpointFeedExporter] = 0
            settings.set("EXTENSIONS", extensions, settings.getpriority("EXTENSIONS") or 0)
        # The journal is the frontier: Scrapy's scheduler, with journaled requests queued on
        # disk, unless the user chose another scheduler (scrapy-redis, their own).
        if settings.get("SCHEDULER") in (_SCHEDULER, Scheduler):
            settings.set("SCHEDULER", "scrapy_checkpoint.CheckpointScheduler", priority="addon")
        # Local feeds go through the durable storage unless the user chose a storage for them.
        storage = "scrapy_checkpoint.CheckpointFeedStorage"
        storages = settings.getdict("FEED_STORAGES")
        for scheme in ("", "file"):
            storages.setdefault(scheme, storage)
        settings.set("FEED_STORAGES", storages, settings.getpriority("FEED_STORAGES") or 0)


def _configured(settings: Any, name: str, cls: type) -> bool:
    """True if the component dict ``name`` already holds ``cls``, by the class itself or by
    any import path that leads to it (``scrapy_checkpoint.CheckpointMiddleware``, the old
    ``scrapy_checkpoint.middleware.CheckpointMiddleware``, ...)."""
    return any(_resolves_to(key, cls) for key in settings.getdict(name))


def _resolves_to(key: Any, cls: type) -> bool:
    if key is cls:
        return True
    if not isinstance(key, str) or not key.startswith("scrapy_checkpoint."):
        return False  # another package's component: nothing to import for that
    try:
        return load_object(key) is cls
    except (ImportError, NameError, AttributeError, ValueError):
        return False


def _as_bool(settings: Any) -> bool:
    """``CHECKPOINT_ENABLED`` read as the extension reads it (Scrapy's ``getbool``)."""
    try:
        return bool(settings.getbool("CHECKPOINT_ENABLED"))
    except ValueError:
        raise report(ConfigError(
            f"Invalid setting CHECKPOINT_ENABLED={settings.get('CHECKPOINT_ENABLED')!r}: use True "
            f"or False (1/0, true/false). Fix it in settings.py, custom_settings or "
            f"-s CHECKPOINT_ENABLED=...")) from None
