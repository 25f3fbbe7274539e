"""Local backend configuration: task meta first, then the config file, then None (§7.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fractal_runner.taskproc.local_config import (
    LocalBackendConfig,
    LocalBackendConfigError,
    get_local_config,
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "local.json"
    path.write_text(json.dumps({"parallel_tasks_per_job": 4}))
    return path


def test_defaults_to_none() -> None:
    assert get_local_config(None, None) == LocalBackendConfig(parallel_tasks_per_job=None)
    assert get_local_config({}, None).parallel_tasks_per_job is None
    assert get_local_config({"cpus_per_task": 4}, None).parallel_tasks_per_job is None


def test_file_is_used_without_meta_key(config_file: Path) -> None:
    assert get_local_config(None, config_file).parallel_tasks_per_job == 4
    assert get_local_config({"mem": 1000}, config_file).parallel_tasks_per_job == 4


def test_meta_wins_over_file(config_file: Path) -> None:
    assert get_local_config({"parallel_tasks_per_job": 2}, config_file).parallel_tasks_per_job == 2
    # As in the reference, a present key wins even when null: the file is not consulted.
    meta_null = {"parallel_tasks_per_job": None}
    assert get_local_config(meta_null, config_file).parallel_tasks_per_job is None


def test_meta_key_skips_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert get_local_config({"parallel_tasks_per_job": 3}, broken).parallel_tasks_per_job == 3


@pytest.mark.parametrize("value", [0, -1, "many", 1.5])
def test_invalid_meta_value(value: object) -> None:
    with pytest.raises(LocalBackendConfigError, match="workflow task meta"):
        get_local_config({"parallel_tasks_per_job": value}, None)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[4]", "expected a JSON object"),
        ('{"parallel_tasks_per_job": 0}', "greater than 0"),
        ('{"parallel_tasks_per_job": 2, "cpus": 1}', "Extra inputs are not permitted"),
    ],
)
def test_invalid_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "local.json"
    path.write_text(content)
    with pytest.raises(LocalBackendConfigError, match=match) as info:
        get_local_config(None, path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LocalBackendConfigError, match="Cannot read"):
        get_local_config(None, tmp_path / "missing.json")


def test_model_forbids_extra_fields() -> None:
    with pytest.raises(ValueError):
        LocalBackendConfig.model_validate({"parallel_tasks_per_job": 1, "other": 2})
