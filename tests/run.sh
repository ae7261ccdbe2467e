#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (warnings are errors), the unit tests, the
# SoftHSM2 tests and the end-to-end tests (real kmsd processes on fresh tokens).
# Installs what is missing first. The build goes to $CARGO_TARGET_DIR
# (default ~/.cache/kms/target) so later runs reuse it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kms/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

deploy/install-deps.sh
# Rust from rustup, when install-deps.sh just installed it.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
TEST_PKCS11_MODULE=$(hsm-config/find-module.sh)
export TEST_PKCS11_MODULE
# A scratch SoftHSM2 store for the in-process HSM tests (each makes its own token in it);
# the end-to-end tests give every kmsd a token directory of its own.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/tokens"
sed "s|@TOKENDIR@|$scratch/tokens|" hsm-config/softhsm2.conf.template > "$scratch/softhsm2.conf"
export SOFTHSM2_CONF="$scratch/softhsm2.conf"

echo "== deploy/check.sh (systemd unit, Kubernetes manifests, Dockerfile, example configs)"
deploy/check.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (kmsd, kmsctl for the end-to-end tests)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee "$scratch/test.log"
echo "== test vectors against the independent Python implementation"
python3 tests/data/symmetric_default_v1.py
echo "== constant-time checks (dudect-style; the controls must be caught)"
cargo build --release --locked -p kms-bench --bin kms-ct
"$CARGO_TARGET_DIR/release/kms-ct" --samples 200000
echo "== fuzz targets: format, clippy, and a short run of each (fuzz/run.sh all 3600 for the long run)"
cargo fmt --manifest-path fuzz/Cargo.toml --check
CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/kms/fuzz-target} \
    cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
fuzz/run.sh smoke "${KMS_FUZZ_SMOKE_SECONDS:-10}"

# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' \
    "$scratch/test.log"
