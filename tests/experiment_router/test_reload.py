"""Hot reload: a changed file swaps the whole Router; a bad file is rejected, logged and counted."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from experiment_router import ConfigError
from experiment_router.errors import ModelCheckUnavailable
from experiment_router.reload import ConfigWatcher
from tests.experiment_router.helpers import base_config, experiment


def _count(result: str) -> float:
    return REGISTRY.get_sample_value("mtrank_router_config_reload_total", {"result": result}) or 0.0


def _write(path: Path, data: dict, bump: int) -> None:
    path.write_text(yaml.safe_dump(data))
    stamp = time.time() + bump  # distinct mtimes even on coarse filesystem clocks
    os.utime(path, (stamp, stamp))


def test_good_change_swaps_and_bad_change_keeps_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "exp.yaml"
    data = base_config()
    _write(path, data, 0)
    errors: list[ConfigError] = []
    watcher = ConfigWatcher(path, interval_s=0.05, on_error=errors.append, settle_s=0)
    first = watcher.current
    assert first.experiment_keys == ("exp-a",)
    assert watcher.check_now() is False  # unchanged file: nothing to do

    ok_before, bad_before = _count("success"), _count("failure")
    data["experiments"].append(experiment("exp-b", stage="retrieval"))
    _write(path, data, 10)
    assert watcher.check_now() is True
    second = watcher.current
    assert second is not first and second.experiment_keys == ("exp-a", "exp-b")
    assert _count("success") == ok_before + 1

    data["experiments"][1]["coverage"] = 7
    _write(path, data, 20)
    with caplog.at_level(logging.ERROR, logger="experiment_router.reload"):
        assert watcher.check_now() is False
    assert watcher.current is second  # the previous config stays active
    assert _count("failure") == bad_before + 1
    assert len(errors) == 1 and errors[0].field == "experiments[1].coverage"
    assert "rejected, keeping the previous one" in caplog.text and "exp-b" in caplog.text
    assert watcher.check_now() is False and _count("failure") == bad_before + 1  # same bad file: once


def test_polling_thread_picks_up_changes(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    data = base_config()
    _write(path, data, 0)
    reloaded = []
    with ConfigWatcher(path, interval_s=0.02, on_reload=reloaded.append) as watcher:
        data["experiments"][0]["status"] = "stopped"
        _write(path, data, 10)
        deadline = time.monotonic() + 10
        while not reloaded and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reloaded and watcher.current is reloaded[0]
        assert watcher.current.assign("u")[0].reason == "stopped"


def test_deleted_file_keeps_router(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    watcher = ConfigWatcher(path)
    router = watcher.current
    path.unlink()
    assert watcher.check_now() is False and watcher.current is router


def test_a_file_emptied_keeps_the_previous_router_and_logs_one_line_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    watcher = ConfigWatcher(path, settle_s=0)
    router = watcher.current
    path.write_text("")  # truncated by an operator, or by a writer that never finished
    os.utime(path, (time.time() + 10,) * 2)
    with caplog.at_level(logging.ERROR, logger="experiment_router.reload"):
        assert watcher.check_now() is False
        assert watcher.check_now() is False  # the same empty file is not reported again
    assert watcher.current is router
    assert [r.getMessage() for r in caplog.records] == [
        f"experiment config {path} rejected, keeping the previous one: {path}:1: the file is empty "
        "(or holds only comments): expected a mapping with 'defaults' and 'experiments'"
    ]


def test_invalid_initial_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("defaults: {}\n")
    with pytest.raises(ConfigError):
        ConfigWatcher(path)


def test_a_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(ConfigError, match="not UTF-8 text"):  # was a UnicodeDecodeError: a server traceback
        ConfigWatcher(path)
    _write(path, base_config(), 0)
    watcher = ConfigWatcher(path, settle_s=0)
    router = watcher.current
    path.write_bytes(b"\xff\xfe binary")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert watcher.check_now() is False and watcher.current is router


def test_a_half_written_file_is_not_applied_until_it_settles(tmp_path: Path) -> None:
    """A writer caught half-way leaves a valid but truncated file (one experiment fewer): never applied."""
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    reloaded = []
    watcher = ConfigWatcher(path, on_reload=reloaded.append, settle_s=0.3)
    full = base_config()
    full["experiments"][0]["coverage"] = 0.5
    full["experiments"].append(experiment("exp-b", stage="retrieval"))
    text = yaml.safe_dump(full)
    path.write_text(text[: text.index("- key: exp-b")])  # truncated mid-write: still a valid config
    os.utime(path, (time.time() + 10,) * 2)
    assert watcher.check_now() is False  # seen, not applied
    time.sleep(0.2)
    _write(path, full, 20)  # the writer finishes within the settle period: the clock restarts
    assert watcher.check_now() is False
    time.sleep(0.2)
    assert watcher.check_now() is False  # 0.2 s after the last change: not settled yet
    time.sleep(0.15)
    assert watcher.check_now() is True
    assert [r.experiment_keys for r in reloaded] == [("exp-a", "exp-b")], "the truncated file never ran"


def test_unavailable_model_check_defers_the_reload_until_it_can_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "exp.yaml"
    data = base_config()
    _write(path, data, 0)
    reachable = {"now": True}

    def model_exists(stage: str, name: str, version: str) -> bool:
        if stage == "retrieval" and not reachable["now"]:
            raise ModelCheckUnavailable("retrieval service unreachable")
        return True

    watcher = ConfigWatcher(path, model_exists=model_exists, settle_s=0)
    first = watcher.current
    data["experiments"].append(experiment("exp-b", stage="retrieval"))
    _write(path, data, 10)
    reachable["now"] = False
    deferred = _count("deferred")
    with caplog.at_level(logging.WARNING, logger="experiment_router.reload"):
        assert watcher.check_now() is False and watcher.check_now() is False
    assert watcher.current is first and _count("deferred") == deferred + 2
    assert caplog.text.count("not applied yet, keeping the previous one: retrieval service unreachable") == 1
    reachable["now"] = True
    assert watcher.check_now() is True  # the same file, unchanged: applied once the check can run
    assert watcher.current.experiment_keys == ("exp-a", "exp-b")


def test_a_reload_says_which_config_is_live_and_warns_when_users_switch_variant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ramping a running experiment's weights moves users between variants (no sticky store): say so."""
    path = tmp_path / "exp.yaml"
    data = base_config()
    for variation, weight in zip(data["experiments"][0]["variations"], (0.9, 0.1), strict=True):
        variation["weight"] = weight
    _write(path, data, 0)
    watcher = ConfigWatcher(path, settle_s=0)
    first = hashlib.sha256(path.read_bytes()).hexdigest()
    assert REGISTRY.get_sample_value("mtrank_router_config_info", {"path": str(path), "sha256": first}) == 1

    data["experiments"][0]["coverage"] = 1.0  # same split: nobody switches
    _write(path, data, 10)
    with caplog.at_level(logging.INFO, logger="experiment_router.reload"):
        assert watcher.check_now() is True
    assert "switch variant" not in caplog.text
    for variation in data["experiments"][0]["variations"]:
        variation["weight"] = 0.5
    _write(path, data, 20)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="experiment_router.reload"):
        assert watcher.check_now() is True
    live = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"sha256 {live}" in caplog.text
    assert REGISTRY.get_sample_value("mtrank_router_config_info", {"path": str(path), "sha256": live}) == 1
    assert REGISTRY.get_sample_value("mtrank_router_config_info", {"path": str(path), "sha256": first}) is None
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "experiment 'exp-a'" in warning.message and "switch variant" in warning.message
    switched = int(warning.message.split("sampled users, ")[1].split(" ")[0])
    assert 3_500 < switched < 4_500  # hashes in [0.5, 0.9) of 10,000 sampled users move to treatment


def test_the_config_in_force_at_start_is_logged_with_its_sha256(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only reloads were logged with their sha256: a server that never reloaded had no log line saying which
    config was live (the README: each applied config is logged with the sha256 of its text)."""
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    with caplog.at_level(logging.INFO, logger="experiment_router.reload"):
        ConfigWatcher(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert [r.getMessage() for r in caplog.records] == [
        f"experiment config {path} loaded: sha256 {digest}, 1 experiments"
    ]


def test_a_write_finished_within_the_same_mtime_tick_is_applied(tmp_path: Path) -> None:
    """The kernel's mtime clock ticks every few ms: a writer caught half-way can finish in the same tick with
    the same size. Only the mtime was compared, so the truncated file was applied and the full one never."""
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    reloaded = []
    watcher = ConfigWatcher(path, on_reload=reloaded.append, settle_s=0.2)
    full = base_config()
    full["experiments"].append(experiment("exp-b", stage="retrieval"))
    text = yaml.safe_dump(full)
    truncated = text[: text.index("- key: exp-b")]
    path.write_text(truncated + "#" * (len(text) - len(truncated) - 1) + "\n")  # same size as the full file
    stamp = time.time() + 10
    os.utime(path, (stamp, stamp))
    assert watcher.check_now() is False  # seen, settling
    path.write_text(text)
    os.utime(path, (stamp, stamp))  # finished within the same tick
    time.sleep(0.25)
    watcher.check_now()
    time.sleep(0.25)
    watcher.check_now()
    assert [r.experiment_keys for r in reloaded] == [("exp-a", "exp-b")]


def test_an_atomic_replace_that_keeps_the_mtime_is_applied(tmp_path: Path) -> None:
    """`cp -p`, `tar` and `rsync -t` keep a file's mtime: a replacement whose mtime equals the old file's was
    never noticed. Its inode differs."""
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    stamp = os.stat(path).st_mtime
    watcher = ConfigWatcher(path, settle_s=0)
    data = base_config()
    data["experiments"].append(experiment("exp-b", stage="retrieval"))
    staged = tmp_path / "exp.yaml.new"
    _write(staged, data, 0)
    os.utime(staged, (stamp, stamp))
    os.replace(staged, path)
    assert watcher.check_now() is True and watcher.current.experiment_keys == ("exp-a", "exp-b")


def test_a_deleted_file_is_reported_once_and_its_return_is_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deleted config was logged as an error and counted as a failed reload at every poll (every 2 s)."""
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    errors: list[ConfigError] = []
    watcher = ConfigWatcher(path, on_error=errors.append, settle_s=0)
    router = watcher.current
    path.unlink()
    failures = _count("failure")
    with caplog.at_level(logging.ERROR, logger="experiment_router.reload"):
        for _ in range(5):
            assert watcher.check_now() is False and watcher.current is router
    assert _count("failure") == failures + 1 and len(errors) == 1
    assert caplog.text.count("No such file or directory") == 1
    data = base_config()
    data["experiments"].append(experiment("exp-b", stage="retrieval"))
    _write(path, data, 10)
    assert watcher.check_now() is True and watcher.current.experiment_keys == ("exp-a", "exp-b")
    path.unlink()
    assert watcher.check_now() is False and len(errors) == 2  # a new deletion is reported again


def test_a_rejected_reload_logs_one_line_per_problem_each_with_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two problems were logged as one record of two lines: the second had no time, level or logger."""
    path = tmp_path / "exp.yaml"
    data = base_config()
    _write(path, data, 0)
    watcher = ConfigWatcher(path, settle_s=0)
    for variation in data["experiments"][0]["variations"]:
        variation["weight"] = -1
    _write(path, data, 10)
    failures = _count("failure")
    with caplog.at_level(logging.ERROR, logger="experiment_router.reload"):
        assert watcher.check_now() is False
    assert _count("failure") == failures + 1
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    for message, index in zip(messages, (0, 1), strict=True):
        assert message.startswith(f"experiment config {path} rejected, keeping the previous one: {path}:")
        assert f"variations[{index}].weight" in message


def test_a_reload_of_a_file_that_is_not_utf8_names_the_line_of_the_stray_byte(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    _write(path, base_config(), 0)
    errors: list[ConfigError] = []
    watcher = ConfigWatcher(path, on_error=errors.append, settle_s=0)
    path.write_bytes(yaml.safe_dump(base_config()).replace("exp-a", "exp-\xe9").encode("latin-1"))
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert watcher.check_now() is False
    assert len(errors) == 1 and errors[0].line is not None and "byte 0xe9" in errors[0].message
