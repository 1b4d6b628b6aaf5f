"""The journal's byte formats, with no I/O: frames, groups, snapshots, the done-set and
unit keys. Stores (:mod:`scrapy_checkpoint.stores`) decide where the bytes live."""

from .frames import frame
from .groups import decode_group, encode_group
from .snapshot import decode_snapshot, encode_snapshot

__all__ = ["decode_group", "decode_snapshot", "encode_group", "encode_snapshot", "frame"]
