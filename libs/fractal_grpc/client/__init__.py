"""The Python client of fractal-grpc.

``Client`` (async) and ``SyncClient`` (blocking): one typed method per public RPC, deadlines,
retries from the one service config, token refresh from a saved ``Credential``, and
``FractalError`` exceptions with the status code and details. ``FractalClient`` is the thin
stub bundle the tests and benchmarks use; ``open_channel`` the channel every service client
uses.
"""

from fractal_grpc.client.api import Client, Credential, merge_job, new_request_id
from fractal_grpc.client.channel import open_channel, retried_methods, service_config
from fractal_grpc.client.errors import (
    AlreadyExistsError,
    ConflictError,
    FieldViolation,
    FractalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
)
from fractal_grpc.client.legacy import FractalClient, Metadata
from fractal_grpc.client.sync import SyncClient
from fractal_grpc.settings import DEFAULT_API_MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_API_MAX_MESSAGE_BYTES",
    "AlreadyExistsError",
    "Client",
    "ConflictError",
    "Credential",
    "FieldViolation",
    "FractalClient",
    "FractalError",
    "InvalidArgumentError",
    "Metadata",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "SyncClient",
    "merge_job",
    "new_request_id",
    "open_channel",
    "retried_methods",
    "service_config",
]
