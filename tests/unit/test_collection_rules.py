"""The task-collection rules (libs/fractal_grpc/collection), table by table."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from fractal_grpc.collection import commands, naming
from fractal_grpc.collection.manifest import ManifestError, parse_manifest
from fractal_grpc.collection.packages import (
    PackageError,
    PackageSpec,
    check_absolute_path,
    check_request,
)
from fractal_grpc.collection.tasks import build_tasks

PYTHONS = {"3.11": "/usr/bin/python3.11", "3.12": "/opt/py312/bin/python3"}


def _check(package: str, version: str | None = None, extras: str | None = None, **kw: Any) -> Any:
    return check_request(
        package,
        version,
        extras,
        kw.get("python"),
        kw.get("pins", {}),
        pythons=PYTHONS,
        default_python=kw.get("default", "3.11"),
    )


@pytest.mark.parametrize(
    ("package", "version", "extras", "name", "expected_version", "expected_extras"),
    [
        (
            "fractal-tasks-core",
            "1.0.2",
            "fractal-tasks",
            "fractal-tasks-core",
            "1.0.2",
            "fractal-tasks",
        ),
        ("Fractal_Tasks.Foo", None, None, "fractal-tasks-foo", None, None),
        ("pkg", "2.0rc1", "a, B_c", "pkg", "2.0rc1", "a,b-c"),
        (
            "/data/wheels/Fractal_Tasks_Foo-0.1.0-py3-none-any.whl",
            None,
            None,
            "fractal-tasks-foo",
            "0.1.0",
            None,
        ),
    ],
)
def test_accepted_requests(
    package: str,
    version: str | None,
    extras: str | None,
    name: str,
    expected_version: str | None,
    expected_extras: str | None,
) -> None:
    spec = _check(package, version, extras)
    assert (spec.name, spec.version, spec.extras) == (name, expected_version, expected_extras)
    assert spec.origin == ("pip_local" if package.startswith("/") else "pip_remote")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"package": "pkg; rm -rf /"}, "package"),
        ({"package": "pkg name"}, "package"),
        ({"package": "-pkg"}, "package"),
        ({"package": "pkg$(id)"}, "package"),
        ({"package": "pkg", "version": "1.0; echo"}, "package_version"),
        ({"package": "pkg", "version": "not-a-version"}, "package_version"),
        ({"package": "pkg", "version": ">=1.0"}, "package_version"),
        ({"package": "pkg", "extras": "a,,b"}, "package_extras"),
        ({"package": "pkg", "extras": "a]"}, "package_extras"),
        ({"package": "pkg", "pins": {"numpy": "1.26 ; x"}}, "pinned_package_versions[numpy]"),
        ({"package": "pkg", "pins": {"num py": "1.0"}}, "pinned_package_versions[num py]"),
        ({"package": "pkg", "pins": {"Numpy": "1.0", "numpy": "1.1"}}, "pinned_package_versions"),
        ({"package": "pkg", "python": "3.9"}, "python_version"),
        ({"package": "pkg", "python": "python3"}, "python_version"),
        ({"package": "pkg", "default": None}, "python_version"),
        ({"package": "relative/pkg-1.0-py3-none-any.whl"}, "package"),
        ({"package": "/data/pkg-1.0.tar.gz"}, "package"),
        ({"package": "/data/../etc/pkg-1.0-py3-none-any.whl"}, "package"),
        ({"package": "/data/my dir/pkg-1.0-py3-none-any.whl"}, "package"),
        ({"package": "/data/notawheel.whl"}, "package"),
        ({"package": "/data/pkg-1.0-py3-none-any.whl", "version": "1.0"}, "package_version"),
    ],
)
def test_refused_requests(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PackageError) as err:
        _check(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("args", "folder"),
    [
        (("pkg", "1.0", None, "3.11", "3.11"), "/t/.fractal/pkg1.0"),
        (("pkg", "1.0", "a,b", "3.11", "3.11"), "/t/.fractal/pkg1.0_a_b"),
        (("pkg", "1.0", None, "3.12", "3.11"), "/t/.fractal/pkg1.0_py3.12"),
    ],
)
def test_env_folder(args: tuple[Any, ...], folder: str) -> None:
    assert naming.env_folder("/t", *args) == folder


def test_sources_follow_the_reference() -> None:
    source = naming.package_source(
        "pip_remote", "fractal-tasks-core", "1.0.2", "fractal-tasks", "3.10"
    )
    assert source == "pip_remote:fractal_tasks_core:1.0.2:fractal-tasks:py3.10"
    assert (
        naming.task_source(source, "Create OME-Zarr structure")
        == "pip_remote:fractal_tasks_core:1.0.2:fractal-tasks:py3.10:create_ome-zarr_structure"
    )
    assert naming.package_source("pip_local", "pkg", "1", None, "3.11") == "pip_local:pkg:1::py3.11"


def _task(**fields: Any) -> dict[str, Any]:
    return {"name": "t", "executable_non_parallel": "t.py", **fields}


GOOD = {
    "manifest_version": "2",
    "has_args_schemas": True,
    "args_schema_version": "pydantic_v1",
    "task_list": [
        _task(
            name="Init",
            executable_parallel="c.py",
            args_schema_non_parallel={},
            args_schema_parallel={},
            meta_parallel={"cpus_per_task": 2},
        ),
        {
            "name": "Par",
            "executable_parallel": "p.py",
            "args_schema_parallel": {"type": "object"},
            "input_types": {"3D": True},
            "docs_link": "https://example.org/x",
        },
        _task(name="Only NP", args_schema_non_parallel={}, output_types={"x": False}),
    ],
}


def test_a_good_manifest_gives_each_type() -> None:
    manifest = parse_manifest(GOOD)
    assert [t.type for t in manifest.task_list] == ["compound", "parallel", "non_parallel"]
    assert manifest.task_list[1].input_types == {"3D": True}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({**GOOD, "manifest_version": "1"}, "manifest_version 1"),
        ({**GOOD, "manifest_version": 2}, "unsupported manifest_version"),
        ({**GOOD, "manifest_version": "3"}, "unsupported manifest_version"),
        ([], "JSON object"),
        ({"manifest_version": "2", "task_list": []}, "task_list"),
        ({"manifest_version": "2", "task_list": [{"name": "x"}]}, "needs executable"),
        ({"manifest_version": "2", "task_list": [_task(name="")]}, "name"),
        (
            {"manifest_version": "2", "task_list": [_task(executable_non_parallel="/abs.py")]},
            "inside the package",
        ),
        (
            {"manifest_version": "2", "task_list": [_task(executable_non_parallel="../x.py")]},
            "inside the package",
        ),
        (
            {"manifest_version": "2", "task_list": [_task(executable_non_parallel="a b.py")]},
            "white space",
        ),
        (
            {"manifest_version": "2", "task_list": [_task(meta_parallel={"a": 1})]},
            "need executable_parallel",
        ),
        (
            {"manifest_version": "2", "task_list": [_task(args_schema_parallel={})]},
            "need executable_parallel",
        ),
        ({"manifest_version": "2", "task_list": [_task(input_types={"a": 1})]}, "input_types"),
        ({"manifest_version": "2", "task_list": [_task(docs_link="ftp://x")]}, "docs_link"),
        ({"manifest_version": "2", "task_list": [_task(bogus=1)]}, "unknown field"),
        ({"manifest_version": "2", "task_list": [_task(type="parallel")]}, "does not match"),
        ({"manifest_version": "2", "task_list": [_task(type="converter_x")]}, "does not match"),
        (
            {
                "manifest_version": "2",
                "task_list": [_task(executable_parallel="p.py", type="converter_non_parallel")],
            },
            "does not match",
        ),
        ({"manifest_version": "2", "task_list": [_task(), _task()]}, "same task source"),
        (
            {"manifest_version": "2", "task_list": [_task(name="A b"), _task(name="a_b")]},
            "same task source",
        ),
        (
            {"manifest_version": "2", "has_args_schemas": True, "task_list": [_task()]},
            "args_schema_non_parallel is missing",
        ),
        (
            {"manifest_version": "2", "has_args_schemas": "yes", "task_list": [_task()]},
            "has_args_schemas",
        ),
    ],
)
def test_refused_manifests(manifest: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(manifest)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"type": "non_parallel"}, "non_parallel"),
        ({"type": "converter_non_parallel"}, "non_parallel"),
        ({"executable_parallel": "p.py", "type": "compound"}, "compound"),
        ({"executable_parallel": "p.py", "type": "converter_compound"}, "compound"),
        (
            {"executable_non_parallel": None, "executable_parallel": "p.py", "type": "parallel"},
            "parallel",
        ),
    ],
)
def test_a_declared_type_that_matches_the_executables_is_accepted(
    fields: dict[str, Any], kind: str
) -> None:
    """Manifests made by fractal-task-tools (fractal-tasks-core 2.x) say each task's type."""
    manifest = parse_manifest({"manifest_version": "2", "task_list": [_task(**fields)]})
    assert [t.type for t in manifest.task_list] == [kind]


def test_tasks_built_from_a_manifest() -> None:
    drafts = build_tasks(
        parse_manifest(GOOD),
        python="/t/.fractal/pkg1.0/venv/bin/python",
        package_root="/t/.fractal/pkg1.0/venv/lib/python3.11/site-packages/pkg",
        source="pip_remote:pkg:1.0::py3.11",
        version="1.0",
    )
    init = drafts[0]
    assert init.source == "pip_remote:pkg:1.0::py3.11:init"
    assert shlex.split(init.command_non_parallel or "") == [
        "/t/.fractal/pkg1.0/venv/bin/python",
        "/t/.fractal/pkg1.0/venv/lib/python3.11/site-packages/pkg/t.py",
    ]
    assert init.command_parallel is not None and init.command_parallel.endswith("/pkg/c.py")
    assert drafts[1].command_non_parallel is None
    assert {d.args_schema_version for d in drafts} == {"pydantic_v1"}
    assert drafts[2].source.endswith(":only_np")


def test_commands_quote_nothing_and_carry_pins() -> None:
    spec = PackageSpec("pkg", "1.0", "a", "3.11", {"dep": "2.0"})
    uv = commands.Installer(
        "uv", uv="/bin/uv", index=commands.IndexOptions(find_links=("/w",), no_index=True)
    )
    assert commands.install(uv, "/e", spec, "1.0") == [
        "/bin/uv",
        "pip",
        "install",
        "--python",
        "/e/venv/bin/python",
        "--no-index",
        "--find-links",
        "/w",
        "--constraint",
        "/e/pinned_versions.txt",
        "pkg[a]==1.0",
    ]
    assert commands.constraints(spec) == "dep==2.0\n"
    pip = commands.Installer("pip", pip_max_version="24.0")
    venv = commands.create_venv(pip, "/usr/bin/python3.11", "/e")
    assert venv[0] == ["/usr/bin/python3.11", "-m", "venv", "/e/venv"]
    assert "pip<=24.0" in venv[1]
    wheel = PackageSpec("pkg", "1.0", None, "3.11", wheel_path="/w/pkg-1.0-py3-none-any.whl")
    assert commands.requirement(wheel) == "pkg @ file:///w/pkg-1.0-py3-none-any.whl"


@pytest.mark.parametrize(
    ("kind", "output", "version"),
    [
        ("uv", "pkg==1.2.3\n", "1.2.3"),
        ("uv", "Resolved 1 package\nPkg[x]==2.0 ; python_version >= '3'\n", "2.0"),
        ("uv", "other==1.0\n", None),
        (
            "pip",
            "Looking in links: /w\nSaved /tmp/x/Pkg-1.4-py3-none-any.whl\nDone\n",
            "1.4",
        ),
        ("pip", "Successfully downloaded pkg\n", None),
    ],
)
def test_resolved_version(kind: str, output: str, version: str | None) -> None:
    assert commands.resolved_version(kind, output, "pkg") == version


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("/opt/env/bin/python", "/opt/env/bin/python"),
        ("/opt/pkg/", "/opt/pkg"),
        ("relative/python", None),
        ("/opt/x y", None),
        ("/opt/../etc", None),
        ("/opt/..", None),
        ("/opt//x", None),
        ("/opt/$(id)", None),
        ("/opt/a;b", None),
    ],
)
def test_absolute_paths(value: str, kept: str | None) -> None:
    if kept is None:
        with pytest.raises(PackageError):
            check_absolute_path(value, "f")
    else:
        assert check_absolute_path(value, "f") == kept
