"""Log lines as JSON or text, with the ids bound in the context (fractal_grpc.logs)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from fractal_grpc import logs
from fractal_grpc.grpckit.metrics import split_address
from fractal_grpc.settings import ApiSettings, RunnerSettings, SettingsError, load_settings

Capture = tuple[logging.Logger, io.StringIO, list[logging.Handler]]


@pytest.fixture
def capture() -> Iterator[Capture]:
    stream = io.StringIO()
    logger = logging.getLogger("fractal.test.logs")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    yield logger, stream, handlers
    for h in handlers:
        logger.removeHandler(h)


def use(capture: Capture, fmt: str) -> tuple[logging.Logger, io.StringIO]:
    logger, stream, handlers = capture
    h = logs.handler(stream, service="api", log_format=fmt)
    logger.addHandler(h)
    handlers.append(h)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_the_common_fields_and_the_bound_ids(capture: Capture) -> None:
    logger, stream = use(capture, "json")
    with logs.log_context(request_id="r-1", job_id=5, run_id=None):
        logger.info("job %s: %s", 5, "started", extra={"grpc_code": "OK"})
    logger.warning("outside")
    first, second = lines(stream)
    assert first["service"] == "api" and first["logger"] == "fractal.test.logs"
    assert first["level"] == "INFO" and first["message"] == "job 5: started"
    assert first["request_id"] == "r-1" and first["job_id"] == 5
    assert first["grpc_code"] == "OK"
    assert "run_id" not in first  # None is not bound
    assert str(first["time"]).endswith("+00:00")
    assert "request_id" not in second and "job_id" not in second


def test_a_json_line_carries_the_traceback_as_one_field(capture: Capture) -> None:
    logger, stream = use(capture, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"incident_id": "abc"})
    (line,) = lines(stream)
    assert line["incident_id"] == "abc" and line["level"] == "ERROR"
    assert "ValueError: boom" in str(line["exception"])


def test_a_text_line_ends_with_the_ids(capture: Capture) -> None:
    logger, stream = use(capture, "text")
    with logs.log_context(job_id=3):
        logger.info("hello")
    logger.info("plain")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("INFO fractal.test.logs: hello [job_id=3]")
    assert second.endswith("INFO fractal.test.logs: plain")


def test_ids_nest_and_are_restored() -> None:
    with logs.log_context(job_id=1):
        with logs.log_context(request_id="x"):
            assert logs.current_fields() == {"job_id": 1, "request_id": "x"}
        assert logs.current_fields() == {"job_id": 1}
    assert logs.current_fields() == {}


async def test_a_task_started_with_context_with_keeps_its_ids() -> None:
    seen: list[object] = []

    async def job() -> None:
        await asyncio.sleep(0)
        seen.append(dict(logs.current_fields()))

    await asyncio.create_task(job(), context=logs.context_with(job_id=9))
    assert seen == [{"job_id": 9}]
    assert logs.current_fields() == {}


@pytest.mark.parametrize(
    ("variable", "value", "ok"),
    [
        ("FRACTAL_LOG_FORMAT", "json", True),
        ("FRACTAL_LOG_FORMAT", "JSON", True),
        ("FRACTAL_LOG_FORMAT", "xml", False),
        ("FRACTAL_API_METRICS_ADDRESS", "", True),
        ("FRACTAL_API_METRICS_ADDRESS", "0.0.0.0:9451", True),
        ("FRACTAL_API_METRICS_ADDRESS", "[::]:9451", True),
        ("FRACTAL_API_METRICS_ADDRESS", "9451", False),
        ("FRACTAL_API_METRICS_ADDRESS", "host:99999", False),
    ],
)
def test_observability_settings(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, ok: bool
) -> None:
    monkeypatch.setenv("FRACTAL_JWT_PRIVATE_KEY", "x")
    monkeypatch.setenv(variable, value)
    if ok:
        load_settings(ApiSettings)
    else:
        with pytest.raises(SettingsError, match=variable):
            load_settings(ApiSettings)


def test_metrics_defaults_differ_per_service() -> None:
    api, runner = ApiSettings(), RunnerSettings()
    assert api.api_metrics_address == "127.0.0.1:9451"
    assert runner.runner_metrics_address == "127.0.0.1:9452"
    assert split_address("[::]:9451") == ("::", 9451)
    assert split_address(":9451") == ("0.0.0.0", 9451)
