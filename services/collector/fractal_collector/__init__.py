"""The task-collection service: task packages into environments, their tasks registered."""
