#!/usr/bin/env bash
# Stop what up.sh started (pass --purge to also delete state, keys and the private database).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/sshd-down.sh" "$@"
"$HERE/slurm-down.sh" "$@"
