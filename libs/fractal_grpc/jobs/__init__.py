"""Rules about jobs, as pure functions (per-task progress)."""
