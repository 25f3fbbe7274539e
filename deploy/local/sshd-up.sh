#!/usr/bin/env bash
# Start a private sshd on 127.0.0.1:$FRACTAL_SSHD_PORT (the cluster's "login node" for slurm_ssh),
# idempotently: key-only logins for $FRACTAL_SSH_USER with a generated client key, its own config,
# host keys, pid file and log under $FRACTAL_SSHD_DIR. sshd-down.sh stops only this sshd.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need_root
D=$FRACTAL_SSHD_DIR
[ -x /usr/sbin/sshd ] && command -v ssh >/dev/null || apt_install openssh-server openssh-client
mkdir -p "$D" /run/sshd && chmod 755 "$D" /run/sshd   # /run/sshd: privilege separation dir
for t in ed25519 rsa; do
    [ -s "$D/host_${t}_key" ] || ssh-keygen -q -t "$t" -N '' -C "fractal-sshd-host" -f "$D/host_${t}_key"
done
ensure_user "$FRACTAL_SSH_USER"
[ -s "$D/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "fractal-deploy-$FRACTAL_SSH_USER" -f "$D/id_ed25519"
chmod 600 "$D/id_ed25519"
H=$(getent passwd "$FRACTAL_SSH_USER" | cut -d: -f6)
G=$(id -gn "$FRACTAL_SSH_USER")
install -d -m 700 -o "$FRACTAL_SSH_USER" -g "$G" "$H/.ssh"
AK=$H/.ssh/authorized_keys
touch "$AK"
if ! grep -qxF "$(cat "$D/id_ed25519.pub")" "$AK"; then
    { grep -v " fractal-deploy-$FRACTAL_SSH_USER\$" "$AK" || true; cat "$D/id_ed25519.pub"; } >"$AK.new"
    mv "$AK.new" "$AK"
fi
chown "$FRACTAL_SSH_USER:$G" "$AK" && chmod 600 "$AK" && chmod go-w "$H"
for h in "[127.0.0.1]:$FRACTAL_SSHD_PORT" "[localhost]:$FRACTAL_SSHD_PORT"; do
    for t in ed25519 rsa; do echo "$h $(cut -d' ' -f1,2 "$D/host_${t}_key.pub")"; done
done >"$D/known_hosts"
cfg=$(cat <<CONF
# Written by deploy/local/sshd-up.sh: loopback only, key-only logins.
Port $FRACTAL_SSHD_PORT
ListenAddress 127.0.0.1
HostKey $D/host_ed25519_key
HostKey $D/host_rsa_key
PidFile $D/sshd.pid
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
# with UsePAM no, sshd refuses even key logins to accounts whose password is locked (useradd's default)
UsePAM yes
PermitRootLogin no
StrictModes yes
UseDNS no
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
LoginGraceTime 30
ClientAliveInterval 30
LogLevel VERBOSE
Subsystem sftp internal-sftp
CONF
)
changed=0
if [ "$(cat "$D/sshd_config" 2>/dev/null)" != "$cfg" ]; then
    printf '%s\n' "$cfg" >"$D/sshd_config" && chmod 644 "$D/sshd_config" && changed=1
fi
/usr/sbin/sshd -t -f "$D/sshd_config"
sshd_alive() { [ -s "$D/sshd.pid" ] && [ "$(readlink "/proc/$(cat "$D/sshd.pid")/exe" 2>/dev/null)" = /usr/sbin/sshd ]; }
if sshd_alive && [ $changed = 1 ]; then
    say "config changed: reloading sshd"
    kill -HUP "$(cat "$D/sshd.pid")" && sleep 0.5
fi
if ! sshd_alive; then
    port_open "$FRACTAL_SSHD_PORT" && die "127.0.0.1:$FRACTAL_SSHD_PORT is used by something else (FRACTAL_SSHD_PORT)"
    say "starting sshd on 127.0.0.1:$FRACTAL_SSHD_PORT"
    /usr/sbin/sshd -f "$D/sshd_config" -E "$D/sshd.log"
    wait_for 10 sshd sshd_alive
    cp "$D/sshd.pid" "$D/sshd.ours"
fi
SSH=(ssh -p "$FRACTAL_SSHD_PORT" -i "$D/id_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes
    -o UserKnownHostsFile="$D/known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=10)
out=""
for _ in $(seq 50); do out=$("${SSH[@]}" "$FRACTAL_SSH_USER@127.0.0.1" 'echo login-ok $(whoami)' 2>/dev/null) && break; sleep 0.1; done
[ "$out" = "login-ok $FRACTAL_SSH_USER" ] || { tail "$D/sshd.log" >&2; die "test login as $FRACTAL_SSH_USER failed"; }
say "sshd up: ssh -p $FRACTAL_SSHD_PORT -i $D/id_ed25519 -o UserKnownHostsFile=$D/known_hosts $FRACTAL_SSH_USER@127.0.0.1"
