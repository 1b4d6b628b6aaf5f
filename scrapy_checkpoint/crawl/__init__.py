"""The Scrapy integration: the only package of scrapy-checkpoint that imports Scrapy,
Twisted or scrapy-redis.

:class:`~.addon.Addon` installs :class:`~.extension.CheckpointExtension`,
:class:`~.middleware.CheckpointMiddleware` and the durable feed storage
(:mod:`.feeds`); the extension delegates to the frontier (per-request units),
the outputs, the shared-stage worker and the stats.
"""

from .addon import Addon
from .extension import CheckpointExtension
from .feeds import CheckpointFeedExporter, CheckpointFeedStorage
from .middleware import CheckpointMiddleware
from .settings import CheckpointSettings

__all__ = ["Addon", "CheckpointExtension", "CheckpointFeedExporter", "CheckpointFeedStorage",
           "CheckpointMiddleware", "CheckpointSettings"]
