#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on loopback, idempotently (as root, no systemd):
# munged, slurmdbd (accounting in a private database of the local MariaDB, so sacct works),
# slurmctld and slurmd, with an enforced memory limit and a non-root cluster user.
# Daemons it starts are recorded in $FRACTAL_SLURM_STATE/run/*.ours; slurm-down.sh stops only those.
# Already up: a no-op of about a second. See deploy/local/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need_root
T0=$(date +%s.%N)

# ---- packages
need=()
for p in slurmctld slurmd slurmdbd munge sudo; do command -v "$p" >/dev/null || need+=("$p"); done
command -v sbatch >/dev/null || need+=(slurm-client)
command -v mariadb >/dev/null || need+=(mariadb-client)
[ ${#need[@]} = 0 ] || apt_install "${need[@]}"

mkdir -p "$SLURM_CONF_DIR" "$RUN" "$LOGD" "$FRACTAL_SLURM_STATE/ctld" "$FRACTAL_SLURM_STATE/slurmd"
chmod 755 "$FRACTAL_SLURM_STATE" "$RUN" "$LOGD"
chown slurm:slurm "$FRACTAL_SLURM_STATE/ctld" "$LOGD"
NODE=$(hostname -s)
export SLURM_CONF=$SLURM_CONF_DIR/slurm.conf

# ---- slurm.conf (rewritten only when it changes; a change restarts our slurmctld/slurmd)
conf=$(cat <<CONF
# Written by deploy/local/slurm-up.sh: one node, loopback only, tuned for ~1 s job turnaround.
ClusterName=$FRACTAL_SLURM_CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$FRACTAL_SLURM_STATE/ctld
SlurmdSpoolDir=$FRACTAL_SLURM_STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups on this kind of machine: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Start batch jobs on the next 1 s pass instead of the default ~3 s ticks.
SchedulerParameters=batch_sched_delay=0,sched_interval=1,sched_min_interval=0
# Memory is a consumable resource, and enforced: the step's memory is sampled every second and a
# step over its --mem is killed (the job ends OUT_OF_MEMORY).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=200
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# keep each job's --comment in accounting (the runner tags its jobs with run and call ids)
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue -t all for an hour.
MinJobAge=3600
KillWait=1
InactiveLimit=0
MessageTimeout=10
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$FRACTAL_SLURM_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$FRACTAL_SLURM_CPUS ThreadsPerCore=1 RealMemory=$FRACTAL_SLURM_MEM_MB State=UNKNOWN
PartitionName=$FRACTAL_SLURM_PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)
conf_changed=0
if [ "$(cat "$SLURM_CONF" 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" >"$SLURM_CONF.tmp" && chmod 644 "$SLURM_CONF.tmp" && mv "$SLURM_CONF.tmp" "$SLURM_CONF"
    conf_changed=1
    say "wrote $SLURM_CONF"
fi

# ---- munged (one that already runs is reused and never stopped)
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key --force
fi
chown munge:munge /etc/munge /etc/munge/munge.key && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge && chmod 755 /run/munge
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
if ! munge_ok 2>/dev/null; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 10 munged munge_ok
    cp /run/munge/munged.pid "$RUN/munged.ours"
fi

# ---- accounting: a private database and user in the local MariaDB, and our slurmdbd
SQL=(mariadb --no-defaults -h "$FRACTAL_SLURM_DB_HOST" -P "$FRACTAL_SLURM_DB_PORT" -u root)
"${SQL[@]}" -e 'select 1' >/dev/null 2>&1 ||
    die "MariaDB does not answer on $FRACTAL_SLURM_DB_HOST:$FRACTAL_SLURM_DB_PORT as root without password (FRACTAL_SLURM_DB_HOST/PORT)"
PASSFILE=$FRACTAL_SLURM_STATE/db.pass
[ -s "$PASSFILE" ] || { (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PASSFILE"); }
DBPASS=$(cat "$PASSFILE")
DBUSER=fractal_slurmdbd
"${SQL[@]}" <<SQLTEXT
CREATE DATABASE IF NOT EXISTS \`$FRACTAL_SLURM_DB\`;
CREATE USER IF NOT EXISTS '$DBUSER'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
CREATE USER IF NOT EXISTS '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER '$DBUSER'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
ALTER USER '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON \`$FRACTAL_SLURM_DB\`.* TO '$DBUSER'@'127.0.0.1';
GRANT ALL ON \`$FRACTAL_SLURM_DB\`.* TO '$DBUSER'@'localhost';
SQLTEXT
dbd=$(cat <<CONF
# Written by deploy/local/slurm-up.sh
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGD/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=$FRACTAL_SLURM_DB_HOST
StoragePort=$FRACTAL_SLURM_DB_PORT
StorageUser=$DBUSER
StoragePass=$DBPASS
StorageLoc=$FRACTAL_SLURM_DB
CONF
)
DBD_CONF=$SLURM_CONF_DIR/slurmdbd.conf
dbd_changed=0
if [ "$(cat "$DBD_CONF" 2>/dev/null)" != "$dbd" ]; then
    (umask 077 && printf '%s\n' "$dbd" >"$DBD_CONF")
    dbd_changed=1
fi
chown slurm:slurm "$DBD_CONF" && chmod 600 "$DBD_CONF"   # slurmdbd refuses anything else
if alive "$RUN/slurmdbd.pid" slurmdbd && [ $dbd_changed = 1 ] && [ -e "$RUN/slurmdbd.ours" ]; then
    say "slurmdbd.conf changed: restarting slurmdbd"
    stop_ours "$RUN/slurmdbd.ours" slurmdbd
fi
if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
    port_open 6819 && die "port 6819 is used by a slurmdbd these scripts did not start"
    say "starting slurmdbd"
    /usr/sbin/slurmdbd   # no -f option: it reads slurmdbd.conf next to \$SLURM_CONF
    wait_for 30 "slurmdbd pid" alive "$RUN/slurmdbd.pid" slurmdbd
    cp "$RUN/slurmdbd.pid" "$RUN/slurmdbd.ours"
fi
# Never probe slurmdbd's port with a raw connect (it logs an error): ask it through sacctmgr.
wait_for 60 "slurmdbd answering" sacctmgr -n -P show cluster
sacctmgr -n -P show cluster format=cluster | grep -qx "$FRACTAL_SLURM_CLUSTER" ||
    sacctmgr -i add cluster "$FRACTAL_SLURM_CLUSTER" >/dev/null

# ---- slurmctld and slurmd
for d in slurmctld slurmd; do
    if [ $conf_changed = 1 ] && alive "$RUN/$d.pid" "$d"; then
        [ -e "$RUN/$d.ours" ] || die "slurm.conf changed but $d was not started by these scripts"
        say "slurm.conf changed: restarting $d"
        stop_ours "$RUN/$d.ours" "$d"
    fi
done
if ! alive "$RUN/slurmctld.pid" slurmctld; then
    port_open 6817 && die "port 6817 is used by a slurmctld these scripts did not start"
    say "starting slurmctld"
    /usr/sbin/slurmctld -f "$SLURM_CONF"
    wait_for 30 "slurmctld pid" alive "$RUN/slurmctld.pid" slurmctld
    cp "$RUN/slurmctld.pid" "$RUN/slurmctld.ours"
fi
wait_for 30 "slurmctld answering" scontrol ping
if ! alive "$RUN/slurmd.pid" slurmd; then
    port_open 6818 && die "port 6818 is used by a slurmd these scripts did not start"
    say "starting slurmd"
    /usr/sbin/slurmd -f "$SLURM_CONF" -N "$NODE"
    wait_for 30 "slurmd pid" alive "$RUN/slurmd.pid" slurmd
    cp "$RUN/slurmd.pid" "$RUN/slurmd.ours"
fi
end=$(($(date +%s) + 60))
while :; do
    st=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1)
    case "$st" in
        idle | mixed | allocated | completing) break ;;
        down* | drain* | fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ "$(date +%s)" -lt "$end" ] || { tail -20 "$LOGD/slurmctld.log" "$LOGD/slurmd.log" >&2; die "node $NODE is '$st' after 60 s"; }
    sleep 0.2
done

# ---- the non-root cluster user, and its association (accounting knows every user)
ensure_user "$FRACTAL_SLURM_USER"
ensure_user "$FRACTAL_SSH_USER"  # the slurm_ssh backend's service user (its sshd: sshd-up.sh)
for u in root "$FRACTAL_SLURM_USER" "$FRACTAL_SSH_USER"; do
    sacctmgr -n -P show user "$u" format=user | grep -qx "$u" || sacctmgr -i add user "$u" account=root >/dev/null 2>&1 || true
done

# ---- a Python for the SLURM worker that the cluster users can run (the runner's own interpreter
# may live where they cannot read, e.g. under /root): Debian's python3 with the worker's packages.
# The runner puts its own source on PYTHONPATH for the worker.
WORKER_VENV=$FRACTAL_SLURM_STATE/worker-python
if ! "$WORKER_VENV/bin/python" -c 'import cloudpickle, psutil, pydantic' 2>/dev/null; then
    [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || apt_install python3 python3-venv
    say "creating the worker Python $WORKER_VENV"
    rm -rf "$WORKER_VENV"
    /usr/bin/python3 -m venv "$WORKER_VENV"
    "$WORKER_VENV/bin/python" -m pip install --quiet --disable-pip-version-check $FRACTAL_SLURM_WORKER_PACKAGES \
        >"$LOGD/worker-pip.log" 2>&1 || { tail -20 "$LOGD/worker-pip.log" >&2; die "cannot install the worker's packages"; }
fi
chmod -R a+rX "$WORKER_VENV"

# ---- smoke job, as the cluster user (sbatch --wait exits with the job's exit code)
sudo --set-home --non-interactive -u "$FRACTAL_SLURM_USER" \
    sbatch --wait --quiet -J fractal-deploy-smoke -D /tmp -o /dev/null --mem=20M --wrap true ||
    die "smoke job failed (logs in $LOGD)"
say "SLURM up ($NODE, ${FRACTAL_SLURM_CPUS} CPUs, ${FRACTAL_SLURM_MEM_MB} MB) in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N)-$T0}") s"
