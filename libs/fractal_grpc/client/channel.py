"""Channels to the services, all with the one gRPC service config (``protos/service_config.json``,
copied into the generated ``fractal`` package by ``make protos``).

The service config says, per method, what gRPC itself may do when a call fails before it got an
answer: reads, and the creates that carry a ``request_id`` (the client always sends one), are
retried on UNAVAILABLE with jittered exponential backoff; every public method waits for the
channel to be ready (a call made while api restarts is sent once it is back, within its
deadline) instead of failing at once. Everything else (updates, deletes, AddImages, StopJob,
ImportDataset) is sent once: a retry could apply it twice.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import grpc.aio

from fractal_grpc.grpckit.server import message_size_options
from fractal_grpc.settings import DEFAULT_API_MAX_MESSAGE_BYTES

SERVICE_CONFIG_FILE = "service_config.json"


@functools.cache
def service_config() -> dict[str, Any]:
    """The parsed service config (from the generated ``fractal`` package)."""
    try:
        text = resources.files("fractal").joinpath(SERVICE_CONFIG_FILE).read_text()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise RuntimeError(
            f"{SERVICE_CONFIG_FILE} is missing from the generated stubs: run `make protos`"
        ) from exc
    config: dict[str, Any] = json.loads(text)
    return config


def retried_methods() -> frozenset[str]:
    """``/package.Service/Method`` of every method the service config retries."""
    names: set[str] = set()
    for entry in service_config()["methodConfig"]:
        if "retryPolicy" in entry:
            names.update(f"/{n['service']}/{n['method']}" for n in entry["name"] if "method" in n)
    return frozenset(names)


def open_channel(
    address: str,
    extra_options: list[tuple[str, Any]] | None = None,
    *,
    max_message_bytes: int = DEFAULT_API_MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A channel to a service that sends and receives messages within api's limit
    (``FRACTAL_API_MAX_MESSAGE_BYTES``: a larger request fails in the client, unsent), under the
    service config."""
    options: list[tuple[str, Any]] = [
        *message_size_options(max_message_bytes),
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config())),
        *(extra_options or []),
    ]
    return grpc.aio.insecure_channel(
        address, options=options, interceptors=list(interceptors or ()) or None
    )
