"""The sbatch script layout (§7.3): preamble order, srun per call, in-job queue in lanes, wait."""

import dataclasses

import pytest

from fractal_runner.slurm.config_file import parse_slurm_config
from fractal_runner.slurm.errors import SlurmConfigError
from fractal_runner.slurm.script import JobCall, SlurmJobSpec, sbatch_script, wrapper_script
from fractal_runner.slurm.task_config import task_slurm_config, with_job_settings

FILE = parse_slurm_config(
    {
        "default_slurm_config": {
            "partition": "main",
            "cpus_per_task": 2,
            "mem": "100M",
            "extra_lines": ["module load x", "#SBATCH --exclusive"],
        },
        "batching_config": {
            "target_cpus_per_job": 4,
            "max_cpus_per_job": 8,
            "target_mem_per_job": 400,
            "max_mem_per_job": 1000,
            "target_num_jobs": 2,
            "max_num_jobs": 4,
        },
        "user_local_exports": {"MODELS": "models"},
    }
)
CONFIG = with_job_settings(
    task_slurm_config(
        FILE,
        {"time": "10", "constraint": "avx", "gres": "gpu:1", "gpus": "2"},
        task_name="create zarr",
    ),
    slurm_account="lab",
    worker_init="source /opt/env.sh",
)


def _calls(n: int) -> list[JobCall]:
    return [
        JobCall(
            f"1_par_{i:07d}", f"/srv/job/1_x/1_in_{i}.pickle", f"/home/u/job/1_x/1_out_{i}.pickle"
        )
        for i in range(n)
    ]


SPEC = SlurmJobSpec(
    config=CONFIG,
    calls=_calls(3),
    parallel_tasks_per_job=2,
    working_dir="/home/u/job",
    stdout_file="/home/u/job/1_x/1_batch_000000_slurm_%j.out",
    stderr_file="/home/u/job/1_x/1_batch_000000_slurm_%j.err",
    worker_python="/opt/venv/bin/python",
    export_dir="/home/u/.cache",
    comment="fractal:run=7",
)

EXPECTED = """\
#!/bin/sh
#SBATCH --partition=main
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=2
#SBATCH --mem=200M
#SBATCH --job-name=create_zarr
#SBATCH --constraint=avx
#SBATCH --gres=gpu:1
#SBATCH --gpus=2
#SBATCH --time=10
#SBATCH --account=lab
#SBATCH --comment=fractal:run=7
#SBATCH --exclusive
#SBATCH --err=/home/u/job/1_x/1_batch_000000_slurm_%j.err
#SBATCH --out=/home/u/job/1_x/1_batch_000000_slurm_%j.out
#SBATCH -D /home/u/job
module load x
source /opt/env.sh
export MODELS=/home/u/.cache/models

echo "Working directory (pwd): `pwd`"

(
  srun --ntasks=1 --cpus-per-task=$SLURM_CPUS_PER_TASK --mem=100M --job-name=1_par_0000000 \
/opt/venv/bin/python -m fractal_runner.slurm.worker \
--input-file /srv/job/1_x/1_in_0.pickle --output-file /home/u/job/1_x/1_out_0.pickle
  srun --ntasks=1 --cpus-per-task=$SLURM_CPUS_PER_TASK --mem=100M --job-name=1_par_0000002 \
/opt/venv/bin/python -m fractal_runner.slurm.worker \
--input-file /srv/job/1_x/1_in_2.pickle --output-file /home/u/job/1_x/1_out_2.pickle
) &
(
  srun --ntasks=1 --cpus-per-task=$SLURM_CPUS_PER_TASK --mem=100M --job-name=1_par_0000001 \
/opt/venv/bin/python -m fractal_runner.slurm.worker \
--input-file /srv/job/1_x/1_in_1.pickle --output-file /home/u/job/1_x/1_out_1.pickle
) &
wait
""".replace("\\\n", "")


def test_layout():
    assert sbatch_script(SPEC) == EXPECTED


@pytest.mark.parametrize(("n_calls", "parallel", "ntasks", "mem"), [(1, 5, 1, 100), (3, 3, 3, 300)])
def test_ntasks_lowered_to_the_number_of_calls(n_calls, parallel, ntasks, mem):
    text = sbatch_script(
        dataclasses.replace(SPEC, calls=_calls(n_calls), parallel_tasks_per_job=parallel)
    )
    assert f"#SBATCH --ntasks={ntasks}\n" in text
    assert f"#SBATCH --mem={mem}M\n" in text
    assert text.count("srun ") == n_calls


def test_minimal_config_has_only_the_required_lines():
    minimal = task_slurm_config(
        parse_slurm_config(
            {
                **FILE.model_dump(),
                "default_slurm_config": {"partition": "p", "cpus_per_task": 1, "mem": 50},
                "user_local_exports": None,
            }
        ),
        None,
        task_name="t",
    )
    text = sbatch_script(dataclasses.replace(SPEC, config=minimal, comment=None, export_dir=None))
    head = text.split("\n\n")[0].splitlines()
    assert head == [
        "#!/bin/sh",
        "#SBATCH --partition=p",
        "#SBATCH --ntasks=2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=100M",
        "#SBATCH --job-name=t",
        f"#SBATCH --err={SPEC.stderr_file}",
        f"#SBATCH --out={SPEC.stdout_file}",
        "#SBATCH -D /home/u/job",
    ]


def test_worker_arguments_are_quoted():
    calls = [JobCall("a b", "/x/in 1.pickle", "/x/out;rm.pickle")]
    text = sbatch_script(dataclasses.replace(SPEC, calls=calls))
    assert "--job-name='a b' " in text
    assert "--input-file '/x/in 1.pickle' --output-file '/x/out;rm.pickle' &" in text


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"calls": []}, ValueError, "at least one task call"),
        ({"parallel_tasks_per_job": 0}, ValueError, "parallel_tasks_per_job must be at least 1"),
        ({"export_dir": None}, ValueError, "no export_dir"),
        ({"working_dir": "/home/u/my job"}, ValueError, "may not contain whitespace"),
        ({"comment": "a\nrm -rf /"}, SlurmConfigError, "comment may not contain a line break"),
        (
            {"config": CONFIG.model_copy(update={"time": "1\n#SBATCH --account=x"})},
            SlurmConfigError,
            "time may not contain a line break",
        ),
        (
            {"config": CONFIG.model_copy(update={"extra_lines": ("a\nb",)})},
            SlurmConfigError,
            "extra_lines may not contain a line break",
        ),
    ],
)
def test_refused(change, error, message):
    with pytest.raises(error, match=message):
        sbatch_script(dataclasses.replace(SPEC, **change))


def test_worker_environment_is_exported_last():
    text = sbatch_script(dataclasses.replace(SPEC, worker_env={"PYTHONPATH": "/src/my runner"}))
    head = text.split("\n\n")[0].splitlines()
    assert head[-2:] == [
        "export MODELS=/home/u/.cache/models",
        "export PYTHONPATH='/src/my runner'",
    ]
    for env, message in [
        ({"A B": "x"}, "invalid environment variable name"),
        ({"A": "x\ny"}, "line break"),
    ]:
        with pytest.raises((ValueError, SlurmConfigError), match=message):
            sbatch_script(dataclasses.replace(SPEC, worker_env=env))


@pytest.mark.parametrize(
    ("commands", "script", "lines"),
    [
        ((), "/r/1.sbatch", ["sbatch --parsable /r/1.sbatch"]),
        (
            ("module load slurm", "source /opt/env.sh"),
            "/r/1.sbatch",
            ["module load slurm", "source /opt/env.sh", "sbatch --parsable /r/1.sbatch"],
        ),
        (
            ("echo a; echo b",),
            "/r/my job/1.sbatch",
            ["echo a; echo b", "sbatch --parsable '/r/my job/1.sbatch'"],
        ),
    ],
)
def test_wrapper_runs_the_pre_submission_commands_then_sbatch(commands, script, lines):
    text = wrapper_script(commands, script)
    assert text.splitlines() == ["#!/bin/bash", "set -e", *lines]


def test_wrapper_refuses_a_command_with_a_line_break():
    with pytest.raises(SlurmConfigError, match="pre_submission_commands may not contain a line"):
        wrapper_script(["module load x\nsbatch evil.sh"], "/r/1.sbatch")
