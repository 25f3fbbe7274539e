"""The SLURM config file (§7.3): memory units, validation, and the per-task merge of meta."""

import json

import pytest

from fractal_runner.slurm.config_file import load_slurm_config_file, parse_slurm_config
from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.memory import parse_mem_mb
from fractal_runner.slurm.task_config import sets_account, task_slurm_config, with_job_settings

BATCHING = {
    "target_cpus_per_job": 1,
    "max_cpus_per_job": 2,
    "target_mem_per_job": 200,
    "max_mem_per_job": "1G",
    "target_num_jobs": 2,
    "max_num_jobs": 4,
}
FILE = {
    "default_slurm_config": {
        "partition": "main",
        "cpus_per_task": 1,
        "mem": "100M",
        "extra_lines": ["#SBATCH --exclusive", "module load x"],
    },
    "gpu_slurm_config": {"partition": "gpu", "mem": "2G", "extra_lines": ["#SBATCH --gres=gpu:1"]},
    "batching_config": BATCHING,
    "user_local_exports": {"CELLPOSE_LOCAL_MODELS_PATH": "models"},
}


@pytest.mark.parametrize(
    ("raw", "mb"),
    [(93, 93), ("93", 93), ("71M", 71), ("93G", 93_000), ("1T", 1_000_000), ("007", 7)],
)
def test_memory_units(raw, mb):
    assert parse_mem_mb(raw) == mb


@pytest.mark.parametrize(
    "raw", ["", "M", "M100", "1.5G", "10GB", "10 G", "10g", "-5", 0, -1, True, 1.5, None, "١٢"]
)
def test_memory_refused(raw):
    with pytest.raises(SlurmConfigError, match="invalid memory size"):
        parse_mem_mb(raw)


def test_file_loads_and_converts_memory(tmp_path):
    path = tmp_path / "slurm.json"
    path.write_text(json.dumps(FILE))
    config = load_slurm_config_file(path)
    assert config.default_slurm_config.mem == 100
    assert config.gpu_slurm_config is not None and config.gpu_slurm_config.mem == 2000
    assert config.batching_config.max_mem_per_job == 1000


def _with(section: str, **changes) -> dict:
    data = json.loads(json.dumps(FILE))
    data[section] = {**data[section], **changes}
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "default_slurm_config: Field required; batching_config: Field required"),
        ({**FILE, "extra": 1}, "extra: Extra inputs are not permitted"),
        (_with("default_slurm_config", mem="4GB"), "default_slurm_config.mem: invalid memory size"),
        (_with("default_slurm_config", nodes=2), "default_slurm_config.nodes: Extra inputs"),
        (_with("default_slurm_config", partition=None), "must set partition"),
        (_with("default_slurm_config", cpus_per_task=0), "cpus_per_task: Input should be greater"),
        (_with("batching_config", max_num_jobs=None), "batching_config.max_num_jobs"),
        (_with("batching_config", target_num_jobs=9), "target_num_jobs=9 exceeds max_num_jobs=4"),
        (_with("batching_config", target_mem_per_job="2G"), "target_mem_per_job=2000 exceeds"),
        ({**FILE, "user_local_exports": {"A": 1}}, "user_local_exports.A: Input should be"),
        ([], "Input should be a valid dictionary"),
    ],
)
def test_file_refused(data, message):
    with pytest.raises(SlurmConfigError, match="SLURM config is invalid") as info:
        parse_slurm_config(data)
    assert message in str(info.value)


def test_unreadable_or_not_json(tmp_path):
    with pytest.raises(SlurmConfigError, match="cannot read SLURM config file"):
        load_slurm_config_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SlurmConfigError, match="is not valid JSON"):
        load_slurm_config_file(tmp_path / "bad.json")


CONFIG = parse_slurm_config(FILE)

# (case, meta, expected subset of the merged options)
MERGES = [
    (
        "defaults",
        None,
        {
            "partition": "main",
            "cpus_per_task": 1,
            "mem_per_task_mb": 100,
            "job_name": "my_task",
            "extra_lines": ("#SBATCH --exclusive", "module load x"),
            "user_local_exports": {"CELLPOSE_LOCAL_MODELS_PATH": "models"},
            "tasks_per_job": None,
            "parallel_tasks_per_job": None,
            "max_mem_per_job": 1000,
            "time": None,
        },
    ),
    (
        "gpu section overrides the defaults",
        {"needs_gpu": True},
        {
            "partition": "gpu",
            "mem_per_task_mb": 2000,
            "cpus_per_task": 1,
            "extra_lines": ("#SBATCH --gres=gpu:1",),
        },
    ),
    ("needs_gpu false keeps the defaults", {"needs_gpu": False}, {"partition": "main"}),
    (
        "meta overrides the gpu section",
        {"needs_gpu": True, "mem": "3G", "cpus_per_task": "4"},
        {"partition": "gpu", "mem_per_task_mb": 3000, "cpus_per_task": 4},
    ),
    (
        "optional keys",
        {"time": "01:00:00", "gres": "gpu:2", "gpus": "2", "constraint": "avx", "gres_x": 1},
        {"time": "01:00:00", "gres": "gpu:2", "gpus": "2", "constraint": "avx"},
    ),
    ("None does not override", {"time": None, "mem": 300}, {"time": None, "mem_per_task_mb": 300}),
    (
        "extra lines appended, repeats dropped, order kept",
        {"extra_lines": ["export A=1", "module load x", "#SBATCH --exclusive"]},
        {"extra_lines": ("#SBATCH --exclusive", "module load x", "export A=1")},
    ),
    (
        "batching parameters",
        {"tasks_per_job": 10, "parallel_tasks_per_job": 3},
        {"tasks_per_job": 10, "parallel_tasks_per_job": 3},
    ),
    ("partition is not a per-task key", {"partition": "other"}, {"partition": "main"}),
]


@pytest.mark.parametrize(("case", "meta", "expected"), MERGES)
def test_task_merge(case, meta, expected):
    merged = task_slurm_config(CONFIG, meta, task_name="my task").model_dump()
    assert {k: merged[k] for k in expected} == expected, case


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"account": "lab"}, "invalid account='lab' in the task's meta"),
        ({"mem": "lots"}, "meta.mem: invalid memory size 'lots'"),
        ({"cpus_per_task": "two"}, "meta.cpus_per_task must be an integer"),
        ({"cpus_per_task": True}, "meta.cpus_per_task must be an integer"),
        ({"cpus_per_task": 0}, "cpus_per_task: Input should be greater than 0"),
        ({"extra_lines": "export A=1"}, "meta.extra_lines must be a list of strings"),
        ({"tasks_per_job": "many"}, "tasks_per_job: Input should be a valid integer"),
        ({"time": "1\n#SBATCH -A x"}, "time: may not contain a line break"),
        ({"extra_lines": ["a\rb"]}, "extra_lines: may not contain a line break"),
        (
            {"extra_lines": ["#SBATCH --exclusive", "#SBATCH -A other"]},
            "meta.extra_lines may not set the SLURM account",
        ),
    ],
)
def test_task_merge_refused(meta, message):
    with pytest.raises(SlurmConfigError, match=message):
        task_slurm_config(CONFIG, meta, task_name="t")


def test_needs_gpu_without_gpu_section():
    config = parse_slurm_config({k: v for k, v in FILE.items() if k != "gpu_slurm_config"})
    with pytest.raises(SlurmConfigError, match="no gpu_slurm_config section"):
        task_slurm_config(config, {"needs_gpu": True}, task_name="t")


def test_job_settings():
    base = task_slurm_config(CONFIG, None, task_name="t")
    merged = with_job_settings(
        base, slurm_account="lab", worker_init="source env.sh\n\nmodule load x\n\n"
    )
    assert merged.account == "lab"
    assert merged.extra_lines == ("#SBATCH --exclusive", "module load x", "source env.sh", "")
    assert with_job_settings(base, slurm_account=None, worker_init=None) == base
    with pytest.raises(SlurmConfigError, match="worker_init may not set the SLURM account"):
        with_job_settings(base, slurm_account=None, worker_init="  #SBATCH --account=x")


@pytest.mark.parametrize(
    ("line", "sets"),
    [
        ("#SBATCH --account=lab", True),
        ("  #SBATCH --account lab", True),
        ("#SBATCH -A lab", True),
        ("#SBATCH -Alab", True),
        ("#SBATCH -vA lab", True),
        ("#SBATCH -JAnalysis", False),  # a job name
        ("#SBATCH --acco=lab", True),
        ("#SBATCH --mem=1G -A lab", True),
        ("#SBATCH --exclusive", False),
        ("#SBATCH --array=1-3", False),
        ("#SBATCH --acctg-freq=task=1", False),
        ("# SBATCH --account=lab", False),  # not a directive: SLURM ignores it
        ("echo --account=lab", False),
        ("export SBATCH_ACCOUNT=lab", False),  # read by sbatch only, not inside the job
        ("", False),
    ],
)
def test_sets_account(line, sets):
    assert sets_account(line) is sets
