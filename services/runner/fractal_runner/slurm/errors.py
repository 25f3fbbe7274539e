"""Errors of the SLURM configuration and batching rules; their messages are meant for the user."""

__all__ = ["SlurmConfigError", "SlurmHeuristicsError"]


class SlurmConfigError(ValueError):
    """The SLURM config file, a task's meta or the job's worker_init is invalid."""


class SlurmHeuristicsError(ValueError):
    """No batching of a task's calls into SLURM jobs fits the configured limits (reference §7.4)."""
