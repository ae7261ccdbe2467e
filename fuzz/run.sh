#!/usr/bin/env bash
# Builds the fuzz targets with cargo-afl (AFL++) and runs them from the seed corpora in
# fuzz/corpus/. Needs cargo-afl (deploy/install-deps.sh installs it).
#
#   fuzz/run.sh smoke [SECONDS]     every target for SECONDS (default 10): what .ci/run does
#   fuzz/run.sh TARGET [SECONDS]    one target (default 3600 s): the long run
#   fuzz/run.sh all [SECONDS]       every target in turn (default 3600 s each)
#   fuzz/run.sh seeds               rewrite the seed corpora from inputs the project makes
#
# Prints, for each target, the executions, the edges reached and any crash or hang; exits 1
# if a target crashed or hung (the inputs are kept under $FUZZ_OUT/<target>/default/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/kms/fuzz-target}
out=${FUZZ_OUT:-$CARGO_TARGET_DIR/afl}
targets=(blob context policy audit_log audit_open config import rpc)

# AFL++ on a shared machine: no CPU pinning or frequency checks, no terminal UI, and no
# complaint about where the kernel sends core dumps.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1

build() {
    local log
    log=$(mktemp)
    if ! cargo afl build --release --locked --bins > "$log" 2>&1; then
        cat "$log" >&2
        echo "fuzz: the build failed" >&2
        exit 1
    fi
    rm -f "$log"
}

# run TARGET SECONDS: fuzzes from corpus/TARGET, then prints its figures.
run() {
    local target=$1 seconds=$2
    local dir="$out/$target"
    rm -rf "$dir"
    mkdir -p "$dir"
    # The coverage map the target needs, when it is larger than AFL++'s default (the rpc
    # target's is).
    local map_size
    map_size=$(AFL_DUMP_MAP_SIZE=1 "$CARGO_TARGET_DIR/release/$target" < /dev/null || true)
    [[ "$map_size" =~ ^[0-9]+$ ]] && [ "$map_size" -gt 65536 ] || map_size=65536
    # -t: an input running longer than 2 s is a hang; -V: stop after SECONDS.
    AFL_MAP_SIZE=$map_size cargo afl fuzz -i "corpus/$target" -o "$dir" -t 2000 -V "$seconds" \
        "$CARGO_TARGET_DIR/release/$target" > "$dir/fuzz.log" 2>&1 || {
        echo "fuzz: afl-fuzz failed on $target:" >&2
        tail -20 "$dir/fuzz.log" >&2
        return 1
    }
    local stats="$dir/default/fuzzer_stats"
    local get
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    printf 'fuzz: %-10s %10s execs in %5ss (%s/s), %5s edges (%s of the map), %s crashes, %s hangs, corpus %s\n' \
        "$target" "$(get execs_done)" "$(get run_time)" "$(get execs_per_sec)" \
        "$(get edges_found)" "$(get bitmap_cvg)" "$(get saved_crashes)" "$(get saved_hangs)" \
        "$(get corpus_count)"
    [ "$(get saved_crashes)" = 0 ] && [ "$(get saved_hangs)" = 0 ]
}

mode=${1:-smoke}
case "$mode" in
    seeds)
        build
        "$CARGO_TARGET_DIR/release/seeds"
        ;;
    smoke | all)
        seconds=${2:-$([ "$mode" = smoke ] && echo 10 || echo 3600)}
        build
        failed=0
        for target in "${targets[@]}"; do
            run "$target" "$seconds" || failed=1
        done
        exit "$failed"
        ;;
    *)
        [[ " ${targets[*]} " == *" $mode "* ]] || { echo "fuzz: no target $mode (${targets[*]})" >&2; exit 2; }
        build
        run "$mode" "${2:-3600}"
        ;;
esac
