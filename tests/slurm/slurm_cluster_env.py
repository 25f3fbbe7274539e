"""Names of the local test cluster (deploy/local/common.sh has the same defaults)."""

import grp
import os
import pwd
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "deploy" / "local" / "check.sh"
CLUSTER = os.environ.get("FRACTAL_SLURM_CLUSTER", "fractal")
CLUSTER_USER = os.environ.get("FRACTAL_SLURM_USER", "fractal-worker")
POLL_INTERVAL = 0.5
STATE = Path(os.environ.get("FRACTAL_SLURM_STATE", "/var/lib/fractal-slurm"))
#: The Python the cluster user runs the worker with (deploy/local/slurm-up.sh makes it).
WORKER_PYTHON = str(STATE / "worker-python" / "bin" / "python")
#: The runner's own source, on the worker's PYTHONPATH.
RUNNER_SOURCE = str(REPO / "services" / "runner")
#: The loopback sshd of deploy/local and its service user (the slurm_ssh backend's login node).
SSHD_DIR = Path(os.environ.get("FRACTAL_SSHD_DIR", "/var/lib/fractal-sshd"))
SSHD_PORT = int(os.environ.get("FRACTAL_SSHD_PORT", "2222"))
SSH_USER = os.environ.get("FRACTAL_SSH_USER", "fractal-ssh")
SSH_PRIVATE_KEY = SSHD_DIR / "id_ed25519"


def owned_folder(user: str, prefix: str) -> Path:
    """A new folder under /tmp that ``user`` owns, readable by everybody (0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)
    path.chmod(0o755)
    return path
