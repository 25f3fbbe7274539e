"""`fractal job ...`: submit (and watch), show, list, stop, download, logs."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from fractal.v2 import job_pb2
from fractal_cli import exits
from fractal_cli.core import Session, pages, session
from fractal_cli.output import Column, to_dict
from fractal_cli.progress import ProgressView, job_phase, task_progress
from fractal_grpc.client import FractalError

job_app = typer.Typer(help="Jobs: run a workflow on a dataset and follow it.")

STATUS = {
    job_pb2.JOB_STATUS_SUBMITTED: "submitted",
    job_pb2.JOB_STATUS_DONE: "done",
    job_pb2.JOB_STATUS_FAILED: "failed",
}


def _time(ts: object) -> str | None:
    if getattr(ts, "seconds", 0) == 0:
        return None
    return ts.ToDatetime().isoformat(timespec="seconds")  # type: ignore[attr-defined]


JOB_COLUMNS: list[Column] = [
    ("id", lambda j: j.id),
    ("project", lambda j: j.project_id if j.HasField("project_id") else None),
    ("workflow", lambda j: j.workflow_id if j.HasField("workflow_id") else None),
    ("dataset", lambda j: j.dataset_id if j.HasField("dataset_id") else None),
    ("status", lambda j: STATUS.get(j.status, "")),
    ("tasks", lambda j: f"{j.first_task_index}..{j.last_task_index}"),
    ("start", lambda j: _time(j.start_time)),
    ("end", lambda j: _time(j.end_time)),
]
JOB_DETAIL: list[Column] = [
    *JOB_COLUMNS,
    ("user", lambda j: j.user_email),
    ("working_dir", lambda j: j.working_dir),
    ("progress", lambda j: "; ".join(_progress_line(j))),
]


def _progress_line(job: job_pb2.Job) -> list[str]:
    return [
        f"{t.order} {t.name}: {t.state}"
        + (f" {t.calls_done}/{t.calls_total}" if t.calls_total else "")
        for t in task_progress(job)
    ]


def _task_names(s: Session, job: job_pb2.Job) -> dict[int, str]:
    """Workflow-task id → task name, from the job's workflow (if it still exists)."""
    if not job.HasField("workflow_id") or not job.HasField("project_id"):
        return {}
    try:
        workflow = s.client().get_workflow(job.project_id, job.workflow_id)
    except FractalError:
        return {}
    return {w.id: w.task.name for w in workflow.task_list}


def watch(s: Session, job: job_pb2.Job) -> None:
    """Follow the job until it ends; a failed job ends the command with JOB_FAILED."""
    names = _task_names(s, job)
    stream = s.client().watch_job(job.project_id, job.id)
    final = job
    if s.out.json_mode:
        for update in stream:
            final = update
    elif s.out.console.is_terminal:
        with ProgressView(s.out.console, names) as view:
            view.update(job)
            for final in stream:
                view.update(final)
    else:
        seen = ""
        for final in stream:
            line = f"job {final.id}: {job_phase(final)}; " + "; ".join(
                f"{t.order} {t.name}: {t.state}"
                + (f" {t.calls_done}/{t.calls_total}" if t.calls_total else "")
                for t in task_progress(final, names)
            )
            if line != seen:
                s.out.console.print(Text(line))
                seen = line
    _finish(s, final)


def _finish(s: Session, job: job_pb2.Job) -> None:
    if s.out.json_mode:
        s.out.json(to_dict(job))
    else:
        s.out.console.print(Text(f"job {job.id} {STATUS.get(job.status, 'unknown')}"))
    if job.status == job_pb2.JOB_STATUS_FAILED:
        if not s.out.json_mode:
            s.out.err.print(Text(job.log or "(no log)"))
        raise typer.Exit(exits.JOB_FAILED)


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    project_id: int,
    workflow_id: int,
    dataset_id: int,
    first_task_index: Annotated[int | None, typer.Option("--start", help="first task")] = None,
    last_task_index: Annotated[int | None, typer.Option("--end", help="last task")] = None,
    slurm_account: Annotated[str | None, typer.Option()] = None,
    worker_init: Annotated[str | None, typer.Option()] = None,
    request_id: Annotated[
        str | None, typer.Option(help="idempotency key: the same key gives back the same job")
    ] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="follow the job to its end")] = False,
) -> None:
    """Run the workflow (or tasks --start..--end of it) on the dataset."""
    s = session(ctx)
    job = s.client().submit_job(
        project_id,
        workflow_id,
        dataset_id,
        first_task_index=first_task_index,
        last_task_index=last_task_index,
        slurm_account=slurm_account,
        worker_init=worker_init,
        request_id=request_id,
    )
    if watch_:
        if not s.out.json_mode:
            s.out.console.print(Text(f"job {job.id} submitted"))
        watch(s, job)
        return
    s.out.one(job, JOB_DETAIL, title=f"job {job.id}")


@job_app.command("watch")
def job_watch(ctx: typer.Context, project_id: int, job_id: int) -> None:
    """Follow a job: a progress bar per task, then the final state (and the error)."""
    s = session(ctx)
    watch(s, s.client().get_job(project_id, job_id))


@job_app.command("show")
def job_show(ctx: typer.Context, project_id: int, job_id: int) -> None:
    job = session(ctx).client().get_job(project_id, job_id)
    session(ctx).out.one(job, JOB_DETAIL, title=f"job {job.id}")


@job_app.command("list")
def job_list(
    ctx: typer.Context,
    project_id: Annotated[int, typer.Argument(help="0: every project of yours")] = 0,
    workflow_id: Annotated[int, typer.Option(help="only this workflow's jobs")] = 0,
) -> None:
    """Jobs, newest first."""
    c = session(ctx).client()
    jobs = pages(
        lambda t: c.list_jobs(project_id, workflow_id=workflow_id, page_token=t),
        "jobs",
    )
    session(ctx).out.many(jobs, JOB_COLUMNS, title="jobs")


@job_app.command("stop")
def job_stop(ctx: typer.Context, project_id: int, job_id: int) -> None:
    job = session(ctx).client().stop_job(project_id, job_id)
    session(ctx).out.one(job, JOB_DETAIL, title=f"job {job.id}")


@job_app.command("logs")
def job_logs(ctx: typer.Context, project_id: int, job_id: int) -> None:
    """The job's log: workflow.log while it runs, the error when it failed."""
    s = session(ctx)
    job = s.client().get_job(project_id, job_id, show_tmp_logs=True)
    if s.out.json_mode:
        s.out.json({"job_id": job.id, "status": STATUS.get(job.status, ""), "log": job.log})
    else:
        print(job.log)


@job_app.command("download")
def job_download(
    ctx: typer.Context,
    project_id: int,
    job_id: int,
    output: Annotated[Path | None, typer.Option(help="zip file (default job-<id>.zip)")] = None,
    extract: Annotated[Path | None, typer.Option(help="also unpack into this folder")] = None,
) -> None:
    """The job folder as a zip archive."""
    s = session(ctx)
    path = output or Path(f"job-{job_id}.zip")
    partial = path.with_name(path.name + ".part")
    size = 0
    try:
        with partial.open("wb") as out:
            for chunk in s.client().download_job_folder(project_id, job_id):
                out.write(chunk)
                size += len(chunk)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    files = []
    with zipfile.ZipFile(path) as archive:
        files = archive.namelist()
        if extract is not None:
            extract.mkdir(parents=True, exist_ok=True)
            archive.extractall(extract)
    s.out.done(
        f"job {job_id}: {len(files)} file(s), {size} bytes in {path}"
        + (f", unpacked into {extract}" if extract else ""),
        {
            "path": str(path),
            "bytes": size,
            "files": files,
            "extracted_to": str(extract) if extract else None,
        },
    )
