#!/usr/bin/env bash
# One command from a fresh clone to a running kmsd on a local SoftHSM2 token:
# installs what is missing, creates the token and data dir under .dev/, builds, and runs
# kmsd on 127.0.0.1:50051 in the foreground (Ctrl-C stops it; running it again reuses
# the token and the keys).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kms/target}

deploy/install-deps.sh
# Rust from rustup, when install-deps.sh just installed it.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
hsm-config/init-token.sh .dev/hsm kms-dev
mkdir -p .dev/data
cargo build --locked --bins
echo "dev: kmsctl is $CARGO_TARGET_DIR/debug/kmsctl"
SOFTHSM2_CONF="$root/.dev/hsm/softhsm2.conf" exec "$CARGO_TARGET_DIR/debug/kmsd" \
    --listen "${KMS_LISTEN:-127.0.0.1:50051}" \
    --data-dir .dev/data \
    --pkcs11-module "$(hsm-config/find-module.sh)" \
    --token-label kms-dev \
    --pin-file .dev/hsm/pin
