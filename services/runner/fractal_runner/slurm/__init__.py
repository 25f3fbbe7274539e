"""SLURM execution: the reference's SLURM config file, per-task merge, batching heuristics and
sbatch script layout (pure functions), the worker run on the compute node, and the poller."""
