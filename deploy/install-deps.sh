#!/usr/bin/env bash
# Installs what building and testing kmsd needs on Debian 12 (or Ubuntu), when missing:
# SoftHSM2 and opencryptoki (its soft token is the second PKCS#11 implementation of the
# end-to-end tests: hsm-config/init-opencryptoki.sh), OpenSC's pkcs11-tool, libfaketime and OpenSSL (the tests check signatures and
# key wrapping with it); libclang for the RocksDB bindings; a C++ compiler; protoc with the
# well-known .proto files; Python's cryptography, grpcio and protobuf (the test vectors and
# the interop client; python3-venv for deploy/bench.sh's OpenBao and deploy/check.sh's linters);
# systemd for deploy/check.sh's systemd-analyze; Rust >= 1.88 with rustfmt and clippy
# (through rustup when there is no Rust at all); and cargo-afl (AFL++ for Rust, from crates.io)
# for fuzz/run.sh.
set -euo pipefail
min_rust=1.88
packages=(softhsm2 opencryptoki opensc libfaketime openssl libclang-dev clang build-essential protobuf-compiler libprotobuf-dev
          pkg-config python3 python3-cryptography python3-grpcio python3-protobuf python3-venv curl
          nghttp2-client
          ca-certificates systemd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# Rust: rustup's toolchain in ~/.cargo/bin, installed when there is no cargo at all.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null; then
    echo "install-deps: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal -c rustfmt -c clippy >/dev/null
    . "$HOME/.cargo/env"
fi
version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$min_rust" "$version" | sort -V | head -n1)" != "$min_rust" ]; then
    if command -v rustup >/dev/null; then
        echo "install-deps: Rust $version is older than $min_rust; updating"
        rustup update stable >/dev/null
    else
        echo "install-deps: Rust $version is older than $min_rust: install Rust with rustup (https://rustup.rs)" >&2
        exit 1
    fi
fi
if command -v rustup >/dev/null; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi

# cargo-afl: builds AFL++ and its runtime for this Rust when installed.
afl_version=0.18.2
if ! cargo afl --version 2>/dev/null | grep -q "$afl_version"; then
    echo "install-deps: installing cargo-afl $afl_version"
    cargo install cargo-afl --locked --version "$afl_version" --quiet
fi
