#!/usr/bin/env bash
# Creates a SoftHSM2 token for kmsd in DIR, once:
#   DIR/softhsm2.conf   the SoftHSM2 configuration (export SOFTHSM2_CONF=DIR/softhsm2.conf)
#   DIR/tokens/         the token store
#   DIR/pin             the user PIN (mode 600), for kmsd --pin-file
#   DIR/so-pin          the security officer's PIN (mode 600), for the domain-key ceremony
#                       (kmsctl hsm make-domain-key). A development token's convenience: on a
#                       real HSM the officer's PIN never sits on kmsd's machine.
# Usage: hsm-config/init-token.sh DIR [LABEL]   (LABEL defaults to kms-dev)
# Running it again with the same DIR and LABEL changes nothing.
set -euo pipefail
dir=${1:?usage: init-token.sh DIR [LABEL]}
label=${2:-kms-dev}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v softhsm2-util >/dev/null || { echo "init-token: softhsm2-util not found: run deploy/install-deps.sh" >&2; exit 1; }

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.template" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^ *Label: +$label *$"; then
    echo "init-token: token '$label' already exists in $dir/tokens"
    exit 0
fi
umask 077
if [ ! -s "$dir/pin" ]; then
    # 16 random hex digits; SoftHSM2 accepts PINs of 4 to 255 characters.
    od -An -N8 -tx1 /dev/urandom | tr -d ' \n' > "$dir/pin"
fi
so_pin=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
printf '%s' "$so_pin" > "$dir/so-pin"
softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$(cat "$dir/pin")" >/dev/null
echo "init-token: created token '$label' in $dir/tokens (user PIN in $dir/pin)"
