"""Settings come from the environment; a bad value names its variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fractal_grpc.settings import (
    ApiSettings,
    CollectorSettings,
    RunnerSettings,
    SettingsError,
    load_settings,
)


def test_defaults_and_url_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTAL_DATABASE_URL", "postgresql://u@h:5/db")
    monkeypatch.setenv("FRACTAL_RUNNER_WORKING_BASE_DIR", "rel/jobs")
    settings = load_settings(ApiSettings)
    assert settings.database_url == "postgresql+asyncpg://u@h:5/db"
    assert settings.runner_working_base_dir.is_absolute()
    assert settings.api_submit_rate_limit == 2


@pytest.mark.parametrize(
    "name,value",
    [
        ("FRACTAL_API_SUBMIT_RATE_LIMIT", "-1"),
        ("FRACTAL_DATABASE_URL", "mysql://x"),
        ("FRACTAL_RUNNER_BACKEND", "kubernetes"),
        ("FRACTAL_NATS_PREFIX", "has space"),
        ("FRACTAL_DEFAULT_ADMIN_PASSWORD", "123"),
        ("FRACTAL_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings(ApiSettings)
    assert name in str(err.value)


def test_runner_local_config_file_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTAL_LOCAL_CONFIG_FILE", "/nonexistent/config.json")
    with pytest.raises(SettingsError) as err:
        load_settings(RunnerSettings)
    assert "FRACTAL_LOCAL_CONFIG_FILE" in str(err.value)


def test_missing_keys_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRACTAL_JWT_PRIVATE_KEY_FILE", raising=False)
    monkeypatch.delenv("FRACTAL_JWT_PRIVATE_KEY", raising=False)
    with pytest.raises(SettingsError) as err:
        load_settings(ApiSettings).jwt_private_key_pem()
    assert "FRACTAL_JWT_PRIVATE_KEY" in str(err.value)


def test_service_refuses_to_start_with_a_clear_message() -> None:
    env = {"FRACTAL_API_SUBMIT_RATE_LIMIT": "soon", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "fractal-api"), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "FRACTAL_API_SUBMIT_RATE_LIMIT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pip_cap_has_the_reference_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reference §9: FRACTAL_MAX_PIP_VERSION caps the pip upgrade of a new task environment.
    assert load_settings(CollectorSettings).pip_max_version == "24.0"
    monkeypatch.setenv("FRACTAL_MAX_PIP_VERSION", "23.3.1")
    assert load_settings(CollectorSettings).pip_max_version == "23.3.1"
    monkeypatch.setenv("FRACTAL_MAX_PIP_VERSION", "latest")
    with pytest.raises(SettingsError) as err:
        load_settings(CollectorSettings)
    assert str(err.value).startswith("invalid settings: FRACTAL_MAX_PIP_VERSION: ")
