"""``SyncClient``: the same methods as ``Client``, blocking, for scripts and notebooks.

The async client runs on an event loop in a thread of its own; each method hands its call to
that loop and waits for the result (streams are handed over item by item). The methods are
declared from ``Client``'s, so their signatures (and types) are the same.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from fractal_grpc.client.api import Client, Credential

P = ParamSpec("P")
T = TypeVar("T")


class _Blocking(Generic[P, T]):
    """A ``Client`` coroutine method, as a blocking method of ``SyncClient``."""

    def __init__(self, method: Callable[Concatenate[Client, P], Awaitable[T]]) -> None:
        self.method = method

    def __get__(self, obj: SyncClient, objtype: type | None = None) -> Callable[P, T]:
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            async def run() -> T:
                return await self.method(obj.aio, *args, **kwargs)

            result: T = obj.run(run())
            return result

        call.__doc__ = self.method.__doc__
        return call


class _BlockingStream(Generic[P, T]):
    """A ``Client`` method returning an async iterator, as one returning an iterator."""

    def __init__(self, method: Callable[Concatenate[Client, P], AsyncIterator[T]]) -> None:
        self.method = method

    def __get__(self, obj: SyncClient, objtype: type | None = None) -> Callable[P, Iterator[T]]:
        def call(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            async def start() -> AsyncIterator[T]:
                # On the client's loop: the method may open the channel, which binds to it.
                return self.method(obj.aio, *args, **kwargs)

            stream = obj.run(start())

            async def step() -> T:
                return await anext(stream)

            try:
                while True:
                    try:
                        yield obj.run(step())
                    except StopAsyncIteration:
                        return
            finally:
                obj.run(stream.aclose())  # type: ignore[attr-defined]

        call.__doc__ = self.method.__doc__
        return call


class SyncClient:
    """A blocking ``Client`` (same constructor). Close it, or use it as a context manager."""

    def __init__(
        self, address: str, token: str = "", *, credential: Credential | None = None, **kw: Any
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fractal-client", daemon=True
        )
        self._thread.start()
        self.aio = Client(address, token, credential=credential, **kw)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def token(self) -> str:
        return self.aio.token

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.run(self.aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    login = _Blocking(Client.login)
    get_current_user = _Blocking(Client.get_current_user)
    update_current_user = _Blocking(Client.update_current_user)
    create_user = _Blocking(Client.create_user)
    get_user = _Blocking(Client.get_user)
    list_users = _Blocking(Client.list_users)
    update_user = _Blocking(Client.update_user)
    create_project = _Blocking(Client.create_project)
    get_project = _Blocking(Client.get_project)
    list_projects = _Blocking(Client.list_projects)
    update_project = _Blocking(Client.update_project)
    delete_project = _Blocking(Client.delete_project)
    create_dataset = _Blocking(Client.create_dataset)
    get_dataset = _Blocking(Client.get_dataset)
    list_datasets = _Blocking(Client.list_datasets)
    update_dataset = _Blocking(Client.update_dataset)
    delete_dataset = _Blocking(Client.delete_dataset)
    export_dataset = _BlockingStream(Client.export_dataset)
    import_dataset = _Blocking(Client.import_dataset)
    add_images = _Blocking(Client.add_images)
    query_images = _Blocking(Client.query_images)
    update_image = _Blocking(Client.update_image)
    delete_images = _Blocking(Client.delete_images)
    create_task = _Blocking(Client.create_task)
    get_task = _Blocking(Client.get_task)
    list_tasks = _Blocking(Client.list_tasks)
    update_task = _Blocking(Client.update_task)
    delete_task = _Blocking(Client.delete_task)
    create_workflow = _Blocking(Client.create_workflow)
    get_workflow = _Blocking(Client.get_workflow)
    list_workflows = _Blocking(Client.list_workflows)
    update_workflow = _Blocking(Client.update_workflow)
    get_workflow_status = _Blocking(Client.get_workflow_status)
    delete_workflow = _Blocking(Client.delete_workflow)
    create_workflow_task = _Blocking(Client.create_workflow_task)
    get_workflow_task = _Blocking(Client.get_workflow_task)
    update_workflow_task = _Blocking(Client.update_workflow_task)
    delete_workflow_task = _Blocking(Client.delete_workflow_task)
    export_workflow = _Blocking(Client.export_workflow)
    import_workflow = _Blocking(Client.import_workflow)
    submit_job = _Blocking(Client.submit_job)
    get_job = _Blocking(Client.get_job)
    list_jobs = _Blocking(Client.list_jobs)
    stop_job = _Blocking(Client.stop_job)
    watch_job = _BlockingStream(Client.watch_job)
    download_job_folder = _BlockingStream(Client.download_job_folder)
    # AdminService (superusers)
    list_all_projects = _Blocking(Client.list_all_projects)
    list_all_jobs = _Blocking(Client.list_all_jobs)
    get_any_job = _Blocking(Client.get_any_job)
    mark_job_failed = _Blocking(Client.mark_job_failed)
    stop_any_job = _Blocking(Client.stop_any_job)
    download_any_job_folder = _BlockingStream(Client.download_any_job_folder)
    query_tasks = _Blocking(Client.query_tasks)
    get_settings = _Blocking(Client.get_settings)
    # TaskCollectionService
    collect_pip = _Blocking(Client.collect_pip)
    upload_and_collect = _Blocking(Client.upload_and_collect)
    collect_custom = _Blocking(Client.collect_custom)
    get_collection = _Blocking(Client.get_collection)
    watch_collection = _BlockingStream(Client.watch_collection)
    list_collections = _Blocking(Client.list_collections)
    deactivate_collection = _Blocking(Client.deactivate_collection)
    reactivate_collection = _Blocking(Client.reactivate_collection)
    delete_collection = _Blocking(Client.delete_collection)
