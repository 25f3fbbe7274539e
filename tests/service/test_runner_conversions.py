"""Pure pieces of the runner's execution: argument conversion, output → proto, log texts.

(No server involved; they live beside the runner's service tests.)
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import struct_pb2

from fractal.internal.v1 import job_execution_service_pb2 as pb
from fractal_grpc.convert import attributes_to_python, struct_dict
from fractal_grpc.images.task_output import parse_task_output
from fractal_runner.execution import (
    job_error_log,
    output_to_proto,
    prepare_job_folder,
    stop_log,
    task_error_log,
    unknown_error_log,
)


def test_struct_args_keep_integers() -> None:
    value = struct_pb2.Struct()
    value.update({"n": 2, "x": 0.5, "nested": {"k": [1, 2.5, {"m": 3}]}, "s": "a", "b": True})
    assert struct_dict(value) == {
        "n": 2,
        "x": 0.5,
        "nested": {"k": [1, 2.5, {"m": 3}]},
        "s": "a",
        "b": True,
    }
    assert type(struct_dict(value)["n"]) is int
    assert struct_dict(struct_pb2.Struct()) == {}


def test_output_to_proto_keeps_types_and_unset_attributes() -> None:
    output = parse_task_output(
        {
            "image_list_updates": [
                {
                    "zarr_url": "/z/a//b/",
                    "origin": "/z/o",
                    "attributes": {"i": 1, "f": 1.5, "s": "x", "b": False, "gone": None},
                    "types": {"3D": False},
                },
                {"zarr_url": "/z/c"},
            ],
            "image_list_removals": ["/z/d"],
            "filters": {"attributes": {"well": "A01", "none": None}, "types": {"t": True}},
        }
    )
    msg = output_to_proto(output)
    first, second = msg.image_list_updates
    assert first.zarr_url == "/z/a/b" and first.origin == "/z/o"
    kinds = {k: v.WhichOneof("kind") for k, v in first.attributes.items()}
    assert kinds == {
        "i": "number_value",
        "f": "number_value",
        "s": "string_value",
        "b": "bool_value",
        "gone": "null_value",
    }
    assert attributes_to_python(first.attributes) == {
        "i": 1,
        "f": 1.5,
        "s": "x",
        "b": False,
        "gone": None,
    }
    assert dict(first.types) == {"3D": False}
    assert not second.HasField("origin") and not second.attributes
    assert list(msg.image_list_removals) == ["/z/d"]
    assert msg.filters.attributes["well"].string_value == "A01"
    assert msg.filters.attributes["none"].WhichOneof("kind") == "null_value"
    assert dict(msg.filters.types) == {"t": True}
    assert output_to_proto(parse_task_output(None)) == pb.TaskOutput()


def test_error_log_texts() -> None:
    assert task_error_log("my task", 3, "boom\n") == (
        "TASK ERROR: Task name: my task, position in Workflow: 3\nTRACEBACK:\nboom\n"
    )
    assert job_error_log(7, "info") == "JOB ERROR in Fractal job 7:\nTRACEBACK:\ninfo"
    assert unknown_error_log(7, "tb") == "UNKNOWN ERROR in Fractal job 7\nTRACEBACK:\ntb"
    assert stop_log(7).startswith("JOB ERROR in Fractal job 7:\nTRACEBACK:\n")
    assert "stopped" in stop_log(7).lower()


def test_prepare_job_folder_creates_and_resumes(tmp_path: Path) -> None:
    job_dir = tmp_path / "jobs" / "proj_v2_0000001_wf_0000002_job_0000003_20240101_000000"
    tasks = [pb.TaskSpec(order=1, task_name="My Task"), pb.TaskSpec(order=2, task_name="other")]
    prepare_job_folder(job_dir, tasks[:1])
    assert (job_dir / "1_my_task").is_dir()
    assert (job_dir / "1_my_task").stat().st_mode & 0o777 == 0o755
    (job_dir / "workflow.log").write_text("kept")
    prepare_job_folder(job_dir, tasks)  # resuming: the folder exists, subfolders are added
    assert sorted(p.name for p in job_dir.iterdir()) == ["1_my_task", "2_other", "workflow.log"]
    assert (job_dir / "workflow.log").read_text() == "kept"
