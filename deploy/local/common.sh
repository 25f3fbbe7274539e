# Shared settings and helpers of the deploy/local scripts (sourced, not run).
# Every name can be overridden from the environment; the defaults are what the tests expect.
FRACTAL_SLURM_STATE=${FRACTAL_SLURM_STATE:-/var/lib/fractal-slurm}   # state, logs, pid files
FRACTAL_SLURM_CLUSTER=${FRACTAL_SLURM_CLUSTER:-fractal}
FRACTAL_SLURM_PARTITION=${FRACTAL_SLURM_PARTITION:-main}
FRACTAL_SLURM_CPUS=${FRACTAL_SLURM_CPUS:-8}           # advertised CPUs (more than the hardware: tests sleep)
FRACTAL_SLURM_MEM_MB=${FRACTAL_SLURM_MEM_MB:-4000}    # advertised and enforced node memory
FRACTAL_SLURM_USER=${FRACTAL_SLURM_USER:-fractal-worker}   # non-root cluster user (slurm_sudo)
FRACTAL_SLURM_DB=${FRACTAL_SLURM_DB:-fractal_slurm_acct}   # private database in the local MariaDB
FRACTAL_SLURM_DB_HOST=${FRACTAL_SLURM_DB_HOST:-127.0.0.1}
FRACTAL_SLURM_DB_PORT=${FRACTAL_SLURM_DB_PORT:-3306}
# what the worker (python -m fractal_runner.slurm.worker) imports besides the runner's own source
FRACTAL_SLURM_WORKER_PACKAGES=${FRACTAL_SLURM_WORKER_PACKAGES:-cloudpickle psutil pydantic}
FRACTAL_SSHD_DIR=${FRACTAL_SSHD_DIR:-/var/lib/fractal-sshd}
FRACTAL_SSHD_PORT=${FRACTAL_SSHD_PORT:-2222}
FRACTAL_SSH_USER=${FRACTAL_SSH_USER:-fractal-ssh}
SLURM_CONF_DIR=/etc/slurm    # the default: sudo and ssh sessions find it without SLURM_CONF
RUN=$FRACTAL_SLURM_STATE/run
LOGD=$FRACTAL_SLURM_STATE/log

say() { echo "[$(basename "$0" .sh) $(date +%H:%M:%S)] $*"; }
die() { echo "$(basename "$0" .sh): $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"; }

# runs PID NAME: the process PID runs the binary NAME (Debian's slurm binaries are NAME-wlm)
runs() {
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    case "$(basename "$(readlink "/proc/$1/exe" 2>/dev/null)")" in
        "$2" | "$2"-wlm) return 0 ;;
        *) return 1 ;;
    esac
}
# alive PIDFILE NAME
alive() { [ -s "$1" ] && runs "$(cat "$1" 2>/dev/null)" "$2"; }
# wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s
wait_for() {
    local end=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || { echo "timeout waiting for $what" >&2; return 1; }
        sleep 0.1
    done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# stop_ours MARKER NAME: stop the process recorded in MARKER (a pid file of ours), if it still runs NAME
stop_ours() {
    local marker=$1 name=$2 pid
    [ -e "$marker" ] || return 0
    pid=$(cat "$marker")
    if runs "$pid" "$name"; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { say "$name still alive: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    fi
    rm -f "$marker"
}
# apt_install PKG...: install without letting postinst scripts start distro services
apt_install() {
    local added=0 rc=0 log=/tmp/fractal-deploy-apt.log
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added=1
    fi
    say "installing: $*"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900)
    if ! "${apt[@]}" install -y --no-install-recommends "$@" >"$log" 2>&1; then
        "${apt[@]}" update -q >>"$log" 2>&1 || true
        "${apt[@]}" install -y --no-install-recommends "$@" >>"$log" 2>&1 || rc=$?
    fi
    [ $added = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || { tail -30 "$log" >&2; die "apt-get install failed (log: $log)"; }
}
ensure_user() { id "$1" >/dev/null 2>&1 || { say "creating user $1"; useradd -m -s /bin/bash "$1"; }; }
