"""The reference's task-collection rules (§8) as pure functions: the grammar of every string
that reaches an installer or a shell, the environment folder's name, task sources, manifest v2
validation, the tasks built from a manifest, and the installer's command lines."""
