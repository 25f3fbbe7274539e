#!/usr/bin/env bash
# Stop the sshd that sshd-up.sh started (by its recorded pid), and only that one.
# --purge: also delete $FRACTAL_SSHD_DIR (host keys, client key, config); the login user is kept.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need_root
D=$FRACTAL_SSHD_DIR
if [ -e "$D/sshd.ours" ]; then
    pid=$(cat "$D/sshd.ours")
    if [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
        say "stopping sshd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$D/sshd.ours" "$D/sshd.pid"
fi
if [ "${1:-}" = --purge ]; then
    case "$D" in /var/lib/?*) ;; *) die "refusing to delete $D" ;; esac
    rm -rf "$D"
fi
say "done"
