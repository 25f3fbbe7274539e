"""SSH to one remote host: the project's one shared, reconnecting connection (``connection``),
used by the runner's ``slurm_ssh`` backend and by the collector over SSH."""

from fractal_grpc.settings import SlurmSshSettings
from fractal_grpc.ssh.connection import SshConnection, SshConnectionLost, SshTarget

__all__ = ["SshConnection", "SshConnectionLost", "SshTarget", "target_of"]


def target_of(settings: SlurmSshSettings) -> SshTarget:
    """The login node of the FRACTAL_SLURM_SSH_* settings (checked present by the service's
    settings class)."""
    assert settings.slurm_ssh_host is not None and settings.slurm_ssh_user is not None
    return SshTarget(
        host=settings.slurm_ssh_host,
        user=settings.slurm_ssh_user,
        port=settings.slurm_ssh_port,
        key_file=settings.slurm_ssh_private_key_path,
        known_hosts=settings.slurm_ssh_known_hosts,
    )
