"""`fractal` end to end against api and runner processes: login, a project with a dataset and
images, a task, a workflow, a job submitted with --watch, its folder downloaded; outputs read
in --json and table modes; exit codes per kind of failure."""

from __future__ import annotations

import json
import secrets
import sys
import zipfile
from pathlib import Path

from cli_helpers import ADMIN, Cli

from fractal_cli import exits

MOCK = Path(__file__).parents[1] / "fractal_tasks_mock" / "fractal_tasks_mock"


def command(script: str) -> str:
    return f"{sys.executable} {MOCK / script}"


def new_user(cli: Cli) -> Cli:
    """A fresh verified user, registered through the CLI, with its credentials in the env."""
    email = f"cli-{secrets.token_hex(4)}@example.org"
    user = cli(
        "--json",
        "user",
        "register",
        email,
        "pw-1234",
        "--verified",
        "--username",
        email.split("@")[0],
    ).json()
    assert user["email"] == email and user["is_verified"] is True
    return Cli({**cli.env, "FRACTAL_USER": email, "FRACTAL_PASSWORD": "pw-1234"})


def build(cli: Cli, tmp_path: Path, *, task_args: dict | None = None) -> dict[str, int]:
    """Project, dataset with two images, a parallel task, a workflow using it: the ids."""
    suffix = secrets.token_hex(3)
    zarr_dir = tmp_path / "zarr"
    pid = cli("--json", "project", "new", f"proj-{suffix}").json()["id"]
    ds = cli("--json", "dataset", "new", str(pid), "plate", "--zarr-dir", str(zarr_dir)).json()
    did = ds["id"]
    for well in ("A01", "B02"):
        url = f"{zarr_dir}/plate.zarr/{well[0]}/{well[1:]}/0"
        Path(url).mkdir(parents=True)
        added = cli(
            "--json",
            "image",
            "add",
            str(pid),
            str(did),
            "--zarr-url",
            url,
            "--attribute",
            f"well={well}",
            "--type",
            "3D=true",
        ).json()
        assert added == {"added_count": 1}
    task = cli(
        "--json",
        "task",
        "new",
        f"generic-{suffix}",
        "--source",
        f"generic-{suffix}",
        "--command-parallel",
        command("generic_task_parallel.py"),
        "--output-types",
        '{"processed": true}',
    ).json()
    assert task["type"] == "TASK_TYPE_PARALLEL"
    wid = cli("--json", "workflow", "new", str(pid), "wf").json()["id"]
    args = ["--args-parallel", json.dumps(task_args)] if task_args else []
    cli("--json", "workflow", "add-task", str(pid), str(wid), "--task-id", str(task["id"]), *args)
    return {"project": pid, "dataset": did, "workflow": wid, "task": task["id"]}


def test_login_saves_the_config_and_caches_the_token(cli: Cli, cli_home: Path) -> None:
    bare = Cli({k: v for k, v in cli.env.items() if k not in ("FRACTAL_USER", "FRACTAL_PASSWORD")})
    # Not logged in: a usage error that says how to log in.
    result = bare("project", "list", check=exits.USAGE)
    assert "not logged in" in result.stderr
    # A wrong password: a permission error.
    result = bare("--user", ADMIN[0], "--password", "wrong", "login", check=exits.PERMISSION)
    assert "UNAUTHENTICATED" in result.stderr
    out = bare("--json", "--user", ADMIN[0], "--password", ADMIN[1], "login", "--save").json()
    assert out["saved"] is True
    config = cli_home / ".config" / "fractal" / "config.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    assert f'user = "{ADMIN[0]}"' in config.read_text()
    assert list((cli_home / ".cache" / "fractal").glob("token-*"))
    # From now on the config file is enough.
    assert bare("--json", "user", "whoami").json()["email"] == ADMIN[0]


def test_a_workflow_from_the_command_line(cli: Cli, tmp_path: Path) -> None:
    user = new_user(cli)
    ids = build(user, tmp_path)
    pid, did, wid = str(ids["project"]), str(ids["dataset"]), str(ids["workflow"])

    # Tables for people: the same objects as the JSON.
    table = user("project", "show", pid).stdout
    assert "proj-" in table and pid in table
    images = user("--json", "image", "list", pid, did).json()
    assert images["total_count"] == 2
    assert {i["attributes"]["well"] for i in images["images"]} == {"A01", "B02"}
    table = user("image", "list", pid, did, "--attribute", "well=A01").stdout
    assert "1 of 1 images" in table and "A01" in table and "B02" not in table
    assert "generic-" in user("workflow", "show", pid, wid).stdout

    # Submit and watch (not a terminal: one line per change), then the final state.
    result = user("job", "submit", pid, wid, did, "--watch")
    lines = result.stdout.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"job {job_id} submitted"
    assert lines[-1] == f"job {job_id} done"
    assert any(": done" in line for line in lines[1:-1]), lines
    job = user("--json", "job", "show", pid, job_id).json()
    assert job["status"] == "JOB_STATUS_DONE"
    assert [t["order"] for t in job["task_statuses"]] == [0]
    listed = user("--json", "job", "list", pid).json()
    assert [j["id"] for j in listed] == [job["id"]]
    assert "done" in user("job", "list", pid).stdout

    # The task's output types reached the images.
    images = user("--json", "image", "list", pid, did, "--type", "processed").json()
    assert images["total_count"] == 2

    # The job folder, as a zip and unpacked.
    archive = tmp_path / "job.zip"
    unpacked = tmp_path / "job"
    out = user(
        "--json",
        "job",
        "download",
        pid,
        job_id,
        "--output",
        str(archive),
        "--extract",
        str(unpacked),
    ).json()
    assert out["bytes"] == archive.stat().st_size > 0
    assert "workflow.log" in out["files"]
    assert zipfile.ZipFile(archive).testzip() is None
    assert (unpacked / "workflow.log").read_text() == user("job", "logs", pid, job_id).stdout[:-1]

    # Export and import the dataset (with its images, now processed).
    ds_file = tmp_path / "ds.json"
    user("dataset", "export", pid, did, "--json-file", str(ds_file))
    ds_data = json.loads(ds_file.read_text())
    assert len(ds_data["images"]) == 2
    assert all(i["types"] == {"3D": True, "processed": True} for i in ds_data["images"])
    ds_copy = user(
        "--json",
        "dataset",
        "import",
        pid,
        "--json-file",
        str(ds_file),
        "--dataset-name",
        "plate-copy",
    ).json()
    assert ds_copy["name"] == "plate-copy" and ds_copy["image_count"] == "2"

    # Export and import the workflow (tasks found by source).
    exported = tmp_path / "wf.json"
    user("workflow", "export", pid, wid, "--json-file", str(exported))
    data = json.loads(exported.read_text())
    assert data["name"] == "wf" and len(data["task_list"]) == 1
    copy = user(
        "--json",
        "workflow",
        "import",
        pid,
        "--json-file",
        str(exported),
        "--workflow-name",
        "wf-copy",
    ).json()
    assert copy["name"] == "wf-copy"
    assert [t["task_id"] for t in copy["task_list"]] == [ids["task"]]


def test_a_failed_job_exits_with_its_own_code_and_shows_the_error(cli: Cli, tmp_path: Path) -> None:
    user = new_user(cli)
    ids = build(user, tmp_path, task_args={"raise_error": True})
    pid, did, wid = str(ids["project"]), str(ids["dataset"]), str(ids["workflow"])
    result = user("job", "submit", pid, wid, did, "--watch", check=exits.JOB_FAILED)
    assert result.stdout.splitlines()[-1].endswith("failed")
    assert "failing on purpose" in result.stderr
    job = user("--json", "job", "submit", pid, wid, did, "--watch", check=exits.JOB_FAILED).json()
    assert job["status"] == "JOB_STATUS_FAILED" and "failing on purpose" in job["log"]


def test_exit_codes_tell_failures_apart(cli: Cli, tmp_path: Path) -> None:
    user = new_user(cli)
    pid = str(user("--json", "project", "new", "codes").json()["id"])
    # Not found (also: not yours).
    result = user("project", "show", "999999", check=exits.NOT_FOUND)
    assert "NOT_FOUND" in result.stderr
    # A usage error on the command line.
    user("project", "show", "not-a-number", check=exits.USAGE)
    user("dataset", "edit", pid, "1", "--new-filters", "{not json", check=exits.USAGE)
    # The request is invalid: the field is named.
    result = user("dataset", "new", pid, "ds", "--zarr-dir", "relative/dir", check=exits.USAGE)
    assert "zarr_dir" in result.stderr
    result = user(
        "--json", "dataset", "new", pid, "ds", "--zarr-dir", "relative/dir", check=exits.USAGE
    )
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == ["zarr_dir"]
    # Refused: the name is taken.
    result = user("project", "new", "codes", check=exits.REFUSED)
    assert "ALREADY_EXISTS" in result.stderr
    # Not allowed: a superuser command.
    user("user", "list", check=exits.PERMISSION)
    # No server there.
    result = user(
        "--address", "127.0.0.1:1", "--timeout", "2", "project", "list", check=exits.SERVER
    )
    assert "DEADLINE_EXCEEDED" in result.stderr or "UNAVAILABLE" in result.stderr
    # Task collection: a package name outside the grammar is refused, naming the field.
    result = user("task", "collect", "not a package!", check=exits.USAGE)
    assert "package" in result.stderr


def test_shell_completion(cli: Cli) -> None:
    script = cli("--show-completion", "bash").stdout
    assert "complete" in script and "_FRACTAL_COMPLETE" in script
    env = {
        **cli.env,
        "_FRACTAL_COMPLETE": "complete_bash",
        "COMP_WORDS": "fractal jo",
        "COMP_CWORD": "1",
    }
    completed = Cli(env)().stdout
    assert "job" in completed.split()
