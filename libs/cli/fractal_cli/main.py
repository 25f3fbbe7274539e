"""The `fractal` command: `fractal <noun> <verb>`, shaped like fractal-client.

Exit codes (``fractal_cli.exits``): 0 ok, 1 refused (exists, in use, precondition), 2 usage
(the command line or the request is invalid), 3 not found, 4 not logged in or not allowed,
5 server unreachable or failing, 6 the watched job or collection failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fractal_cli import exits
from fractal_cli.config import ConfigError, Settings, config_path, write_config_file
from fractal_cli.core import Session, session
from fractal_cli.data import dataset_app, image_app, project_app, user_app
from fractal_cli.flows import task_app, workflow_app
from fractal_cli.jobs import job_app
from fractal_cli.output import Output
from fractal_grpc.client import FractalError

app = typer.Typer(
    name="fractal",
    help="The command-line client of fractal-grpc.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(user_app, name="user")
app.add_typer(project_app, name="project")
app.add_typer(dataset_app, name="dataset")
app.add_typer(image_app, name="image")
app.add_typer(task_app, name="task")
app.add_typer(workflow_app, name="workflow")
app.add_typer(job_app, name="job")


@app.callback()
def root(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option(help="api's public address (env FRACTAL_SERVER)")
    ] = None,
    user: Annotated[str | None, typer.Option(help="email (env FRACTAL_USER)")] = None,
    password: Annotated[str | None, typer.Option(help="(env FRACTAL_PASSWORD)")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="deadline of a call, seconds (env FRACTAL_TIMEOUT)")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON output, for scripts")] = False,
) -> None:
    out = Output(json_)
    _OUTPUT[0] = out
    try:
        settings = Settings.resolve(address=address, user=user, password=password, timeout=timeout)
    except ConfigError as exc:
        out.fail(str(exc))
        raise typer.Exit(exits.USAGE) from None
    ctx.obj = Session(settings, out)
    ctx.call_on_close(ctx.obj.close)


@app.command("login")
def login(
    ctx: typer.Context,
    save: Annotated[
        bool, typer.Option(help="write address, user and password to the config file")
    ] = False,
) -> None:
    """Log in with --user/--password (or their env/config) and cache the token."""
    s = session(ctx)
    if not s.settings.user or not s.settings.password:
        raise ConfigError("login needs --user and --password (or FRACTAL_USER/FRACTAL_PASSWORD)")
    c = s.client(login=False)
    c.login(s.settings.user, s.settings.password)
    if save:
        path: Path = config_path()
        write_config_file(
            path,
            {
                "address": s.settings.address,
                "user": s.settings.user,
                "password": s.settings.password,
            },
        )
    s.out.done(
        f"logged in to {s.settings.address} as {s.settings.user}"
        + (f" (saved in {config_path()})" if save else ""),
        {"address": s.settings.address, "user": s.settings.user, "saved": save},
    )


def main() -> None:
    """The console script: run the command (typer reports its own usage errors, exit 2), and
    turn the client's errors into messages and exit codes."""
    try:
        app(prog_name="fractal")
    except ConfigError as exc:
        _OUTPUT[0].fail(str(exc))
        raise SystemExit(exits.USAGE) from None
    except FractalError as exc:
        _OUTPUT[0].error(exc)
        raise SystemExit(exits.exit_code(exc)) from None
    except OSError as exc:
        _OUTPUT[0].fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        raise SystemExit(exits.USAGE) from None


#: The output of the command being run (its --json), for the errors it ends with.
_OUTPUT: list[Output] = [Output(False)]
