#!/usr/bin/env bash
# Is the local cluster up? Exit 0 when slurmctld answers, the node takes jobs, sacct answers and
# the private sshd lets the test user in; otherwise print what is missing and exit 1.
# Fast (well under a second when up): `make cluster` runs up.sh only when this fails.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
bad=()
command -v sbatch >/dev/null || bad+=("slurm-client not installed")
if [ ${#bad[@]} = 0 ]; then
    if ! timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
        bad+=("slurmctld does not answer")
    else
        st=$(timeout 5 sinfo -h -o %T 2>/dev/null | head -1)
        case "$st" in idle | mixed | allocated | completing) ;; *) bad+=("node state is '${st:-unknown}'") ;; esac
        timeout 5 sacct -n -X -j 1 >/dev/null 2>&1 || bad+=("sacct does not answer (slurmdbd)")
    fi
fi
id "$FRACTAL_SLURM_USER" >/dev/null 2>&1 || bad+=("no cluster user $FRACTAL_SLURM_USER")
[ -x "$FRACTAL_SLURM_STATE/worker-python/bin/python" ] || bad+=("no worker Python in $FRACTAL_SLURM_STATE/worker-python")
D=$FRACTAL_SSHD_DIR
if [ -s "$D/id_ed25519" ] && [ -s "$D/known_hosts" ]; then
    timeout 10 ssh -p "$FRACTAL_SSHD_PORT" -i "$D/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$D/known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
        "$FRACTAL_SSH_USER@127.0.0.1" true 2>/dev/null || bad+=("no ssh login to $FRACTAL_SSH_USER@127.0.0.1:$FRACTAL_SSHD_PORT")
else
    bad+=("no sshd client key in $D")
fi
if [ ${#bad[@]} = 0 ]; then
    [ "${1:-}" = -q ] || echo "cluster up"
    exit 0
fi
printf 'cluster not up: %s\n' "${bad[@]}" >&2
exit 1
