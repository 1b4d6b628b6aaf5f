"""CheckpointSettings.from_settings: every CHECKPOINT_* setting read with Scrapy's getters."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings

from scrapy_checkpoint.config import CheckpointConfig
from scrapy_checkpoint.crawl import settings as settings_module
from scrapy_checkpoint.crawl.settings import CheckpointSettings
from scrapy_checkpoint.errors import ConfigError
from scrapy_checkpoint.stores import open_store
from scrapy_checkpoint.stores.file import FileStore
from scrapy_checkpoint.stores.memory import MemoryStore, forget_memory_store


def read(**values: Any) -> CheckpointSettings:
    return CheckpointSettings.from_settings(Settings(values))


def test_defaults() -> None:
    config = read()
    assert config == CheckpointSettings()
    assert (config.enabled, config.dir, config.stage_name, config.backend) == (
        False, "checkpoints", None, "file")
    assert (config.reset, config.retry_failed, config.shared, config.on_complete) == (
        False, False, False, "skip")
    assert (config.lease_seconds, config.redis_buffer, config.log_interval) == (60.0, 64 << 20, 30.0)
    assert (config.input_file, config.output, config.redis_ttl, config.redis_prefix) == (
        None, None, None, None)


def test_the_crawl_logs_by_time_not_by_count() -> None:
    assert CheckpointConfig().log_every == 100  # the core's default ...
    assert read().checkpoint.log_every == 0  # ... is not the crawl's
    assert read().checkpoint == CheckpointConfig(log_every=0, keep_snapshots=2)
    assert CheckpointConfig().keep_snapshots == 10  # a crawl's snapshots hold its frontier
    assert read(CHECKPOINT_LOG_EVERY="50").checkpoint.log_every == 50


@pytest.mark.parametrize("field", ["enabled", "reset", "retry_failed", "shared"])
@pytest.mark.parametrize(("raw", "expected"), [
    ("False", False), ("false", False), ("0", False), (0, False), (False, False),
    ("True", True), ("true", True), ("1", True), (1, True), (True, True),
])
def test_bools_are_read_with_getbool(field: str, raw: object, expected: bool) -> None:
    assert getattr(read(**{f"CHECKPOINT_{field.upper()}": raw}), field) is expected


def test_numbers_text_and_dicts_are_read_with_their_getters() -> None:
    config = read(CHECKPOINT_LEASE_SECONDS="2.5", CHECKPOINT_LOG_INTERVAL="0",
                  CHECKPOINT_REDIS_BUFFER="1024", CHECKPOINT_DIR="/tmp/x",
                  CHECKPOINT_STAGE_NAME="books", CHECKPOINT_BACKEND="redis://127.0.0.1:1/0",
                  CHECKPOINT_REDIS_PREFIX="p", CHECKPOINT_INPUT_FILE="in.csv",
                  CHECKPOINT_ON_COMPLETE="restart", CHECKPOINT_OUTPUT="own.jl",
                  CHECKPOINT_REDIS_TTL='{"active": 10, "completed": 20}')
    assert config.lease_seconds == 2.5
    assert config.log_interval == 0.0
    assert config.redis_buffer == 1024
    assert (config.dir, config.stage_name, config.backend, config.redis_prefix) == (
        "/tmp/x", "books", "redis://127.0.0.1:1/0", "p")
    assert (config.input_file, config.on_complete, config.output) == ("in.csv", "restart",
                                                                       "own.jl")
    assert config.redis_ttl == {"active": 10, "completed": 20}
    assert read(CHECKPOINT_REDIS_TTL={"failed": 5}).redis_ttl == {"failed": 5}


def test_an_empty_setting_keeps_its_default() -> None:
    config = read(CHECKPOINT_DIR="", CHECKPOINT_SAVE_EVERY="", CHECKPOINT_REDIS_TTL="")
    assert config.dir == "checkpoints"
    assert config.checkpoint.save_every == CheckpointConfig().save_every
    assert config.redis_ttl is None


def _other_value(name: str) -> Any:
    """A valid value of core option ``name`` other than its default (for any field type)."""
    info = CheckpointConfig.model_fields[name]
    default = info.default
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return next(v for v in typing.get_args(annotation) if v != default)
    if annotation is bool:
        return not default
    if annotation is int:
        return default + 1
    if annotation is float:
        return default * 2 + 1
    raise AssertionError(f"no sample value for {name}: {annotation}; extend this test")


CORE_FIELDS = sorted(CheckpointConfig.model_fields)


@pytest.mark.parametrize("name", CORE_FIELDS)
@pytest.mark.parametrize("as_text", [True, False], ids=["text", "typed"])
def test_every_core_option_is_a_setting(name: str, as_text: bool) -> None:
    value = _other_value(name)
    raw = str(value) if as_text else value
    config = read(**{f"CHECKPOINT_{name.upper()}": raw})
    assert getattr(config.checkpoint, name) == value
    # The other options keep the crawl's defaults.
    expected = CheckpointConfig(**{**settings_module.CRAWL_DEFAULTS, name: value})
    assert config.checkpoint == expected


def test_all_core_options_at_once() -> None:
    values = {name: _other_value(name) for name in CORE_FIELDS}
    config = read(**{f"CHECKPOINT_{name.upper()}": str(v) for name, v in values.items()})
    assert config.checkpoint == CheckpointConfig(**values)


def test_the_settings_table_names_every_setting() -> None:
    doc = settings_module.__doc__ or ""
    names = [n for n in CheckpointSettings.model_fields if n != "checkpoint"] + CORE_FIELDS
    assert [n for n in names if f"CHECKPOINT_{n.upper()}" not in doc] == []


@pytest.mark.parametrize(("values", "message"), [
    ({"CHECKPOINT_SAVE_EVERY": "0"}, "Invalid setting CHECKPOINT_SAVE_EVERY=0:"),
    ({"CHECKPOINT_SAVE_EVERY": 0}, "Invalid setting CHECKPOINT_SAVE_EVERY=0:"),
    ({"CHECKPOINT_SAVE_EVERY": "ten"}, "Invalid setting CHECKPOINT_SAVE_EVERY='ten': use a whole number"),
    ({"CHECKPOINT_DURABILITY": "sometimes"}, "Invalid setting CHECKPOINT_DURABILITY='sometimes':"),
    ({"CHECKPOINT_SAVE_INTERVAL": "soon"}, "Invalid setting CHECKPOINT_SAVE_INTERVAL='soon': use a number"),
    ({"CHECKPOINT_SYNC_INTERVAL": "0"}, "Invalid setting CHECKPOINT_SYNC_INTERVAL=0.0:"),
    ({"CHECKPOINT_LOG_EVERY": "-1"}, "Invalid setting CHECKPOINT_LOG_EVERY=-1:"),
    ({"CHECKPOINT_COMPACT_MIN_BYTES": "100"}, "Invalid setting CHECKPOINT_COMPACT_MIN_BYTES=100:"),
    ({"CHECKPOINT_RESET": "maybe"}, "Invalid setting CHECKPOINT_RESET='maybe': use True or False"),
    ({"CHECKPOINT_ENABLED": "yes please"}, "Invalid setting CHECKPOINT_ENABLED='yes please':"),
    ({"CHECKPOINT_RETRY_FAILED": "2"}, "Invalid setting CHECKPOINT_RETRY_FAILED='2': use True or False"),
    ({"CHECKPOINT_RETRY_FAILED": 2}, "Invalid setting CHECKPOINT_RETRY_FAILED=2: use True or False"),
    ({"CHECKPOINT_RESET": "-1"}, "Invalid setting CHECKPOINT_RESET='-1': use True or False"),
    ({"CHECKPOINT_LEASE_SECONDS": "-1"}, "Invalid setting CHECKPOINT_LEASE_SECONDS=-1.0:"),
    ({"CHECKPOINT_REDIS_BUFFER": "lots"}, "Invalid setting CHECKPOINT_REDIS_BUFFER='lots':"),
    ({"CHECKPOINT_ON_COMPLETE": "never"}, "Invalid setting CHECKPOINT_ON_COMPLETE='never':"),
    ({"CHECKPOINT_BACKEND": "ftp://x"}, "Invalid setting CHECKPOINT_BACKEND='ftp://x': "),
    ({"CHECKPOINT_REDIS_TTL": '{"active": 0}'}, "Invalid setting CHECKPOINT_REDIS_TTL={'active': 0}:"),
    ({"CHECKPOINT_REDIS_TTL": '{"sometimes": 5}'}, "Invalid setting CHECKPOINT_REDIS_TTL="),
    ({"CHECKPOINT_REDIS_TTL": "{not json"},
     "Invalid setting CHECKPOINT_REDIS_TTL='{not json': use a dict, or its JSON text"),
])
def test_a_bad_value_names_the_setting(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CheckpointSettings.from_settings(Settings(values))
    assert str(info.value).startswith(message), str(info.value)
    assert "Fix it in settings.py" in str(info.value)


def test_a_memory_backend_is_a_memory_store_shared_by_its_name() -> None:
    store = read(CHECKPOINT_BACKEND="memory://settings-test").store()
    try:
        assert isinstance(store, MemoryStore)
        assert store.location == "memory://settings-test"
        store.write_state("s", b"{}")
        assert open_store("memory://settings-test").stages() == ["s"]
    finally:
        forget_memory_store("settings-test")


def test_a_postgresql_backend_is_a_postgres_store_with_the_crawl_buffer(
    postgresql_backend: str,
) -> None:
    from scrapy_checkpoint.stores.postgres import PostgresStore

    for url in (postgresql_backend, postgresql_backend.replace("postgresql://", "postgres://", 1)):
        store = read(CHECKPOINT_BACKEND=url, CHECKPOINT_REDIS_BUFFER=4096).store()
        assert isinstance(store, PostgresStore)
        assert store.buffer_bytes == 4096
        assert store.schema == postgresql_backend.rsplit("schema=", 1)[1]
        store.close()


def test_the_file_backend_is_a_file_store_in_the_directory(tmp_path: Path) -> None:
    store = read(CHECKPOINT_DIR=str(tmp_path / "cp")).store()
    assert isinstance(store, FileStore)
    assert Path(str(store.location)) == tmp_path / "cp"


@pytest.mark.parametrize(("name", "closest"), [
    ("CHECKPOINT_DIRECTORY", "CHECKPOINT_DIR"),
    ("CHECKPOINT_ONCOMPLETE", "CHECKPOINT_ON_COMPLETE"),
    ("CHECKPOINT_ENABLE", "CHECKPOINT_ENABLED"),
    ("CHECKPOINT_STAGE", "CHECKPOINT_STAGE_NAME"),
    ("CHECKPOINT_DURABLE", "CHECKPOINT_DURABILITY"),
    ("CHECKPOINT_REDIS_URL", "CHECKPOINT_BACKEND"),
    ("CHECKPOINT_FOLDER", "CHECKPOINT_DIR"),
    # Near the prefix, not on it: a plural, a transposition, lower or mixed case, a split word.
    ("CHECKPOINTS_DIR", "CHECKPOINT_DIR"),
    ("CHECKPIONT_DIR", "CHECKPOINT_DIR"),
    ("checkpoint_dir", "CHECKPOINT_DIR"),
    ("CHECKPOINT_dir", "CHECKPOINT_DIR"),
    ("Checkpoint_Output", "CHECKPOINT_OUTPUT"),
    ("CHECK_POINT_RESET", "CHECKPOINT_RESET"),
    # A letter missing, the package's name before it.
    ("CHEKPOINT_DIR", "CHECKPOINT_DIR"),
    ("CHECKPONT_SAVE_EVERY", "CHECKPOINT_SAVE_EVERY"),
    ("SCRAPY_CHECKPOINT_DIR", "CHECKPOINT_DIR"),
    ("scrapy_checkpoint_backend", "CHECKPOINT_BACKEND"),
])
def test_an_unknown_setting_stops_with_the_closest_name(name: str, closest: str) -> None:
    with pytest.raises(ConfigError) as info:
        read(CHECKPOINT_ENABLED=True, **{name: "x"})
    message = str(info.value)
    assert message.startswith(f"Unknown setting {name}: did you mean {closest}? "), message
    assert "settings.py, custom_settings or -s" in message


def test_an_unknown_setting_far_from_every_name_stops_too() -> None:
    with pytest.raises(ConfigError, match=r"^Unknown setting CHECKPOINT_XYZZY: scrapy-checkpoint"):
        read(CHECKPOINT_ENABLED=True, CHECKPOINT_XYZZY=1)


def test_names_that_only_begin_like_the_prefix_are_left_alone() -> None:
    # Nothing close to a setting of the plugin after the prefix-like start: not ours.
    assert read(CHECKPOINT_ENABLED=True, CHECKPOINTER_URL="x", CHECK_INTERVAL=3).enabled


def test_unknown_names_are_not_checked_when_the_plugin_is_off() -> None:
    assert read(CHECKPOINT_DIRECTORY="x").enabled is False


def test_every_setting_the_plugin_reads_is_a_known_name() -> None:
    names = settings_module.setting_names()
    assert len(names) == len(set(names))
    assert read(**{**{n: "" for n in names}, "CHECKPOINT_ENABLED": True}).enabled is True


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: (p / "afile").write_text(""), "CHECKPOINT_DIR='{d}/afile' is not a directory"),
    (lambda p: (p / "afile").write_text(""), "CHECKPOINT_DIR='{d}/afile/cp' cannot be created"),
])
def test_an_unusable_dir_names_the_setting(tmp_path: Path, make: Any, message: str) -> None:
    make(tmp_path)
    directory = message.split("'")[1].format(d=tmp_path)
    with pytest.raises(ConfigError) as info:
        read(CHECKPOINT_DIR=directory).store()
    text = str(info.value)
    assert text.startswith(message.format(d=tmp_path)), text
    assert "Set CHECKPOINT_DIR to a directory" in text


@pytest.mark.parametrize(("output", "reason"), [
    ("{d}/afile/all.jl", "'{d}/afile' is a file, not a directory"),
    ("{d}/afile/deeper/all.jl", "'{d}/afile' is a file, not a directory"),
    ("{d}/adir", "it is a directory"),
])
def test_an_output_that_cannot_be_written_stops_at_start_naming_the_setting(
    tmp_path: Path, output: str, reason: str
) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    path = output.format(d=tmp_path)
    with pytest.raises(ConfigError) as info:
        read(CHECKPOINT_DIR=str(tmp_path / "cp"), CHECKPOINT_OUTPUT=path).store()
    text = str(info.value)
    assert text.startswith(f"CHECKPOINT_OUTPUT={path!r} cannot be written "
                           f"({reason.format(d=tmp_path)})"), text
    assert not (tmp_path / "cp").exists()  # refused before anything is created


def test_a_new_output_in_a_writable_directory_is_accepted_untouched(tmp_path: Path) -> None:
    read(CHECKPOINT_DIR=str(tmp_path / "cp"),
         CHECKPOINT_OUTPUT=str(tmp_path / "new" / "all.jl")).store()
    assert not (tmp_path / "new").exists()


def test_a_dir_that_cannot_be_written_names_the_setting(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> Any:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(settings_module.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ConfigError, match=r"^CHECKPOINT_DIR='.*' cannot be written \(Operation "
                                          r"not permitted\)\. Set CHECKPOINT_DIR"):
        read(CHECKPOINT_DIR=str(tmp_path / "cp")).store()


def test_the_store_creates_a_missing_dir_and_leaves_nothing_in_it(tmp_path: Path) -> None:
    read(CHECKPOINT_DIR=str(tmp_path / "a" / "b")).store()
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_the_completed_stage_line_says_how_to_start_over_without_a_password() -> None:
    file_store = CheckpointSettings.from_settings(Settings({"CHECKPOINT_DIR": "data/cp"}))
    assert file_store.completed_message("shop") == (
        "Stage shop is already completed: nothing to fetch, outputs left as they are. To crawl "
        "it again from the start, add -s CHECKPOINT_RESET=True, or run scrapy-checkpoint --dir "
        "data/cp reset shop first.")
    redis = CheckpointSettings.from_settings(
        Settings({"CHECKPOINT_BACKEND": "redis://user:s3cret@127.0.0.1:6379/0"}))
    line = redis.completed_message("shop")
    assert "--backend 'redis://user:***@127.0.0.1:6379/0' reset shop" in line
    assert "s3cret" not in line


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("12h", 43200), ("7d", 604800), ("90", 90), ("0s", 0), ("1.5h", 5400),
    (" 2D ", 172800),
])
def test_refresh_after_takes_durations(text: str, seconds: float) -> None:
    config = CheckpointSettings.from_settings(Settings({
        "CHECKPOINT_ON_COMPLETE": "incremental", "CHECKPOINT_REFRESH_AFTER": text}))
    assert config.refresh_seconds == seconds


@pytest.mark.parametrize("text", ["7 days", "-1d", "1w", "d"])
def test_a_refresh_after_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"CHECKPOINT_REFRESH_AFTER=.*such as 30m, 12h or 7d"):
        CheckpointSettings.from_settings(Settings({"CHECKPOINT_REFRESH_AFTER": text}))


def test_every_unknown_name_is_reported_at_once() -> None:
    """Two misspelled names: both in the one error, not the second on the next run."""
    with pytest.raises(ConfigError) as err:
        read(CHECKPOINT_ENABLED=True, CHECKPOINT_DIRECTORY="cp", CHECKPOINT_ONCOMPLETE="skip")
    assert str(err.value).startswith(
        "Unknown settings CHECKPOINT_DIRECTORY (did you mean CHECKPOINT_DIR?), "
        "CHECKPOINT_ONCOMPLETE (did you mean CHECKPOINT_ON_COMPLETE?): ")
