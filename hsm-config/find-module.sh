#!/usr/bin/env bash
# Prints the path of the SoftHSM2 PKCS#11 module (TEST_PKCS11_MODULE wins when set).
set -euo pipefail
for m in "${TEST_PKCS11_MODULE:-}" /usr/lib/softhsm/libsofthsm2.so \
         /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -n "$m" ] && [ -f "$m" ]; then echo "$m"; exit 0; fi
done
echo "find-module: libsofthsm2.so not found: run deploy/install-deps.sh" >&2
exit 1
