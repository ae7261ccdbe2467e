#!/usr/bin/env bash
# Key count against the key hierarchy: fills a fresh kmsd with N keys in one key storage, then
# counts the token's objects and times a restart until kmsd listens (serves) and until its
# startup work (reconciliation, due work; in the background past --startup-budget) is done.
#   deploy/bench-startup.sh wrapped 1000000
#   deploy/bench-startup.sh token 100000
# With KMS_BENCH_ENCRYPT=1 it then measures Encrypt of 4 KiB at 1 and 16 clients, 5 s each, in
# the restarted kmsd: on one hot key, and spread over every key of the store (`--spread`: with
# more keys than the unwrapped cache holds, nearly every call unwraps a version first).
# Uses the kmsd and kms-bench of $KMS_BIN_DIR (default: the debug build in
# $CARGO_TARGET_DIR, ~/.cache/kms/target); build them first (`cargo build --bins`).
set -euo pipefail
storage=${1:?usage: bench-startup.sh wrapped|token KEYS}
keys=${2:?usage: bench-startup.sh wrapped|token KEYS}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${KMS_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/kms/target}/debug}
module=${KMS_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
"$root/hsm-config/init-token.sh" "$work/hsm" bench >/dev/null
export SOFTHSM2_CONF=$work/hsm/softhsm2.conf
args=(--dev --listen 127.0.0.1:0 --data-dir "$work/data" --pkcs11-module "$module"
    --token-label bench --pin-file "$work/hsm/pin" --key-storage "$storage"
    --max-keys 2000000 --rate-limit-per-principal 0
    --key-generation-rate-per-principal 0 --max-concurrent-key-generations 64)

# Starts kmsd and sets $address once it listens (at most 10 minutes).
start() {
    "$bin/kmsd" "${args[@]}" >"$work/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 12000); do
        if grep -q "kmsd listening" "$work/log"; then
            address=$(grep -o 'address=[0-9.:]*' "$work/log" | head -1 | cut -d= -f2)
            return
        fi
        sleep 0.05
    done
    echo "bench-startup: kmsd did not start:" >&2
    cat "$work/log" >&2
    exit 1
}

stop() {
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

start
"$bin/kms-bench" --endpoint "http://$address" --populate "$keys" --concurrency 1 \
    --seconds 1 --warmup 0 --ops empty 2>/dev/null | grep "^populate:"
stop
objects=$(pkcs11-tool --module "$module" --token-label bench --login \
    --pin "$(cat "$work/hsm/pin")" --list-objects 2>/dev/null | grep -c "Object;" || true)
started=$(date +%s.%N)
start
listening=$(date +%s.%N)
until grep -q "startup work done" "$work/log"; do sleep 0.05; done
done_at=$(date +%s.%N)
printf 'storage %s, %s keys: %s token objects, restart to listening %.1f s, startup work done %.1f s\n' \
    "$storage" "$keys" "$objects" "$(echo "$listening - $started" | bc)" \
    "$(echo "$done_at - $started" | bc)"
if [ "${KMS_BENCH_ENCRYPT:-0}" = 1 ]; then
    echo "hot key:"
    "$bin/kms-bench" --endpoint "http://$address" --concurrency 1,16 --seconds 5 \
        --warmup 1 --ops encrypt 2>/dev/null | grep -i "encrypt" || true
    echo "spread over every key:"
    "$bin/kms-bench" --endpoint "http://$address" --concurrency 1,16 --seconds 5 \
        --warmup 1 --ops encrypt --spread 2>/dev/null | grep -i "encrypt\|spread" || true
fi
stop
