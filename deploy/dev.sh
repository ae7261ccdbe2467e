#!/usr/bin/env bash
# One command from a fresh clone to a running kmsd on a local SoftHSM2 token:
# installs what is missing, creates the token and data dir under .dev/, builds, and runs
# kmsd on 127.0.0.1:50051 in the foreground (Ctrl-C stops it; running it again reuses
# the token and the keys).
#
#   deploy/dev.sh          --dev mode: no TLS, every caller is the administrator `dev`
#   deploy/dev.sh --tls    mutual TLS with a local CA made by `kmsctl dev-pki` in .dev/pki:
#                          admin.pem is the administrator spiffe://kms.local/admin,
#                          app.pem is spiffe://kms.local/app
# Further arguments go to kmsd.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kms/target}

mode=(--dev)
if [ "${1:-}" = "--tls" ]; then
    shift
    mode=()
fi

deploy/install-deps.sh
# Rust from rustup, when install-deps.sh just installed it.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
hsm-config/init-token.sh .dev/hsm kms-dev
mkdir -p .dev/data
cargo build --locked --bins
kmsctl="$CARGO_TARGET_DIR/debug/kmsctl"
echo "dev: kmsctl is $kmsctl"
if [ ${#mode[@]} -eq 0 ]; then
    [ -f .dev/pki/admin.pem ] || "$kmsctl" dev-pki --dir .dev/pki \
        --client admin=spiffe://kms.local/admin --client app=spiffe://kms.local/app
    mode=(--tls-cert .dev/pki/server.pem --tls-key .dev/pki/server-key.pem
          --tls-client-ca .dev/pki/ca.pem --administrator spiffe://kms.local/admin)
    echo "dev: mutual TLS; certificates in .dev/pki (admin.pem, app.pem)"
fi
SOFTHSM2_CONF="$root/.dev/hsm/softhsm2.conf" exec "$CARGO_TARGET_DIR/debug/kmsd" \
    --listen "${KMS_LISTEN:-127.0.0.1:50051}" \
    --data-dir .dev/data \
    --pkcs11-module "$(hsm-config/find-module.sh)" \
    --token-label kms-dev \
    --pin-file .dev/hsm/pin \
    "${mode[@]}" "$@"
