#!/usr/bin/env bash
# Writes the files an overlay's Secrets are generated from into <overlay>/secrets/ (never
# committed: .gitignore). Existing files are kept, so running it again changes nothing.
#
#   deploy/k8s/make-secrets.sh deploy/k8s/overlays/production
#
#   FRACTAL_DATABASE_URL      PostgreSQL URL for both services (required unless database.env exists)
#   FRACTAL_ADMIN_EMAIL       first superuser (default admin@fractal.xy); its password is random
#   FRACTAL_SSH_KEY           private key the runner (and the collector) log in to the SLURM login node
#                             with (slurm_ssh);
#                             without it a new ed25519 key pair is made and its public key printed
#   FRACTAL_SSH_KNOWN_HOSTS   known_hosts with the login node's host key (default: empty)
#
# Two Ed25519 key pairs are generated with openssl: user tokens (jwt-*.pem: api signs and
# verifies) and service tokens (service-*.pem: the runner and the collector sign, api verifies).
set -euo pipefail

overlay=${1:?usage: make-secrets.sh <overlay directory>}
[ -f "$overlay/kustomization.yaml" ] || { echo "make-secrets.sh: $overlay is not an overlay" >&2; exit 2; }
dir="$overlay/secrets"
mkdir -p "$dir"
umask 077

keypair() {  # keypair NAME: NAME-private.pem and NAME-public.pem
    if [ ! -f "$dir/$1-private.pem" ]; then
        openssl genpkey -algorithm ed25519 -out "$dir/$1-private.pem"
        rm -f "$dir/$1-public.pem"
    fi
    [ -f "$dir/$1-public.pem" ] || openssl pkey -in "$dir/$1-private.pem" -pubout -out "$dir/$1-public.pem"
}
keypair jwt
keypair service

if [ ! -f "$dir/database.env" ]; then
    url=${FRACTAL_DATABASE_URL:?"set FRACTAL_DATABASE_URL (postgresql://user:password@host:5432/db)"}
    printf 'FRACTAL_DATABASE_URL=%s\n' "$url" > "$dir/database.env"
fi

if [ ! -f "$dir/admin.env" ]; then
    password=$(openssl rand -hex 16)
    printf 'FRACTAL_DEFAULT_ADMIN_EMAIL=%s\nFRACTAL_DEFAULT_ADMIN_PASSWORD=%s\n' \
        "${FRACTAL_ADMIN_EMAIL:-admin@fractal.xy}" "$password" > "$dir/admin.env"
    echo "first superuser: ${FRACTAL_ADMIN_EMAIL:-admin@fractal.xy} / $password (in $dir/admin.env)"
fi

if [ ! -f "$dir/id_ed25519" ]; then
    if [ -n "${FRACTAL_SSH_KEY:-}" ]; then
        cp "$FRACTAL_SSH_KEY" "$dir/id_ed25519"
    else
        ssh-keygen -q -t ed25519 -N '' -C fractal-runner -f "$dir/id_ed25519"
        echo "runner's SSH public key (authorize it on the login node): $(cat "$dir/id_ed25519.pub")"
        rm -f "$dir/id_ed25519.pub"
    fi
fi
if [ ! -f "$dir/known_hosts" ]; then
    if [ -n "${FRACTAL_SSH_KNOWN_HOSTS:-}" ]; then cp "$FRACTAL_SSH_KNOWN_HOSTS" "$dir/known_hosts"
    else : > "$dir/known_hosts"; fi
fi
echo "secrets of $overlay are in $dir"
