"""The journal's byte formats, with no I/O: frames, groups, snapshots, the done-set and
unit keys. Stores (:mod:`scrapy_checkpoint.stores`) decide where the bytes live."""
