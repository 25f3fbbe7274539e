"""When the runner is ready: once it has reached api (and, before that, NATS).

A runner that cannot reach api takes job commands from NATS and then waits forever on its first
call, so every job stays SUBMITTED. Its health therefore answers NOT_SERVING until a call to api
has succeeded: the health check of api's ``JobExecutionService`` through the runner's own
channel, which fails for a wrong address as well as for an api that does not serve the internal
service there. Why it is not ready is logged (once per distinct reason).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fractal.internal.v1 import job_execution_service_pb2

log = logging.getLogger("fractal.runner.readiness")

API_SERVICE = job_execution_service_pb2.DESCRIPTOR.services_by_name["JobExecutionService"].full_name


async def api_problem(channel: grpc.aio.Channel, deadline: float = 5.0) -> str | None:
    """None if api, at the other end of ``channel``, serves ``JobExecutionService``; else
    what is wrong, in words."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=API_SERVICE), timeout=deadline
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return f"the server there does not serve {API_SERVICE}"
        return f"{exc.code().name}: {exc.details()}"
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return f"{API_SERVICE} is {status} there"
    return None


async def wait_for_api(
    channel: grpc.aio.Channel, url: str, *, first_delay: float = 0.2, max_delay: float = 5.0
) -> None:
    """Return once api answers through ``channel`` (``url`` names it in the log)."""
    delay = first_delay
    reported: str | None = None
    while (problem := await api_problem(channel)) is not None:
        if problem != reported:
            log.warning(
                "cannot reach the api at %s (FRACTAL_API_URL): %s; not ready until it can",
                url,
                problem,
            )
            reported = problem
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
    log.info("reached the api at %s; ready", url)
