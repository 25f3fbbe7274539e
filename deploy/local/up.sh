#!/usr/bin/env bash
# Bring up the whole local test cluster: SLURM (slurm-up.sh) and the loopback sshd (sshd-up.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/slurm-up.sh"
"$HERE/sshd-up.sh"
