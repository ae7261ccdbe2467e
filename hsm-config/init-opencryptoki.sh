#!/usr/bin/env bash
# Initialises opencryptoki's soft token (Debian's opencryptoki package) for kmsd, afresh:
# a second PKCS#11 implementation beside SoftHSM2. Starts the slot daemon pkcsslotd when it
# is not running (as root, without systemd: CI containers), then re-initialises the token,
# which DESTROYS EVERY OBJECT ON IT: the soft token is one per machine, not one per directory.
#   DIR/pin      the user PIN (mode 600), for kmsd --pin-file (the soft token takes 4 to 8
#                characters)
#   DIR/so-pin   the security officer's PIN: opencryptoki's default 87654321, which this
#                script leaves as it is so that the next run can initialise the token again
#   DIR/module   the path of the PKCS#11 module, for kmsd --pkcs11-module
# Usage: hsm-config/init-opencryptoki.sh DIR [LABEL]   (LABEL defaults to kms-dev)
# OCK_SLOT names the soft token's slot (default 3, as in Debian's opencryptoki.conf).
# Runs as root, or as a member of the pkcs11 group while pkcsslotd runs; reads nothing from
# the terminal.
set -euo pipefail
dir=${1:?usage: init-opencryptoki.sh DIR [LABEL]}
label=${2:-kms-dev}
slot=${OCK_SLOT:-3}
so_pin=87654321
fail() { echo "init-opencryptoki: $*" >&2; exit 1; }

command -v pkcsslotd >/dev/null || [ -x /usr/sbin/pkcsslotd ] ||
    fail "pkcsslotd not found: run deploy/install-deps.sh (it installs opencryptoki)"
command -v pkcs11-tool >/dev/null || fail "pkcs11-tool not found: run deploy/install-deps.sh (it installs opensc)"
module=$(ls /usr/lib/*/pkcs11/libopencryptoki.so /usr/lib/*/opencryptoki/libopencryptoki.so 2>/dev/null | head -n1 || true)
[ -n "$module" ] || fail "libopencryptoki.so not found: run deploy/install-deps.sh"
export PATH="$PATH:/usr/sbin"

# One initialisation at a time on this machine.
lock_dir=/var/lock/opencryptoki
if [ ! -d "$lock_dir/swtok" ]; then
    # /var/lock is a tmpfs: after a reboot, the package's tmpfiles.d entries make these again.
    [ "$(id -u)" -eq 0 ] || fail "$lock_dir/swtok is missing; run this script as root once"
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/opencryptoki.conf
    fi
    install -d -m 0770 -g pkcs11 "$lock_dir" "$lock_dir/swtok"
fi
exec 9>"$lock_dir/kms-init.lock"
flock 9

if ! pgrep -x pkcsslotd >/dev/null; then
    [ "$(id -u)" -eq 0 ] || fail "pkcsslotd is not running; start it as root (pkcsslotd, or systemctl start pkcsslotd)"
    pkcsslotd || fail "pkcsslotd failed to start (exit $?)"
    for _ in $(seq 50); do
        pgrep -x pkcsslotd >/dev/null && break
        sleep 0.1
    done
    pgrep -x pkcsslotd >/dev/null || fail "pkcsslotd exited at start: see the system log"
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
umask 077
# 8 random hex digits: the soft token's longest PIN.
pin=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
tool() { pkcs11-tool --module "$module" --slot "$slot" "$@"; }
tool --init-token --label "$label" --so-pin "$so_pin" >/dev/null ||
    fail "cannot initialise the token in slot $slot (is its security officer's PIN still opencryptoki's default $so_pin?)"
tool --login --login-type so --so-pin "$so_pin" --init-pin --pin "$pin" >/dev/null ||
    fail "cannot set the user PIN of the token in slot $slot"
printf '%s' "$pin" > "$dir/pin"
printf '%s' "$so_pin" > "$dir/so-pin"
printf '%s\n' "$module" > "$dir/module"
echo "init-opencryptoki: initialised token '$label' in slot $slot of $module (user PIN in $dir/pin)"
