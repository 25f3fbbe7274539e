"""OpenTelemetry tracing: api and runner in this process, each with its own tracer (as
FRACTAL_OTEL_EXPORTER_OTLP_ENDPOINT gives them) exporting into one in-memory exporter. One job
makes one trace: api's SubmitJob → the outbox row → the NATS message → the runner's consumer →
its calls back to api's internal listener."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fractal.v2 import (
    dataset_service_pb2,
    job_pb2,
    job_service_pb2,
    project_service_pb2,
    task_service_pb2,
    workflow_service_pb2,
)
from fractal_api.app import ApiApp
from fractal_grpc.grpckit.tracing import Tracing
from fractal_grpc.settings import ApiSettings, RunnerSettings
from fractal_runner.app import RunnerApp
from helpers import ApiClient
from waiting import wait_until
from world import TEST_API_LISTENERS, delete_streams_async

MOCK = Path(__file__).resolve().parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"


def settings_env(service_env: dict[str, str], prefix: str) -> dict[str, Any]:
    env: dict[str, Any] = {k.removeprefix("FRACTAL_").lower(): v for k, v in service_env.items()}
    env.update(nats_prefix=prefix, grace_seconds=0.5)
    return env


@pytest.fixture(scope="module")
async def traced(
    service_env: dict[str, str], nats_prefix: str, state_dir: Path
) -> AsyncIterator[tuple[InMemorySpanExporter, str]]:
    """A traced api and runner on a NATS prefix of their own; yields the exporter and api's
    public address."""
    exporter = InMemorySpanExporter()
    prefix = f"{nats_prefix}tr"
    env = settings_env(service_env, prefix)
    api = ApiApp(
        ApiSettings(**{**env, **TEST_API_LISTENERS}),
        tracing=Tracing.with_exporter("api", exporter, batch=False),
    )
    port = await api.start()
    runner = RunnerApp(
        RunnerSettings(
            **{**env, "runner_working_base_dir": str(state_dir / "traced-jobs")},
            runner_address="127.0.0.1:0",
            api_url=f"127.0.0.1:{api.internal_port}",
        ),
        tracing=Tracing.with_exporter("runner", exporter, batch=False),
    )
    await runner.start()
    try:
        yield exporter, f"127.0.0.1:{port}"
    finally:
        await runner.stop()
        await api.stop()
        await delete_streams_async(prefix)


async def run_one_job(client: ApiClient, zarr_dir: str) -> job_pb2.Job:
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
    task = await client.tasks.CreateTask(
        task_service_pb2.CreateTaskRequest(
            name="insert",
            source=f"traced-insert-{project.id}",
            command_non_parallel=f"{sys.executable} {MOCK}/dummy_insert_single_image.py",
        ),
        metadata=client.md,
    )
    await client.workflows.CreateWorkflowTask(
        workflow_service_pb2.CreateWorkflowTaskRequest(
            project_id=project.id, workflow_id=wf.workflow.id, task_id=task.task.id
        ),
        metadata=client.md,
    )
    job = (
        await client.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                project_id=project.id, workflow_id=wf.workflow.id, dataset_id=ds.dataset.id
            ),
            metadata=client.md,
        )
    ).job
    async for update in client.jobs.WatchJob(
        job_service_pb2.WatchJobRequest(project_id=project.id, job_id=job.id),
        metadata=client.md,
        timeout=60,
    ):
        job = update.job
    return job


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def one(spans: list[ReadableSpan], **want: Any) -> ReadableSpan:
    found = [
        s
        for s in spans
        if all((service_of(s) if k == "service" else getattr(s, k)) == v for k, v in want.items())
    ]
    assert len(found) == 1, (want, [(s.name, service_of(s), s.kind) for s in spans])
    return found[0]


async def test_one_trace_spans_api_nats_runner_and_back(
    traced: tuple[InMemorySpanExporter, str], tmp_path: Path
) -> None:
    exporter, address = traced
    async with grpc.aio.insecure_channel(address) as channel:
        admin = await ApiClient.login(channel, "admin@fractal.xy", "1234")
        job = await run_one_job(await admin.new_user(), str(tmp_path / "zarr"))
    assert job.status == job_pb2.JOB_STATUS_DONE, job.log

    # The runner ends its FinishJob span once api's answer is back: maybe just after WatchJob saw
    # the job end.
    finish = "fractal.internal.v1.JobExecutionService/FinishJob"
    await wait_until(
        lambda: any(
            s.name == finish and s.kind == SpanKind.CLIENT for s in exporter.get_finished_spans()
        ),
        timeout=10,
    )
    spans = list(exporter.get_finished_spans())
    submit = one(
        spans,
        name="fractal.v2.JobService/SubmitJob",
        kind=SpanKind.SERVER,
        service="fractal-api",
    )
    trace_id = submit.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in in_trace}

    # The runner consumed the submit command as a child of SubmitJob (through the outbox row
    # and the NATS headers).
    consumer = one(in_trace, kind=SpanKind.CONSUMER, service="fractal-runner")
    assert consumer.name.endswith(".cmd.job.submit process")
    assert consumer.parent is not None and consumer.parent.span_id == submit.context.span_id

    # The runner's calls to api, each a CLIENT span in the runner with api's SERVER span under
    # it, all in the same trace.
    for method in ("GetJobSpec", "ApplyTaskResult", "FinishJob"):
        name = f"fractal.internal.v1.JobExecutionService/{method}"
        client = one(in_trace, name=name, kind=SpanKind.CLIENT, service="fractal-runner")
        server = one(in_trace, name=name, kind=SpanKind.SERVER, service="fractal-api")
        assert server.parent is not None and server.parent.span_id == client.context.span_id
        assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 0
        # Up the chain from the client span, the consumer span is reached.
        parent = client.parent
        ancestors = []
        while parent is not None and parent.span_id in by_id:
            ancestors.append(by_id[parent.span_id])
            parent = by_id[parent.span_id].parent
        assert consumer in ancestors, [a.name for a in ancestors]

    # A failed call is a span with an error status and its code.
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ApiClient(channel, "not-a-token")
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.projects.ListProjects(
                project_service_pb2.ListProjectsRequest(),
                metadata=stub.md,
            )
    # The server's span ends as the error leaves its interceptors: maybe after the client saw it.
    listed = "fractal.v2.ProjectService/ListProjects"
    await wait_until(
        lambda: any(s.name == listed for s in exporter.get_finished_spans()), timeout=10
    )
    failed = one(list(exporter.get_finished_spans()), name=listed, service="fractal-api")
    assert not failed.status.is_ok
    assert failed.attributes is not None and failed.attributes["rpc.grpc.status_code"] == 16


def test_tracing_is_off_without_an_endpoint() -> None:
    tracing = Tracing.from_endpoint("api", None)
    assert not tracing.enabled
    assert tracing.client_interceptors() == []
    assert Tracing.carrier() == {}
    with tracing.span("nothing") as span:
        assert span is None
    assert Tracing.from_endpoint("api", "http://127.0.0.1:4317").enabled
