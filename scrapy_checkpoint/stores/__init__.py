"""Where checkpoints live. The checkpoint core talks to a store only through
the methods of :class:`~scrapy_checkpoint.stores.file.FileStore`."""

from .file import FileStore, Loaded, StageLock

__all__ = ["FileStore", "Loaded", "StageLock"]
