"""Metrics and logs of the real processes: api and runner started by ``fractal-api serve`` /
``fractal-runner serve`` with JSON logs, their metrics endpoints scraped over HTTP after jobs
ran through them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from e2e_stack import Stack, running_stack, stack_env
from prometheus_client.parser import text_string_to_metric_families

from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from helpers import ApiClient
from world import NATS_URL, RUN_ID, create_database, delete_streams, drop_database

MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def json_stack(
    key_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    name = f"fractal_obs_{RUN_ID}"
    prefix = f"o{RUN_ID}"
    url = create_database(name)
    state = tmp_path_factory.mktemp("obs")
    env = stack_env(
        key_env,
        database_url=url,
        nats_url=NATS_URL,
        nats_prefix=prefix,
        state=state,
        FRACTAL_LOG_FORMAT="json",
    )
    try:
        with running_stack(env, state / "logs") as started:
            yield started
    finally:
        drop_database(name)
        delete_streams(prefix)


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def run_job(client: ApiClient, zarr_dir: str, second: dict[str, Any]) -> job_pb2.Job:
    """A project with a workflow of two tasks: insert one image, then ``second``."""
    project = await client.new_project()
    ds = await client.datasets.CreateDataset(
        dataset_service_pb2.CreateDatasetRequest(
            project_id=project.id, name="ds", zarr_dir=zarr_dir
        ),
        metadata=client.md,
    )
    wf = await client.workflows.CreateWorkflow(
        workflow_service_pb2.CreateWorkflowRequest(project_id=project.id, name="wf"),
        metadata=client.md,
    )
    tasks = [
        (
            "insert",
            {"command_non_parallel": f"{sys.executable} {MOCK}/dummy_insert_single_image.py"},
        ),
        ("second", second),
    ]
    for name, fields in tasks:
        args = fields.pop("args_parallel", None)
        task = await client.tasks.CreateTask(
            task_service_pb2.CreateTaskRequest(
                name=name, source=f"{name}-{project.id}-{zarr_dir}", **fields
            ),
            metadata=client.md,
        )
        req = workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project.id, workflow_id=wf.workflow.id, task_id=task.task.id
        )
        if args:
            req.args_parallel.update(args)
        await client.workflows.CreateWorkflowTask(req, metadata=client.md)
    submitted = await client.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            project_id=project.id, workflow_id=wf.workflow.id, dataset_id=ds.dataset.id
        ),
        metadata=client.md,
    )
    last = submitted.job
    async for update in client.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(project_id=project.id, job_id=last.id),
        metadata=client.md,
        timeout=120,
    ):
        last = update.job
    return last


PARALLEL = {"command_parallel": f"{sys.executable} {MOCK}/generic_task_parallel.py"}
FAILING = {
    "command_parallel": f"{sys.executable} {MOCK}/generic_task_parallel.py",
    "args_parallel": {"raise_error": True},
}


async def test_metrics_show_the_rpcs_the_jobs_and_the_task_calls(
    json_stack: Stack, tmp_path: Path
) -> None:
    api_metrics = json_stack.env["FRACTAL_API_METRICS_ADDRESS"]
    runner_metrics = json_stack.env["FRACTAL_RUNNER_METRICS_ADDRESS"]
    api_before, runner_before = scrape(api_metrics), scrape(runner_metrics)

    async with grpc.aio.insecure_channel(json_stack.api_address) as channel:
        admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        user = await admin.new_user()
        done = await run_job(user, str(tmp_path / "a"), dict(PARALLEL))
        failed = await run_job(user, str(tmp_path / "b"), dict(FAILING))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await user.jobs.GetJob(
                job_service_pb2.GetJobRequest(project_id=999999, job_id=1), metadata=user.md
            )
    assert done.status == job_pb2.JOB_STATUS_DONE, done.log
    assert failed.status == job_pb2.JOB_STATUS_FAILED
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    handled = "fractal_grpc_server_handled_total"
    jobs = {"grpc_service": "fractal.v2.JobService"}
    # A call is counted when its handler has returned, which the client may see a moment
    # after its answer: scrape until the last call of the test (the NOT_FOUND) is in.
    deadline = time.monotonic() + 10
    while True:
        api, runner = scrape(api_metrics), scrape(runner_metrics)
        counted = grown(
            api_before, api, handled, **jobs, grpc_method="GetJob", grpc_code="NOT_FOUND"
        )
        if counted or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    internal = {"grpc_service": "fractal.internal.v1.JobExecutionService"}
    # The public RPCs, by method and code, streams included.
    assert grown(api_before, api, handled, **jobs, grpc_method="SubmitJob", grpc_code="OK") == 2
    assert (
        grown(
            api_before,
            api,
            handled,
            **jobs,
            grpc_method="WatchJob",
            grpc_type="server_stream",
            grpc_code="OK",
        )
        == 2
    )
    assert grown(api_before, api, handled, **jobs, grpc_method="GetJob", grpc_code="NOT_FOUND") == 1
    # Two logins: the admin's and the user's.
    assert grown(api_before, api, "fractal_grpc_server_started_total", grpc_method="Login") == 2
    # Latencies: one observation per call in the histogram's count.
    seconds = "fractal_grpc_server_handling_seconds_count"
    assert grown(api_before, api, seconds, **jobs, grpc_method="SubmitJob") == 2
    # The internal listener's RPCs, called by the runner.
    assert grown(api_before, api, handled, **internal, grpc_method="FinishJob", grpc_code="OK") == 2
    assert grown(api_before, api, handled, **internal, grpc_method="ApplyTaskResult") >= 2
    assert grown(api_before, api, handled, **internal, grpc_method="StreamTaskInputs") >= 2
    # The outbox: the two submit commands (and the job events) published, nothing left over.
    assert grown(api_before, api, "fractal_outbox_published_total") >= 2
    assert grown(api_before, api, "fractal_outbox_publish_lag_seconds_count") >= 2
    assert ("fractal_outbox_unsent_rows", frozenset()) in api
    assert ("fractal_outbox_oldest_unsent_age_seconds", frozenset()) in api

    # The runner: jobs by final state, task calls by outcome, the commands it consumed.
    finished = "fractal_runner_jobs_finished_total"
    assert grown(runner_before, runner, finished, state="done") == 1
    assert grown(runner_before, runner, finished, state="failed") == 1
    calls = "fractal_runner_task_calls_total"
    # Job a: insert + one parallel call done; job b: insert done, its parallel call failed.
    assert grown(runner_before, runner, calls, outcome="done") == 3
    assert grown(runner_before, runner, calls, outcome="failed") == 1
    consumed = "fractal_nats_messages_handled_total"
    assert grown(runner_before, runner, consumed, consumer="runner-submit", outcome="ack") == 2
    assert ("fractal_nats_redeliveries_total", frozenset({("consumer", "runner-submit")})) in runner
    # The runner's own listener counts too (the stack's health checks), and the process-wide
    # registry is served (process metrics; module-level counters such as SLURM's land there).
    assert value(runner, handled, grpc_service="grpc.health.v1.Health", grpc_code="OK") >= 1
    assert value(runner, "process_cpu_seconds_total") > 0
    # Each endpoint shows its own service's numbers only.
    assert value(api, finished) == 0 and value(runner, "fractal_outbox_published_total") == 0


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_json_logs_carry_service_ids_and_status_codes(
    json_stack: Stack, tmp_path: Path
) -> None:
    async with grpc.aio.insecure_channel(json_stack.api_address) as channel:
        admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        with pytest.raises(grpc.aio.AioRpcError):
            await admin.jobs.GetJob(
                job_service_pb2.GetJobRequest(project_id=424242, job_id=7),
                metadata=(*admin.md, ("x-request-id", "req-obs-1")),
            )
        user = await admin.new_user()
        job = await run_job(user, str(tmp_path / "c"), dict(PARALLEL))
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log

    api_lines = json_lines(json_stack.log("api"))
    runner_lines = json_lines(json_stack.log("runner"))
    assert api_lines and runner_lines
    # Every line of a JSON process is JSON, with the common fields.
    for lines, service in ((api_lines, "api"), (runner_lines, "runner")):
        for line in lines:
            assert line["service"] == service
            assert {"time", "level", "logger", "message"} <= set(line)
    everything = json_stack.log("api") + json_stack.log("runner")
    assert all(line.startswith("{") for line in everything.splitlines() if line.strip()), (
        "a log line that is not JSON"
    )
    # The failed call's line: method, status code, the request id from the metadata, the job id
    # from the request.
    failed = [line for line in api_lines if line.get("request_id") == "req-obs-1"]
    assert len(failed) == 1, failed
    assert failed[0]["grpc_code"] == "NOT_FOUND"
    assert failed[0]["grpc_method"] == "/fractal.v2.JobService/GetJob"
    assert failed[0]["job_id"] == 7
    assert "NOT_FOUND" in failed[0]["message"]
    # The runner's lines about the job carry its id.
    about = [line for line in runner_lines if f"job {job.id}:" in line["message"]]
    assert about and all(line.get("job_id") == job.id for line in about), about
