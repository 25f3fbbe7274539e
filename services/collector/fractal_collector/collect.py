"""One collection, from the claim to the end (reference §8.2 ``background_collect_pip``):
resolve the version, create the environment folder, the environment, install the package with
its extras and pins, freeze, find the installed package and its manifest, validate it, build
the tasks and register them in one call. Any failure ends the collection FAILED with a message
saying which step and why, the log kept, and this collection's folder removed. The steps run
on the collection's host (``hosts``): this machine, or the login node over SSH."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from google.protobuf.struct_pb2 import Struct

from fractal.internal.v1 import task_registration_service_pb2 as pb
from fractal.v2 import task_collection_pb2
from fractal_collector import environment, installer
from fractal_collector.api_client import LeaseLost, RegistrationClient
from fractal_collector.hosts import Host, HostFileError, HostLost
from fractal_collector.package_probe import PackageProblem, check_executables, probe
from fractal_collector.progress import ProgressReporter
from fractal_grpc.collection import commands, naming
from fractal_grpc.collection.packages import PackageError, PackageSpec, check_request
from fractal_grpc.collection.tasks import TaskDraft, build_tasks
from fractal_grpc.convert import dict_to_struct

log = logging.getLogger("fractal.collector")

ENDED = (task_collection_pb2.COLLECTION_STATE_OK, task_collection_pb2.COLLECTION_STATE_FAILED)
FAILED = task_collection_pb2.COLLECTION_STATE_FAILED
FREEZE_FILE = "collection_freeze.txt"
#: Stands for the environment folder in an uploaded wheel's path until the folder exists.
UPLOAD_FOLDER = "/upload"


class CollectionBusy(Exception):
    """Another live collector holds the collection: the command is redelivered later."""


class StepFailed(Exception):
    """A step failed in a way the collection's error explains."""


#: Starts the log line after each installer command that says how long it took.
INSTALLER_TIME_PREFIX = "# installer: "


@dataclass(frozen=True)
class CollectorConfig:
    tasks_dir: Path
    pythons: dict[str, str]
    default_python: str
    installer: commands.Installer
    #: Where the environments are made (this machine, or the login node over SSH).
    host: Host
    #: Told each installer command's installer (uv, pip) and wall time (metrics), failed ones
    #: included.
    on_installer: Callable[[str, float], None] | None = None


def _tail(output: str, lines: int = 5) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def _spec(row: task_collection_pb2.TaskCollection, config: CollectorConfig) -> PackageSpec:
    """The record checked again against the grammar (and the collector's interpreters)."""
    try:
        wheel = row.wheel_path if row.HasField("wheel_path") else None
        if row.HasField("uploaded_wheel"):  # placed in the environment folder later
            wheel = f"{UPLOAD_FOLDER}/{row.uploaded_wheel}"
        return check_request(
            wheel or row.package_name,
            row.requested_version if row.HasField("requested_version") and not wheel else None,
            row.package_extras if row.HasField("package_extras") else None,
            row.python_version,
            dict(row.pinned_package_versions),
            pythons=config.pythons,
            default_python=config.default_python,
        )
    except PackageError as exc:
        raise StepFailed(f"The collector cannot collect this request: {exc}") from None


def _collected(draft: TaskDraft) -> pb.CollectedTask:
    task = pb.CollectedTask(
        name=draft.name,
        source=draft.source,
        input_types=draft.input_types,
        output_types=draft.output_types,
    )
    for name in (
        "command_non_parallel",
        "command_parallel",
        "args_schema_version",
        "docs_info",
        "docs_link",
    ):
        value = getattr(draft, name)
        if value is not None:
            setattr(task, name, value)
    for name in (
        "meta_non_parallel",
        "meta_parallel",
        "args_schema_non_parallel",
        "args_schema_parallel",
    ):
        value = getattr(draft, name)
        if value is not None:
            target: Struct = getattr(task, name)
            dict_to_struct(value, target)
            if not value:
                target.SetInParent()
    return task


class Collection:
    def __init__(
        self,
        api: RegistrationClient,
        config: CollectorConfig,
        row: task_collection_pb2.TaskCollection,
        attempt: int,
    ) -> None:
        self.api = api
        self.config = config
        self.row = row
        self.attempt = attempt
        self.id = row.id
        self.progress = ProgressReporter(api, row.id)
        self.folder: str | None = row.env_dir if row.HasField("env_dir") else None
        #: The installer of this collection (``Host.installer``: over SSH, uv only if there).
        self.installer = config.installer
        #: Whose environment folder this is (its marker): the collection's, for an activity
        #: the collection it acts on.
        self.marker_id = row.target_collection_id or row.id

    def say(self, text: str) -> None:
        self.progress.write(text if text.endswith("\n") else text + "\n")

    async def _install(
        self, argv: Sequence[str], *, quiet: bool = False, stdin: str | None = None
    ) -> installer.Result:
        """An installer command on the collection's host, timed; its output in the log
        unless ``quiet``. Its wall time goes to the metrics and, as a line
        ``# installer: 1.234 s``, to the log (quiet or not), so a collection's log tells the
        installer's share of its time."""
        started = time.monotonic()
        try:
            return await self.config.host.run(
                argv, (lambda _: None) if quiet else self.say, stdin=stdin
            )
        finally:
            elapsed = time.monotonic() - started
            self.say(f"{INSTALLER_TIME_PREFIX}{elapsed:.3f} s\n")
            if self.config.on_installer is not None:
                self.config.on_installer(self.installer.kind, elapsed)

    async def run(self) -> None:
        work = asyncio.create_task(self._steps())
        self.progress.keep_lease(work)
        try:
            await work
        except asyncio.CancelledError:
            if not self.progress.lost:
                raise
        finally:
            await self.progress.stop()

    async def _steps(self) -> None:
        host = self.config.host
        installs = self.row.kind != task_collection_pb2.COLLECTION_KIND_DEACTIVATE
        try:
            if self.attempt > 1:
                self.say(f"Attempt {self.attempt}: an earlier collector stopped; starting again.")
                if installs:  # what the dead attempt left: its installers, then its folder
                    await host.stop_leftovers(self.folder)
                    await host.remove_folder(self.folder, self.marker_id)
            if installs:
                self.installer = await host.installer(self.config.installer, self.say)
            response = await self.work()
            if response.collection.state == FAILED:
                await host.remove_folder(self.folder, self.marker_id)
            log.info(
                "collection %s: %s",
                self.id,
                "FAILED" if response.collection.state == FAILED else "OK",
            )
        except LeaseLost:
            log.warning("collection %s: lease lost; left to its new holder", self.id)
        except (StepFailed, PackageProblem, environment.FolderExists, HostFileError) as exc:
            await self._fail(str(exc))
        except HostLost as exc:
            await self._fail(f"The connection to the host was lost: {exc}")
        except installer.CommandFailed as exc:
            await self._fail(f"{exc}\n{_tail(exc.result.output)}")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug of ours: the collection still ends
            log.exception("collection %s: unexpected error", self.id)
            await self._fail("The collector met an unexpected error (see the collector's log).")

    async def _fail(self, error: str) -> None:
        self.say(f"ERROR: {error}")
        removed = await self.config.host.remove_folder(self.folder, self.marker_id)
        if removed:
            self.say(f"Removed {self.folder}.")
        try:
            await self.api.finish(
                pb.FinishCollectionRequest(
                    collection_id=self.id, log=await self.progress.final_text(), error=error[:4000]
                )
            )
        except LeaseLost:
            log.warning("collection %s: lease lost before it could fail", self.id)
        log.info("collection %s: FAILED: %s", self.id, error.splitlines()[0])

    async def _place_upload(self, spec: PackageSpec, folder: str) -> PackageSpec:
        """An uploaded wheel, fetched from api into the environment folder (its freeze names
        it there, so a reactivation fetches it to the same place); over SSH, a wheel given by
        its path on this machine is copied there too (reference 2.3 took it for a remote path)."""
        if self.row.HasField("uploaded_wheel"):
            content = await self.api.read_wheel(self.marker_id)
            name = self.row.uploaded_wheel
        elif spec.wheel_path is not None and self.config.host.remote:
            try:
                content = await asyncio.to_thread(Path(spec.wheel_path).read_bytes)
            except OSError as exc:
                raise StepFailed(
                    f"cannot read the wheel {spec.wheel_path}: {exc.strerror or exc}"
                ) from None
            name = PurePosixPath(spec.wheel_path).name
        else:
            return spec
        path = str(PurePosixPath(folder) / name)
        await self.config.host.write_file(path, content)
        self.say(f"Uploaded wheel: {path} ({len(content)} bytes)")
        return dataclasses.replace(spec, wheel_path=path)

    async def _resolve(self, spec: PackageSpec, interpreter: str) -> str:
        if spec.version is not None:
            return spec.version
        kind = self.installer.kind
        async with self.config.host.temp_dir() as dest:
            argv = commands.resolve_version(self.installer, interpreter, spec, dest)
            try:
                result = await self._install(
                    argv, stdin=commands.resolve_input(self.installer, spec)
                )
            except installer.CommandFailed as exc:
                raise StepFailed(
                    f"Cannot find package {spec.name} ({exc}):\n{_tail(exc.result.output)}"
                ) from None
        version = commands.resolved_version(kind, result.output, spec.name)
        if version is None:
            raise StepFailed(f"Cannot tell which version of {spec.name} would be installed")
        return version

    async def work(self) -> pb.FinishCollectionResponse:
        config = self.config
        spec = _spec(self.row, config)
        interpreter = config.pythons[spec.python_version]
        host = config.host
        what = spec.wheel_path or commands.requirement(spec)
        where = f" on {host.label}" if host.label else ""
        self.say(
            f"Collecting {what} for Python {spec.python_version} with {self.installer.kind}{where}."
        )
        version = await self._resolve(spec, interpreter)
        folder = naming.env_folder(
            str(config.tasks_dir),
            spec.name,
            version,
            spec.extras,
            spec.python_version,
            config.default_python,
        )
        await host.create_folder(folder, self.marker_id)
        self.folder = env_dir = folder
        self.say(f"Environment folder: {folder}")
        spec = await self._place_upload(spec, folder)
        await self.progress.flush(env_dir=folder, package_version=version)
        if spec.pins:
            pins = str(PurePosixPath(folder) / commands.CONSTRAINTS_FILE)
            await host.write_file(pins, commands.constraints(spec).encode())
        for argv in commands.create_venv(self.installer, interpreter, env_dir):
            await self._install(argv)
        await self._install(commands.install(self.installer, env_dir, spec, version))
        frozen = await self._install(commands.freeze(self.installer, env_dir), quiet=True)
        await host.write_file(str(PurePosixPath(folder) / FREEZE_FILE), frozen.output.encode())
        installed = await probe(host, env_dir, spec.name, self.say)
        await check_executables(host, installed)
        if installed.version != version and spec.wheel_path is None:
            raise StepFailed(f"{spec.name} {installed.version} was installed instead of {version}")
        source = naming.package_source(
            spec.origin, spec.name, version, spec.extras, spec.python_version
        )
        drafts = build_tasks(
            installed.manifest,
            python=commands.venv_python(env_dir),
            package_root=str(installed.package_root),
            source=source,
            version=version,
        )
        self.say(f"Registering {len(drafts)} task(s): {', '.join(d.name for d in drafts)}")
        return await self.api.finish(
            pb.FinishCollectionRequest(
                collection_id=self.id,
                log=await self.progress.final_text(),
                success=pb.CollectionSuccess(
                    package_version=version,
                    env_dir=env_dir,
                    freeze=frozen.output,
                    tasks=[_collected(d) for d in drafts],
                ),
            )
        )


class Deactivation(Collection):
    """Remove a collected package's environment (its record keeps the frozen versions)."""

    async def work(self) -> pb.FinishCollectionResponse:
        folder = self.folder
        host = self.config.host
        self.say(f"Deactivating {self.row.package_name} {self.row.package_version}.")
        if folder is not None and await host.exists(folder):
            if not await host.remove_folder(folder, self.marker_id):
                raise StepFailed(f"{folder} is not this package's environment; left alone")
            self.say(f"Removed {folder}.")
        else:
            self.say("The environment folder is already gone.")
        self.folder = None  # nothing of ours to remove if the finish fails
        return await self._done()

    async def _done(self) -> pb.FinishCollectionResponse:
        return await self.api.finish(
            pb.FinishCollectionRequest(
                collection_id=self.id, log=await self.progress.final_text(), activity_done=True
            )
        )


class Reactivation(Deactivation):
    """Rebuild a deactivated package's environment, in its folder, from its frozen versions."""

    async def work(self) -> pb.FinishCollectionResponse:
        config = self.config
        spec = _spec(self.row, config)
        if self.folder is None or not self.row.HasField("freeze"):
            raise StepFailed("the collection has no environment folder or frozen versions")
        folder = env_dir = self.folder
        host = config.host
        self.say(f"Reactivating {spec.name} {self.row.package_version} in {folder}.")
        await host.create_folder(folder, self.marker_id)
        await self._place_upload(spec, folder)
        frozen = str(PurePosixPath(folder) / FREEZE_FILE)
        await host.write_file(frozen, self.row.freeze.encode())
        interpreter = config.pythons[spec.python_version]
        for argv in commands.create_venv(self.installer, interpreter, env_dir):
            await self._install(argv)
        await self._install(commands.install_frozen(self.installer, env_dir, frozen))
        installed = await probe(host, env_dir, spec.name, self.say)
        await check_executables(host, installed)
        return await self._done()


async def handle(api: RegistrationClient, config: CollectorConfig, collection_id: int) -> None:
    """Handle one collection command: claim, then collect. An ended collection is left alone
    (the command was redelivered after it ended); one held by another live collector raises
    ``CollectionBusy`` (the command comes back later, when that collector has ended it or its
    lease has expired)."""
    claim = await api.claim(collection_id)
    if not claim.claimed:
        if claim.collection.state in ENDED:
            return
        raise CollectionBusy(f"collection {collection_id} is held by another collector")
    kind = {
        task_collection_pb2.COLLECTION_KIND_DEACTIVATE: Deactivation,
        task_collection_pb2.COLLECTION_KIND_REACTIVATE: Reactivation,
    }.get(claim.collection.kind, Collection)
    await kind(api, config, claim.collection, claim.attempt).run()
