"""The collector's metrics and logs as a real process: ``fractal-collector serve`` with JSON
logs beside a real api, two collections of the collector tests' fixture wheels (one that
installs, one without a manifest), then its metrics endpoint scraped over HTTP."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import pytest
from e2e_stack import Stack, running_stack, stack_env, start
from test_observability import grown, json_lines, scrape, value

from fractal.v2 import task_collection_pb2 as cpb
from helpers import ApiClient
from world import NATS_URL, RUN_ID, create_database, delete_streams, drop_database

sys.path.insert(0, str(Path(__file__).parents[1] / "collector"))

from collections_api import collected  # noqa: E402
from wheels import build_fixtures  # noqa: E402

TAG = "obs"


@pytest.fixture(scope="module")
def collector_stack(
    key_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, dict[str, Path]]]:
    name = f"fractal_cobs_{RUN_ID}"
    prefix = f"c{RUN_ID}"
    url = create_database(name)
    state = tmp_path_factory.mktemp("cobs")
    wheels_dir = state / "wheels"
    wheels_dir.mkdir()
    wheels = build_fixtures(wheels_dir, TAG)
    env = stack_env(
        key_env,
        database_url=url,
        nats_url=NATS_URL,
        nats_prefix=prefix,
        state=state,
        FRACTAL_LOG_FORMAT="json",
        FRACTAL_TASKS_DIR=str(state / "tasks"),
        FRACTAL_COLLECTOR_INSTALLER="uv",
        FRACTAL_COLLECTOR_NO_INDEX="true",
        FRACTAL_COLLECTOR_FIND_LINKS=str(wheels_dir),
    )
    try:
        with running_stack(env, state / "logs") as started:
            start(started, "collector")
            yield started, wheels
    finally:
        drop_database(name)
        delete_streams(prefix)


async def test_collector_metrics_and_logs_after_real_collections(
    collector_stack: tuple[Stack, dict[str, Path]],
) -> None:
    stack, wheels = collector_stack
    address = stack.env["FRACTAL_COLLECTOR_METRICS_ADDRESS"]
    before = scrape(address)

    async with grpc.aio.insecure_channel(stack.api_address) as channel:
        admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        user = await admin.new_user(verified=True)
        good, _ = await collected(user, str(wheels["good"]))
        bare, _ = await collected(user, str(wheels["no_manifest"]))
    assert good.state == cpb.COLLECTION_STATE_OK, good.log
    assert bare.state == cpb.COLLECTION_STATE_FAILED, bare.log

    after = scrape(address)
    finished = "fractal_collector_collections_finished_total"
    assert grown(before, after, finished, state="ok") == 1
    assert grown(before, after, finished, state="failed") == 1
    # Each collection ran the installer: environment, install and freeze for the good one,
    # environment and install (then no manifest) for the other. Every run is timed.
    runs = grown(before, after, "fractal_collector_installer_seconds_count", installer="uv")
    assert runs >= 5
    total = grown(before, after, "fractal_collector_installer_seconds_sum", installer="uv")
    assert total > 0
    # The two commands consumed from NATS, each acked once its collection had ended.
    consumed = "fractal_nats_messages_handled_total"
    assert grown(before, after, consumed, consumer="collector-submit", outcome="ack") == 2
    # Its own listener is counted (the health checks that found it serving), process metrics
    # are served, and api's numbers are not mixed in.
    handled = "fractal_grpc_server_handled_total"
    assert value(after, handled, grpc_service="grpc.health.v1.Health", grpc_code="OK") >= 1
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "fractal_outbox_published_total") == 0
    api = scrape(stack.env["FRACTAL_API_METRICS_ADDRESS"])
    assert value(api, finished) == 0
    # The registration calls it made reached api's internal listener.
    registration = {"grpc_service": "fractal.internal.v1.TaskRegistrationService"}
    assert value(api, handled, **registration, grpc_method="FinishCollection", grpc_code="OK") >= 2

    # JSON logs: every line of the collector is JSON, from service "collector", and names the
    # collections it handled.
    text = stack.log("collector")
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text[-2000:]
    lines = json_lines(text)
    assert lines and all(line["service"] == "collector" for line in lines)
    messages = [line["message"] for line in lines]
    assert any(m == f"collection {good.id}: OK" for m in messages), messages
    assert any(m.startswith(f"collection {bare.id}: FAILED") for m in messages), messages
