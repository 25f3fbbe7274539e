#!/usr/bin/env bash
# Stop the SLURM daemons that slurm-up.sh started (recorded in $FRACTAL_SLURM_STATE/run/*.ours),
# and only those: a munged or MariaDB someone else runs is left alone.
# --purge: first cancel every job, afterwards delete the state dir and drop the private database.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need_root
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1
if [ $PURGE = 1 ] && [ -e "$RUN/slurmctld.ours" ]; then
    scancel --quiet --state=PENDING,RUNNING,SUSPENDED 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
fi
# compute node first, then the controller, accounting and authentication
for d in slurmd slurmctld slurmdbd munged; do stop_ours "$RUN/$d.ours" "$d"; done
if [ $PURGE = 1 ]; then
    case "$FRACTAL_SLURM_STATE" in /var/lib/?*) ;; *) die "refusing to delete $FRACTAL_SLURM_STATE" ;; esac
    mariadb --no-defaults -h "$FRACTAL_SLURM_DB_HOST" -P "$FRACTAL_SLURM_DB_PORT" -u root \
        -e "DROP DATABASE IF EXISTS \`$FRACTAL_SLURM_DB\`" || true
    say "deleting $FRACTAL_SLURM_STATE"
    rm -rf "$FRACTAL_SLURM_STATE"
fi
say "done"
