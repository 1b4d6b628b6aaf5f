"""The pieces behind a checkpoint: the group being built, the commit cadence, the hooks,
the Lua scripts the Redis store ships and its unit tracking."""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

import pytest

from scrapy_checkpoint import CheckpointError, EnhancedCheckpoint, durability
from scrapy_checkpoint.hooks import Hooks
from scrapy_checkpoint.journal.groups import (
    ADDED,
    COUNTERS,
    HANDED,
    INIT,
    STATUS,
    TOTAL,
    GroupBuilder,
    decode_group,
)
from scrapy_checkpoint.journal.keys import key_code
from scrapy_checkpoint.stores.redis import lua_source


def _header(payload: bytes) -> dict[str, Any]:
    (length,) = struct.unpack_from("<I", payload)
    header: dict[str, Any] = json.loads(payload[4 : 4 + length])
    return header


def test_a_sealed_group_writes_its_keys_in_one_order_and_leaves_the_builder_empty() -> None:
    group = GroupBuilder()
    group.add_fields({STATUS: "running"})
    group.done += [1, 2]
    group.failed.append(3)
    group.counts[0] += 3
    group.updates = 3
    group.added.append(7, 1 << 40, 12, -3)
    group.started.append(7)
    group.handed.append(8)
    payload = group.seal(("item", 2, None), 12.5)
    assert list(_header(payload)) == ["st", "s", "h", "c", "l", "i", "b", "ts", "d", "f", "r"]
    decoded = decode_group(payload)
    assert list(decoded.done) == [1, 2]
    assert list(decoded.failed) == [3]
    assert decoded.fields[HANDED] == [8]
    assert decoded.added is not None
    assert [list(a) for a in (decoded.added.codes, decoded.added.refs, decoded.added.lengths,
                              decoded.added.priorities)] == [[7], [1 << 40], [12], [-3]]
    assert group.is_empty()


def test_counter_fields_add_up_and_a_stage_reinit_drops_what_came_before_but_hand_offs() -> None:
    group = GroupBuilder()
    group.add_fields({COUNTERS: [1, 1, 0, 0]})
    group.add_fields({COUNTERS: [2, 1, 1, 0], STATUS: "running"})
    assert group.counts == [3, 2, 1, 0]
    assert COUNTERS not in group.fields
    group.done.append(4)
    group.added.append(5, 0, 0, 0)
    group.handed.append(6)
    group.add_fields({INIT: {"stage": "s"}})
    assert (group.done, len(group.added), group.counts) == ([], 0, [0, 0, 0, 0])
    assert group.fields == {INIT: {"stage": "s"}}
    assert group.handed == [6]
    sealed = group.seal((None, None, None), 1.0)
    assert ADDED not in _header(sealed)
    assert decode_group(sealed).added is None


def test_a_group_is_committed_every_save_every_updates_or_at_a_tick_once_save_interval_passed(
    store_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(durability, "monotonic", lambda: now[0])
    monkeypatch.setattr("scrapy_checkpoint.checkpoint.monotonic", lambda: now[0])
    cp = EnhancedCheckpoint(store_location, "s", log_every=0, save_every=5, save_interval=10.0)
    cp.start()
    start = cp.journal_bytes or 0
    for i in range(4):
        cp.update(processed=1, index=i)
    assert cp.journal_bytes == start
    cp.update(processed=1, index=4)
    after_five = cp.journal_bytes or 0
    assert after_five > start
    cp.update(processed=1, index=5)
    now[0] += 9.0
    cp.tick()
    assert cp.journal_bytes == after_five  # not due yet
    now[0] += 1.0
    cp.tick()
    assert (cp.journal_bytes or 0) > after_five
    cp.close()


def test_hooks_refuse_an_unknown_event_and_a_failing_hook_does_not_stop_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken(cp: Any) -> None:
        raise RuntimeError("broken hook")

    hooks = Hooks(start=broken)
    hooks.on("start", lambda cp: calls.append(cp.stage))
    with pytest.raises(ValueError, match="Unknown hook 'finish'"):
        hooks.on("finish", print)

    class Stage:
        stage = "s"

    with caplog.at_level(logging.ERROR, logger="scrapy_checkpoint"):
        hooks.emit("start", Stage())
    assert calls == ["s"]
    assert "start hook" in caplog.text


STORE_SCRIPTS = ("append", "snapshot", "state", "renew", "release")
SHARED_SCRIPTS = ("claim", "give", "queue", "take", "beat")


def test_every_lua_script_ships_with_the_package_and_none_twice() -> None:
    texts = [lua_source("scrapy_checkpoint.stores", name) for name in STORE_SCRIPTS]
    texts += [lua_source("scrapy_checkpoint.shared", name) for name in SHARED_SCRIPTS]
    assert all("redis.call" in text for text in texts)
    bodies = ["\n".join(line for line in text.splitlines() if not line.startswith("--"))
              for text in texts]
    assert len(set(bodies)) == len(bodies)


def test_a_tracked_stage_marks_its_finished_units_and_clears_the_ones_it_journals(
    redis_backend: str,
) -> None:
    from scrapy_checkpoint.stores.redis import RedisStore

    store = RedisStore(redis_backend)
    finished, unjournaled = store.key("index", "finished"), store.key("index", "waiting")
    codes = [key_code(f"u{i}") for i in range(4)]
    store.client.hset(unjournaled, mapping={str(code): "payload" for code in codes})
    store.track_units("s", finished=finished, mark="done", unjournaled=unjournaled)
    cp = EnhancedCheckpoint(stage="s", store=store, log_every=0)
    cp.start()
    for code in codes[:3]:
        cp.add_unit(code, {"n": code})
    cp.hand_off([codes[2]])  # handed off in the same group: still waiting for its taker
    cp.finish_unit(codes[0], processed=1, successful=1)
    cp.finish_unit(codes[1], processed=1, failed=1)
    cp.save()
    assert store.client.hgetall(finished) == {str(codes[0]).encode(): b"done",
                                              str(codes[1]).encode(): b"done"}
    assert sorted(store.client.hkeys(unjournaled)) == sorted(str(c).encode() for c in codes[2:])
    cp.complete()
    cp.close()
    store.close()


def test_a_commit_hook_value_replay_would_refuse_is_never_written(store_location: str) -> None:
    cp = EnhancedCheckpoint(store_location, "s", log_every=0, save_every=1)
    cp.start()
    cp.update(processed=1, successful=1, index=0)
    cp.add_commit_hook(lambda: {TOTAL: 1 << 70})  # beyond a 64-bit count
    with pytest.raises(CheckpointError, match="a commit hook gave a value the journal cannot hold"):
        cp.update(processed=1, successful=1, index=1)
    cp.abandon()
    again = EnhancedCheckpoint(store_location, "s", log_every=0)
    again.open()
    assert again.dropped_bytes == 0  # nothing damaged: the bad group was not written
    assert again.should_skip(0)
    again.close()
