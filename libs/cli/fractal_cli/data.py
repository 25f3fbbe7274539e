"""`fractal user|project|dataset|image ...`"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fractal.v2 import image_pb2, project_pb2, user_pb2
from fractal_cli.core import (
    filters,
    json_object,
    json_value,
    key_values,
    pages,
    session,
    type_flags,
)
from fractal_cli.output import Column
from fractal_grpc.convert import attributes_to_python, filters_to_dict

user_app = typer.Typer(help="Users: who you are; registration and edits (superusers).")
project_app = typer.Typer(help="Projects.")
dataset_app = typer.Typer(help="Datasets of a project.")
image_app = typer.Typer(help="The image list of a dataset.")

USER_COLUMNS: list[Column] = [
    ("id", lambda u: u.id),
    ("email", lambda u: u.email),
    ("username", lambda u: u.username if u.HasField("username") else None),
    ("active", lambda u: u.is_active),
    ("verified", lambda u: u.is_verified),
    ("superuser", lambda u: u.is_superuser),
    ("slurm_user", lambda u: u.slurm_user if u.HasField("slurm_user") else None),
    ("cache_dir", lambda u: u.cache_dir if u.HasField("cache_dir") else None),
    ("slurm_accounts", lambda u: ", ".join(u.slurm_accounts)),
]
PROJECT_COLUMNS: list[Column] = [
    ("id", lambda p: p.id),
    ("name", lambda p: p.name),
    ("created", lambda p: p.create_time.ToDatetime().isoformat(timespec="seconds")),
]
DATASET_COLUMNS: list[Column] = [
    ("id", lambda d: d.id),
    ("project", lambda d: d.project_id),
    ("name", lambda d: d.name),
    ("zarr_dir", lambda d: d.zarr_dir),
    ("images", lambda d: d.image_count),
    ("filters", lambda d: filters_to_dict(d.filters)),
]
IMAGE_COLUMNS: list[Column] = [
    ("zarr_url", lambda i: i.zarr_url),
    ("origin", lambda i: i.origin if i.HasField("origin") else None),
    ("attributes", lambda i: attributes_to_python(i.attributes)),
    ("types", lambda i: dict(i.types)),
]

Attr = Annotated[list[str], typer.Option("--attribute", "-a", help="key=value (repeatable)")]
Types = Annotated[list[str], typer.Option("--type", "-t", help="type[=true|false] (repeatable)")]


def _show_user(ctx: typer.Context, user: user_pb2.User) -> None:
    session(ctx).out.one(user, USER_COLUMNS, title=f"user {user.id}")


@user_app.command("whoami")
def user_whoami(ctx: typer.Context) -> None:
    """The user you are logged in as."""
    _show_user(ctx, session(ctx).client().get_current_user())


@user_app.command("list")
def user_list(ctx: typer.Context) -> None:
    c = session(ctx).client()
    users = pages(lambda t: c.list_users(page_token=t), "users")
    session(ctx).out.many(users, USER_COLUMNS, title="users")


@user_app.command("show")
def user_show(ctx: typer.Context, user_id: int) -> None:
    _show_user(ctx, session(ctx).client().get_user(user_id))


@user_app.command("register")
def user_register(
    ctx: typer.Context,
    email: str,
    password: str,
    username: Annotated[str | None, typer.Option()] = None,
    slurm_user: Annotated[str | None, typer.Option()] = None,
    cache_dir: Annotated[str | None, typer.Option()] = None,
    slurm_account: Annotated[list[str], typer.Option(help="repeatable")] = [],  # noqa: B006
    verified: Annotated[bool, typer.Option(help="mark the new user verified")] = False,
    superuser: Annotated[bool, typer.Option(help="make the new user a superuser")] = False,
) -> None:
    """Register a user (superusers only)."""
    c = session(ctx).client()
    user = c.create_user(
        email,
        password,
        username=username,
        slurm_user=slurm_user,
        cache_dir=cache_dir,
        slurm_accounts=slurm_account,
    )
    if verified or superuser:
        user = c.update_user(
            user.id,
            is_verified=True if verified else None,
            is_superuser=True if superuser else None,
        )
    _show_user(ctx, user)


@user_app.command("edit")
def user_edit(
    ctx: typer.Context,
    user_id: int,
    new_email: Annotated[str | None, typer.Option()] = None,
    new_password: Annotated[str | None, typer.Option()] = None,
    new_username: Annotated[str | None, typer.Option()] = None,
    new_slurm_user: Annotated[str | None, typer.Option()] = None,
    new_cache_dir: Annotated[str | None, typer.Option()] = None,
    new_slurm_account: Annotated[
        list[str] | None, typer.Option(help="repeatable; replaces the list")
    ] = None,
    verified: Annotated[bool | None, typer.Option("--verified/--unverified")] = None,
    active: Annotated[bool | None, typer.Option("--active/--inactive")] = None,
    superuser: Annotated[bool | None, typer.Option("--superuser/--no-superuser")] = None,
) -> None:
    """Change a user's fields (superusers only); only the options given change."""
    user = (
        session(ctx)
        .client()
        .update_user(
            user_id,
            email=new_email,
            password=new_password,
            username=new_username,
            slurm_user=new_slurm_user,
            cache_dir=new_cache_dir,
            slurm_accounts=new_slurm_account,
            is_verified=verified,
            is_active=active,
            is_superuser=superuser,
        )
    )
    _show_user(ctx, user)


# -- projects ---------------------------------------------------------------------------------


def _show_project(ctx: typer.Context, project: project_pb2.Project) -> None:
    session(ctx).out.one(project, PROJECT_COLUMNS, title=f"project {project.id}")


@project_app.command("new")
def project_new(ctx: typer.Context, name: str) -> None:
    _show_project(ctx, session(ctx).client().create_project(name))


@project_app.command("list")
def project_list(ctx: typer.Context) -> None:
    c = session(ctx).client()
    projects = pages(lambda t: c.list_projects(page_token=t), "projects")
    session(ctx).out.many(projects, PROJECT_COLUMNS, title="projects")


@project_app.command("show")
def project_show(ctx: typer.Context, project_id: int) -> None:
    _show_project(ctx, session(ctx).client().get_project(project_id))


@project_app.command("edit")
def project_edit(
    ctx: typer.Context, project_id: int, new_name: Annotated[str, typer.Option()]
) -> None:
    _show_project(ctx, session(ctx).client().update_project(project_id, name=new_name))


@project_app.command("delete")
def project_delete(ctx: typer.Context, project_id: int) -> None:
    """Delete a project with its datasets and workflows (its jobs are kept)."""
    session(ctx).client().delete_project(project_id)
    session(ctx).out.done(f"project {project_id} deleted", {"deleted": {"project_id": project_id}})


# -- datasets ---------------------------------------------------------------------------------


def _show_dataset(ctx: typer.Context, dataset: project_pb2.Dataset) -> None:
    session(ctx).out.one(dataset, DATASET_COLUMNS, title=f"dataset {dataset.id}")


@dataset_app.command("new")
def dataset_new(
    ctx: typer.Context,
    project_id: int,
    name: str,
    zarr_dir: Annotated[str, typer.Option(help="where the dataset's zarrs are")],
    attribute: Attr = [],  # noqa: B006
    type_: Types = [],  # noqa: B006
) -> None:
    """Create a dataset (with optional attribute/type filters)."""
    dataset = (
        session(ctx)
        .client()
        .create_dataset(project_id, name, zarr_dir, filters=filters(attribute, type_))
    )
    _show_dataset(ctx, dataset)


@dataset_app.command("list")
def dataset_list(
    ctx: typer.Context,
    project_id: Annotated[int, typer.Argument(help="0: every project of yours")] = 0,
) -> None:
    c = session(ctx).client()
    datasets = pages(lambda t: c.list_datasets(project_id, page_token=t), "datasets")
    session(ctx).out.many(datasets, DATASET_COLUMNS, title="datasets")


@dataset_app.command("show")
def dataset_show(ctx: typer.Context, project_id: int, dataset_id: int) -> None:
    _show_dataset(ctx, session(ctx).client().get_dataset(project_id, dataset_id))


@dataset_app.command("edit")
def dataset_edit(
    ctx: typer.Context,
    project_id: int,
    dataset_id: int,
    new_name: Annotated[str | None, typer.Option()] = None,
    new_zarr_dir: Annotated[str | None, typer.Option()] = None,
    new_filters: Annotated[
        str | None,
        typer.Option(help='JSON (or @file): {"attributes": {...}, "types": {...}}; replaces'),
    ] = None,
) -> None:
    dataset = (
        session(ctx)
        .client()
        .update_dataset(
            project_id,
            dataset_id,
            name=new_name,
            zarr_dir=new_zarr_dir,
            filters=json_object(new_filters, "--new-filters"),
        )
    )
    _show_dataset(ctx, dataset)


@dataset_app.command("delete")
def dataset_delete(ctx: typer.Context, project_id: int, dataset_id: int) -> None:
    session(ctx).client().delete_dataset(project_id, dataset_id)
    session(ctx).out.done(
        f"dataset {dataset_id} deleted",
        {"deleted": {"project_id": project_id, "dataset_id": dataset_id}},
    )


# -- images -----------------------------------------------------------------------------------


@image_app.command("list")
def image_list(
    ctx: typer.Context,
    project_id: int,
    dataset_id: int,
    attribute: Attr = [],  # noqa: B006
    type_: Types = [],  # noqa: B006
    use_dataset_filters: Annotated[bool, typer.Option()] = False,
    page_size: Annotated[int, typer.Option(min=0, help="0: the server's default")] = 0,
    all_pages: Annotated[bool, typer.Option("--all", help="every page")] = False,
) -> None:
    """The images of a dataset that match the filters (one page, or --all)."""
    s = session(ctx)
    c = s.client()
    f = filters(attribute, type_)
    token = ""
    images: list[image_pb2.Image] = []
    total = 0
    while True:
        page = c.query_images(
            project_id,
            dataset_id,
            filters=f,
            use_dataset_filters=use_dataset_filters,
            page_size=page_size,
            page_token=token,
        )
        images.extend(page.images)
        total = page.total_count
        token = page.next_page_token
        if not token or not all_pages:
            break
    if s.out.json_mode:
        s.out.json(
            {
                "images": [_image_dict(i) for i in images],
                "total_count": total,
                "next_page_token": token,
            }
        )
        return
    s.out.many(images, IMAGE_COLUMNS, title=f"{len(images)} of {total} images")


@image_app.command("add")
def image_add(
    ctx: typer.Context,
    project_id: int,
    dataset_id: int,
    zarr_url: Annotated[list[str], typer.Option(help="repeatable; same attributes/types")] = [],  # noqa: B006
    attribute: Attr = [],  # noqa: B006
    type_: Types = [],  # noqa: B006
    file: Annotated[
        str | None,
        typer.Option(help="JSON list (or @file) of {zarr_url, origin, attributes, types}"),
    ] = None,
) -> None:
    """Add images: one or more --zarr-url with --attribute/--type, or a JSON list."""
    images: list[dict[str, Any]] = []
    attributes = key_values(attribute, "--attribute")
    types = type_flags(type_, "--type")
    images.extend({"zarr_url": u, "attributes": attributes, "types": types} for u in zarr_url)
    if file is not None:
        listed = json_value(file, "--file")
        if not isinstance(listed, list) or not all(
            isinstance(i, dict) and isinstance(i.get("zarr_url"), str) for i in listed
        ):
            raise typer.BadParameter(
                "must be a JSON list of objects with a zarr_url", param_hint="--file"
            )
        images.extend(listed)
    if not images:
        raise typer.BadParameter("give --zarr-url or --file", param_hint="--zarr-url")
    added = session(ctx).client().add_images(project_id, dataset_id, images)
    session(ctx).out.done(f"{added} image(s) added", {"added_count": added})


@image_app.command("edit")
def image_edit(
    ctx: typer.Context,
    project_id: int,
    dataset_id: int,
    zarr_url: str,
    attributes: Annotated[str | None, typer.Option(help="JSON object (or @file); replaces")] = None,
    types: Annotated[str | None, typer.Option(help="JSON object (or @file); replaces")] = None,
) -> None:
    """Replace an image's attributes and/or types."""
    attrs = json_object(attributes, "--attributes")
    tys = json_object(types, "--types")
    if attrs is None and tys is None:
        raise typer.BadParameter("give --attributes and/or --types", param_hint="--attributes")
    image = (
        session(ctx)
        .client()
        .update_image(project_id, dataset_id, zarr_url, attributes=attrs, types=tys)
    )
    session(ctx).out.one(image, IMAGE_COLUMNS, title="image")


@image_app.command("delete")
def image_delete(
    ctx: typer.Context, project_id: int, dataset_id: int, zarr_urls: list[str]
) -> None:
    """Remove images from the list (nothing on disk)."""
    deleted = session(ctx).client().delete_images(project_id, dataset_id, zarr_urls)
    session(ctx).out.done(f"{deleted} image(s) removed", {"deleted_count": deleted})


def _image_dict(image: image_pb2.Image) -> dict[str, Any]:
    return {
        "zarr_url": image.zarr_url,
        "origin": image.origin if image.HasField("origin") else None,
        "attributes": attributes_to_python(image.attributes),
        "types": dict(image.types),
    }


@dataset_app.command("export")
def dataset_export(
    ctx: typer.Context,
    project_id: int,
    dataset_id: int,
    json_file: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """The dataset as JSON: name, zarr_dir, filters and every image (one snapshot)."""
    header: dict[str, Any] = {}
    images: list[dict[str, Any]] = []
    for part in session(ctx).client().export_dataset(project_id, dataset_id):
        if not header:
            header = {
                "name": part.name,
                "zarr_dir": part.zarr_dir,
                "filters": filters_to_dict(part.filters),
            }
        images.extend(_image_dict(i) for i in part.images)
    text = json.dumps({**header, "images": images}, indent=2, sort_keys=True)
    if json_file is None:
        print(text)
        return
    json_file.write_text(text + "\n")
    session(ctx).out.done(
        f"dataset {dataset_id} ({len(images)} images) written to {json_file}",
        {"path": str(json_file), "image_count": len(images)},
    )


@dataset_app.command("import")
def dataset_import(
    ctx: typer.Context,
    project_id: int,
    json_file: Annotated[Path, typer.Option(help="a file written by `dataset export`")],
    dataset_name: Annotated[str | None, typer.Option(help="instead of the file's name")] = None,
) -> None:
    """Create a dataset with all its images from an export, all or nothing."""
    data = json_value(f"@{json_file}", "--json-file")
    if not isinstance(data, dict) or not isinstance(data.get("zarr_dir"), str):
        raise typer.BadParameter("not a dataset export", param_hint="--json-file")
    images = data.get("images") or []
    if not isinstance(images, list) or not all(
        isinstance(i, dict) and isinstance(i.get("zarr_url"), str) for i in images
    ):
        raise typer.BadParameter(
            "images: a list of objects with a zarr_url", param_hint="--json-file"
        )
    dataset = (
        session(ctx)
        .client()
        .import_dataset(
            project_id,
            dataset_name or str(data.get("name") or ""),
            data["zarr_dir"],
            images,
            filters=data.get("filters"),
        )
    )
    _show_dataset(ctx, dataset)
