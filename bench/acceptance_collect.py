"""Acceptance on a real package (issue 14): ``make acceptance-collect``, not part of ``make test``.

Collects the published ``fractal-tasks-core`` from the package index through the whole stack
(``fractal-api`` + ``fractal-collector`` as processes, on the machine's PostgreSQL and NATS,
as the other benches start them), checks that every task of the manifest *of the installed
package* is registered with its args schemas and commands, and times, each from a cold and a
warm installer cache:

  (a) our collection with uv (the collector's default installer),
  (b) our collection with pip (``FRACTAL_COLLECTOR_INSTALLER=pip``, the reference's steps),
  (c) the reference's pip path by hand: ``pip download --no-deps`` (its request-time check),
      ``python -m venv``, ``pip install --upgrade 'pip<=24.0'``, ``pip install pkg==version``,
      ``pip show``, ``pip freeze --all`` (reference §8.2).

Cold = an empty private cache (``UV_CACHE_DIR`` / ``PIP_CACHE_DIR`` in a new temporary folder);
warm = the next run with the same cache. Variants take turns (a, b, c cold, then a, b, c warm,
per round). A collection's wall time runs from the CollectPip call to the watch seeing OK; the
collector's overhead is that minus the wall time of its installer commands, which the
collection log states after each one (``# installer: 1.234 s``).

pip here reads no configuration file (``PIP_CONFIG_FILE=/dev/null``) and no ``PIP_*`` variable
but the certificate bundle and the timeout, so that both pip variants use the package index only,
as uv does.

    .venv/bin/python -m bench.acceptance_collect [--package-version V] [--extras E] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import ADMIN_EMAIL, ADMIN_PASSWORD, BenchStack
from bench.stats import machine_info
from fractal.v2 import task_collection_pb2
from fractal_collector.collect import INSTALLER_TIME_PREFIX
from fractal_devstack.cli import ChildService
from fractal_devstack.embedded import LOOPBACK, free_port
from fractal_grpc.client import Client
from fractal_grpc.convert import struct_to_dict

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGE = "fractal-tasks-core"
PIP_MAX_VERSION = "24.0"
OK = task_collection_pb2.COLLECTION_STATE_OK
FAILED = task_collection_pb2.COLLECTION_STATE_FAILED
COLLECTION_TIMEOUT = 1800.0
#: Kept from the caller's environment for pip: where the CA bundle is, how long to wait.
PIP_KEPT = ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")
#: Prints where the package's manifest is, found by ``importlib.metadata`` (not the
#: collector's own lookup, which this checks).
MANIFEST_PATH = """\
import sys
from importlib import metadata
for f in metadata.distribution(sys.argv[1]).files or ():
    if f.name == "__FRACTAL_MANIFEST__.json":
        print(metadata.distribution(sys.argv[1]).locate_file(f).resolve())
"""
_INSTALLER_LINE = re.compile(rf"^{re.escape(INSTALLER_TIME_PREFIX)}([0-9.]+) s$", re.M)


class AcceptanceFailed(Exception):
    """The package was not collected as it should be; the message says what differs."""


@dataclass
class Measurement:
    variant: str
    cache: str  # cold | warm
    round: int
    wall_s: float
    installer_s: float
    commands: list[dict[str, Any]] = field(default_factory=list)
    version: str = ""
    tasks_checked: int = 0
    #: Seconds from the CollectPip call to each change the watch saw: (seconds, state).
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.installer_s


def pip_env(base: dict[str, str], cache: Path) -> dict[str, str]:
    """``base`` without pip's configuration, with a private pip cache."""
    env = {k: v for k, v in base.items() if not k.startswith("PIP_") or k in PIP_KEPT}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_CACHE_DIR=str(cache))
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    return env


def installer_seconds(log: str) -> float:
    """The installer commands' wall time, from the collection log's timing lines."""
    return sum(float(m) for m in _INSTALLER_LINE.findall(log))


def installed_manifest(python: str, package: str) -> dict[str, Any]:
    """The manifest of ``package`` as installed in the environment of ``python``."""
    out = subprocess.run(
        [python, "-c", MANIFEST_PATH, package], check=True, capture_output=True, text=True
    ).stdout.strip()
    if not out:
        raise AcceptanceFailed(f"{package} installed without __FRACTAL_MANIFEST__.json")
    manifest: dict[str, Any] = json.loads(Path(out.splitlines()[-1]).read_text())
    return manifest


async def check_registered(client: Client, collection: task_collection_pb2.TaskCollection) -> int:
    """Every manifest task is registered, in order, with its name, types, meta, args schemas
    and commands pointing at executables that exist; returns how many."""
    python = str(Path(collection.env_dir) / "venv" / "bin" / "python")
    manifest = await asyncio.to_thread(installed_manifest, python, collection.package_name)
    expected = manifest["task_list"]
    tasks = [await client.get_task(i) for i in collection.task_ids]
    problems: list[str] = []
    if [t.name for t in tasks] != [t["name"] for t in expected]:
        problems.append(
            f"registered {[t.name for t in tasks]}, manifest has {[t['name'] for t in expected]}"
        )
    for want, message in zip(expected, tasks, strict=False):
        task: Any = message  # fields looked up by name
        for side in ("non_parallel", "parallel"):
            schema = want.get(f"args_schema_{side}")
            have = (
                struct_to_dict(getattr(task, f"args_schema_{side}"))
                if task.HasField(f"args_schema_{side}")
                else None
            )
            if have != schema:
                problems.append(f"{want['name']}: args_schema_{side} differs from the manifest")
            meta = want.get(f"meta_{side}") or {}
            got_meta = struct_to_dict(getattr(task, f"meta_{side}"))
            if got_meta != meta:
                problems.append(f"{want['name']}: meta_{side} differs from the manifest")
            executable = want.get(f"executable_{side}")
            command = getattr(task, f"command_{side}") if task.HasField(f"command_{side}") else None
            if (command is None) != (executable is None):
                problems.append(f"{want['name']}: command_{side} present iff executable_{side}")
            elif command is not None:
                argv = command.split()
                if argv[0] != python or not argv[1].endswith("/" + executable):
                    problems.append(f"{want['name']}: command_{side} is {command!r}")
                elif not os.path.isfile(argv[1]):  # noqa: ASYNC240 - one stat per task
                    problems.append(f"{want['name']}: {argv[1]} does not exist")
        if dict(task.input_types) != (want.get("input_types") or {}):
            problems.append(f"{want['name']}: input_types differ")
        if dict(task.output_types) != (want.get("output_types") or {}):
            problems.append(f"{want['name']}: output_types differ")
        if manifest.get("has_args_schemas") and task.args_schema_version != manifest.get(
            "args_schema_version"
        ):
            problems.append(f"{want['name']}: args_schema_version {task.args_schema_version!r}")
    if problems:
        raise AcceptanceFailed("; ".join(problems))
    return len(tasks)


class Acceptance:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stack = BenchStack(keep_state=args.keep_state)
        self.python = args.python
        self.version: str | None = args.package_version
        self.results: list[Measurement] = []

    def start(self) -> None:
        self.stack.open()
        self.stack.env.update(
            FRACTAL_TASKS_PYTHON_DEFAULT_VERSION=self.args.python_version,
            **{f"FRACTAL_TASKS_PYTHON_{self.args.python_version.replace('.', '_')}": self.python},
            FRACTAL_COLLECTOR_METRICS_ADDRESS="",
            FRACTAL_API_METRICS_ADDRESS="",
        )
        self.stack.start_api()

    def start_collector(self, installer: str, cache: Path) -> ChildService:
        """A collector with ``installer`` and a private cache (uv's or pip's), its own tasks
        folder; stopped by ``stop_collector``."""
        tasks_dir = self.stack.state_dir / f"tasks-{installer}-{cache.name}"
        env = pip_env(self.stack.env, cache / "pip")
        env.update(
            FRACTAL_COLLECTOR_ADDRESS=f"{LOOPBACK}:{free_port()}",
            FRACTAL_COLLECTOR_INSTALLER=installer,
            FRACTAL_COLLECTOR_UV_CACHE_DIR=str(cache / "uv"),
            FRACTAL_TASKS_DIR=str(tasks_dir),
            FRACTAL_PIP_MAX_VERSION=PIP_MAX_VERSION,
        )
        child = ChildService(
            "collector",
            self.stack._executable("fractal-collector"),  # noqa: SLF001 - the stack's lookup
            env["FRACTAL_COLLECTOR_ADDRESS"],
            self.stack.logs_dir,
        )
        child.start(env)
        child.wait_healthy(60.0)
        return child

    async def collect(self, client: Client, installer: str) -> Measurement:
        """One collection by the running collector, timed, checked, then deactivated and
        deleted (so that the same package can be collected again)."""
        started = time.perf_counter()
        row = await client.collect_pip(
            PACKAGE,
            package_version=self.version,
            package_extras=self.args.extras or None,
            python_version=self.args.python_version,
        )
        state = row
        timeline = [(time.perf_counter() - started, "PENDING")]
        async for change in client.watch_collection(row.id, timeout=COLLECTION_TIMEOUT):
            state = change.collection
            name = task_collection_pb2.CollectionState.Name(state.state)
            timeline.append((time.perf_counter() - started, name.split("_")[-1]))
        wall = time.perf_counter() - started
        final = await client.get_collection(row.id, with_log=True)
        if state.state != OK:
            raise AcceptanceFailed(
                f"{installer} collection {row.id} ended {state.state}: {final.error}\n"
                + "\n".join(final.log.splitlines()[-30:])
            )
        checked = await check_registered(client, final)
        # The commands the log shows (not the freeze: its output is not logged) and, apart,
        # each installer command's time (the freeze's included).
        commands: list[dict[str, Any]] = [
            {"command": line[2:160]} for line in final.log.splitlines() if line.startswith("$ ")
        ]
        commands.append(
            {"installer_seconds": [float(x) for x in _INSTALLER_LINE.findall(final.log)]}
        )
        measured = Measurement(
            installer,
            "",
            0,
            wall,
            installer_seconds(final.log),
            commands,
            final.package_version,
            checked,
            timeline,
        )
        self.version = self.version or final.package_version
        # Make room for the next collection of the same package: deactivate, delete.
        activity = await client.deactivate_collection(row.id)
        async for _ in client.watch_collection(activity.id, timeout=300):
            pass
        await client.delete_collection(row.id)
        return measured

    def plain_pip(self, cache: Path, work: Path, *, local: bool = False) -> Measurement:
        """The reference's pip path, by hand, timed as a whole and per command. ``local``:
        pip's best case, every file from a local folder filled beforehand (``--no-index
        --find-links``), no network at all."""
        assert self.version is not None
        env = pip_env(dict(os.environ), cache / "pip")
        requirement = PACKAGE + (f"[{self.args.extras}]" if self.args.extras else "")
        requirement += f"=={self.version}"
        pip = str(work / "venv" / "bin" / "pip")
        wheelhouse = cache / "wheelhouse"
        offline = ["--no-index", "--find-links", str(wheelhouse)] if local else []
        if local and not wheelhouse.is_dir():  # untimed: fill the folder
            subprocess.run(
                [self.python, "-m", "pip", "download", "-d", str(wheelhouse), requirement]
                + [f"pip<={PIP_MAX_VERSION}"],
                env=env,
                check=True,
                capture_output=True,
            )
        steps = [
            [self.python, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={self.version}"]
            + ["-d", str(work / "download"), *offline],
            [self.python, "-m", "venv", "venv"],
            [pip, "install", "--upgrade", f"pip<={PIP_MAX_VERSION}", *offline],
            [pip, "install", requirement, *offline],
            [pip, "show", PACKAGE],
            [pip, "freeze", "--all"],
        ]
        commands = []
        started = time.perf_counter()
        for argv in steps:
            t0 = time.perf_counter()
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise AcceptanceFailed(
                    f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}"
                    f"{done.stderr[-2000:]}"
                )
            commands.append({"command": " ".join(argv)[:120], "seconds": time.perf_counter() - t0})
        wall = time.perf_counter() - started
        variant = "plain-pip-local" if local else "plain-pip"
        return Measurement(variant, "", 0, wall, wall, commands, self.version)

    def resolve(self) -> str:
        """The newest version on the index (``pip download --no-deps``, as the reference's
        request does), so that every run installs the same one and none resolves it."""
        with tempfile.TemporaryDirectory(prefix="fractal-accept-resolve-") as tmp:
            done = subprocess.run(
                [self.python, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", tmp],
                env=pip_env(dict(os.environ), Path(tmp) / "cache"),
                capture_output=True,
                text=True,
                check=True,
            )
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise AcceptanceFailed(f"pip download {PACKAGE} saved no wheel:\n{done.stdout}")
            return wheels[0].name.split("-")[1]

    async def run(self) -> None:
        if self.version is None:
            self.version = await asyncio.to_thread(self.resolve)
            say(f"{PACKAGE} {self.version} (the newest on the index)")
        client = Client(self.stack.api_address)
        await client.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        variants = self.args.variants.split(",")
        try:
            for rnd in range(1, self.args.rounds + 1):
                for variant in variants:
                    await self._variant(client, variant, rnd)
        finally:
            await client.close()

    async def _variant(self, client: Client, variant: str, rnd: int) -> None:
        """``variant`` from a cold cache, then again from the same (warm) cache; our variants
        with one collector for both (a running collector, as in service)."""
        cache = Path(tempfile.mkdtemp(prefix=f"accept-{variant}-"))
        collector = None
        try:
            if not variant.startswith("plain-pip"):
                collector = await asyncio.to_thread(self.start_collector, variant, cache)
            for cache_kind in ("cold", "warm"):
                if variant == "plain-pip-local" and cache_kind == "cold":
                    continue  # only warm: its files are there by definition
                say(f"round {rnd}: {variant}, {cache_kind} cache …")
                if collector is None:
                    work = Path(tempfile.mkdtemp(prefix="accept-venv-"))
                    try:
                        m = await asyncio.to_thread(
                            self.plain_pip, cache, work, local=variant == "plain-pip-local"
                        )
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                else:
                    m = await self.collect(client, variant)
                m.cache, m.round = cache_kind, rnd
                self.results.append(m)
                say(
                    f"  {m.wall_s:7.2f} s wall, installer {m.installer_s:7.2f} s, "
                    f"overhead {m.overhead_s:5.2f} s"
                    + (f", {m.tasks_checked} tasks checked" if m.tasks_checked else "")
                )
        finally:
            if collector is not None:
                await asyncio.to_thread(collector.stop, 10.0)
            shutil.rmtree(cache, ignore_errors=True)


def say(text: str) -> None:
    print(f"acceptance-collect: {text}", flush=True)


def summary(results: list[Measurement]) -> dict[str, Any]:
    def best(variant: str, cache: str, what: str = "wall_s") -> float | None:
        values = [
            getattr(m, what) if what != "overhead_s" else m.overhead_s
            for m in results
            if m.variant == variant and m.cache == cache
        ]
        return min(values) if values else None

    table = {
        f"{v}/{c}": {"wall_s": best(v, c), "overhead_s": best(v, c, "overhead_s")}
        for v in ("uv", "pip", "plain-pip", "plain-pip-local")
        for c in ("cold", "warm")
        if best(v, c) is not None
    }
    uv_warm, ref_warm = best("uv", "warm"), best("plain-pip", "warm")
    ref_local = best("plain-pip-local", "warm")
    overheads = [m.overhead_s for m in results if not m.variant.startswith("plain-pip")]
    goals = {
        "overhead_under_1s": (max(overheads) < 1.0) if overheads else None,
        "max_overhead_s": max(overheads) if overheads else None,
        "uv_warm_speedup_vs_plain_pip_warm": (ref_warm / uv_warm) if uv_warm and ref_warm else None,
        "uv_warm_speedup_vs_plain_pip_local": (
            (ref_local / uv_warm) if uv_warm and ref_local else None
        ),
    }
    goals["uv_warm_5x"] = (
        goals["uv_warm_speedup_vs_plain_pip_warm"] >= 5.0
        if goals["uv_warm_speedup_vs_plain_pip_warm"] is not None
        else None
    )
    return {"best": table, "goals": goals}


def _interrupted(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal does not stop the clean-up
    raise KeyboardInterrupt


def real_interpreter(name: str) -> str:
    """The interpreter ``name`` on PATH runs (not a pyenv shim or other wrapper script)."""
    found = shutil.which(name) or sys.executable
    done = subprocess.run(
        [found, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.acceptance_collect")
    parser.add_argument("--package-version", help="default: the newest on the index")
    parser.add_argument(
        "--extras",
        default="",
        help="extras to install; fractal-tasks-core 2.x has none (1.x: fractal-tasks)",
    )
    parser.add_argument("--python", default=None, help="default: python3.11 on PATH, resolved")
    parser.add_argument("--python-version", default="3.11")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default="uv,pip,plain-pip,plain-pip-local")
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args(argv)
    args.python = args.python or real_interpreter(f"python{args.python_version}")
    started_at = datetime.now(UTC)
    info = machine_info()
    # SIGTERM (and SIGINT, which a background job ignores otherwise) end the run with its
    # clean-up and a report of what was measured so far.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupted)
    run = Acceptance(args)
    status, problem = 0, None
    try:
        run.start()
        asyncio.run(run.run())
    except AcceptanceFailed as exc:
        status, problem = 1, str(exc)
        say(f"FAILED: {exc}")
    except KeyboardInterrupt:
        status, problem = 130, "interrupted"
        say("interrupted; cleaning up")
    finally:
        for p in run.stack.close():
            say(f"clean-up: {p}")
    report = {
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "commit": git_commit(),
        "machine": {**info, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "package": PACKAGE,
        "version": run.version,
        "extras": args.extras,
        "python": args.python,
        "problem": problem,
        "results": [{**m.__dict__, "overhead_s": m.overhead_s} for m in run.results],
        "summary": summary(run.results),
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"acceptance-collect-{started_at:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2))
    say(f"results: {out}")
    print(json.dumps(report["summary"], indent=2))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
