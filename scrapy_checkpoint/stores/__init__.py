"""Where checkpoints live. The checkpoint core talks to a store only through the
:class:`~scrapy_checkpoint.stores.base.Store` protocol; ``open_store`` picks one."""

from .file import FileStore, Loaded, StageLock

__all__ = ["FileStore", "Loaded", "StageLock"]
