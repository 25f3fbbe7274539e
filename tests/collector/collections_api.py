"""Calling TaskCollectionService in the tests: collect, and follow a collection to its end."""

from __future__ import annotations

import asyncio
from typing import Any

from fractal.v2 import task_collection_pb2 as cpb
from fractal.v2 import task_collection_service_pb2 as pb
from fractal.v2 import task_service_pb2
from helpers import ApiClient

ENDED = (cpb.COLLECTION_STATE_OK, cpb.COLLECTION_STATE_FAILED)


async def collect(user: ApiClient, package: str, **fields: Any) -> cpb.TaskCollection:
    resp = await user.collections.CollectPip(
        pb.CollectPipRequest(package=package, **fields), metadata=user.md
    )
    return resp.collection


async def watch(
    user: ApiClient, collection_id: int, timeout: float = 120.0
) -> list[pb.WatchCollectionResponse]:
    """Every message of WatchCollection, to the end of the stream."""

    async def read() -> list[pb.WatchCollectionResponse]:
        stream = user.collections.WatchCollection(
            pb.WatchCollectionRequest(collection_id=collection_id), metadata=user.md
        )
        return [message async for message in stream]

    return await asyncio.wait_for(read(), timeout)


async def collected(
    user: ApiClient, package: str, **fields: Any
) -> tuple[cpb.TaskCollection, list[pb.WatchCollectionResponse]]:
    """Collect and wait for the end: (the final record with its log, the watched messages)."""
    first = await collect(user, package, **fields)
    messages = await watch(user, first.id)
    final = await user.collections.GetCollection(
        pb.GetCollectionRequest(collection_id=first.id, with_log=True), metadata=user.md
    )
    return final.collection, messages


async def tasks_with_source(user: ApiClient, prefix: str) -> list[Any]:
    found = []
    token = ""
    while True:
        page = await user.tasks.ListTasks(
            # With the args schemas (ListTasks leaves them out unless asked).
            task_service_pb2.ListTasksRequest(
                page_size=1000,
                page_token=token,
                args_schema_parallel=True,
                args_schema_non_parallel=True,
            ),
            metadata=user.md,
        )
        found += [t for t in page.tasks if t.source.startswith(prefix)]
        token = page.next_page_token
        if not token:
            return found
