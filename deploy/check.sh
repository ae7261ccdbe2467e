#!/usr/bin/env bash
# Checks deploy/ and hsm-config/examples/ without a container engine or a cluster:
#   1. systemd: `systemd-analyze verify` of deploy/systemd/kmsd.service (any warning about the
#      unit fails), and `systemd-analyze security --offline` of it (records the exposure
#      score; fails above $KMS_UNIT_MAX_EXPOSURE, default 2.0).
#   2. Kubernetes: the files kustomization.yaml lists exist; every manifest validates against
#      the official JSON schemas of Kubernetes $KMS_K8S_VERSION (default 1.31.0) in strict
#      mode (unknown fields are errors); the StatefulSet, Services, Secrets and kmsd.toml
#      agree with each other and with the image (deploy/check.py kubernetes).
#   3. Dockerfile: hadolint, then deploy/check.py dockerfile (COPY sources exist and are in
#      the build context, the binaries built are real [[bin]] targets and are the ones
#      copied, the images run as a numeric non-root uid).
#   4. Configurations: every *.toml under deploy/ and hsm-config/examples/ parses and holds
#      no PIN; stop timeouts exceed drain_timeout (deploy/check.py configs). kmsd's own
#      parser checks the same files in a unit test of crates/kms-server/src/config.rs.
#
# The linters come from PyPI, pinned in deploy/check-requirements.txt, into a virtualenv in
# $KMS_DEPLOY_VENV (default ~/.cache/kms/deploy-venv), made once and remade when that file
# changes. Needs python3-venv and systemd (deploy/install-deps.sh installs them). Exits
# non-zero if any check fails, after running them all.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${KMS_DEPLOY_VENV:-$HOME/.cache/kms/deploy-venv}
k8s_version=${KMS_K8S_VERSION:-1.31.0}
max_exposure=${KMS_UNIT_MAX_EXPOSURE:-2.0}
requirements=deploy/check-requirements.txt
unit=deploy/systemd/kmsd.service

failed=()
fail() { failed+=("$1"); echo "  FAIL $1"; }

# ---- The virtualenv ---------------------------------------------------------------------------
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "check: installing the linters into $venv (once)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input --no-deps \
        -r "$requirements"
    echo "$want" > "$stamp"
fi
py="$venv/bin/python"

# ---- 1. systemd --------------------------------------------------------------------------------
echo "systemd unit ($unit):"
if ! command -v systemd-analyze >/dev/null; then
    fail "systemd-analyze not found: run deploy/install-deps.sh"
else
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    # `verify` insists that ExecStart='s binary exists. What it checks is the unit, not kmsd,
    # so a copy of the unit points at a stub in the scratch directory: the check needs no
    # build and no installed kmsd.
    printf '#!/bin/sh\nexit 0\n' > "$scratch/kmsd"
    chmod +x "$scratch/kmsd"
    sed "s|^ExecStart=/usr/local/bin/kmsd |ExecStart=$scratch/kmsd |" "$unit" > "$scratch/kmsd.service"
    grep -q "^ExecStart=$scratch/kmsd " "$scratch/kmsd.service" ||
        fail "ExecStart= does not start with /usr/local/bin/kmsd"
    if output=$(systemd-analyze verify "$scratch/kmsd.service" 2>&1) && [ -z "$output" ]; then
        echo "  ok   systemd-analyze verify: no warnings"
    else
        printf '%s\n' "$output" | sed 's/^/       /'
        fail "systemd-analyze verify"
    fi
    # --threshold counts in tenths of the printed score (0 to 100).
    threshold=$(awk -v e="$max_exposure" 'BEGIN { printf "%d", e * 10 }')
    if score=$(systemd-analyze security --offline=yes --threshold="$threshold" \
                   "$scratch/kmsd.service" 2>&1 | grep -o 'Overall exposure level.*'); then
        echo "  ok   systemd-analyze security: $score (threshold $max_exposure)"
    else
        systemd-analyze security --offline=yes "$scratch/kmsd.service" 2>&1 | grep -v '^✓' | sed 's/^/       /'
        fail "systemd-analyze security: exposure above $max_exposure"
    fi
fi

# ---- 2. Kubernetes ------------------------------------------------------------------------------
"$py" deploy/check.py kubernetes || fail "deploy/check.py kubernetes"
echo "Kubernetes schemas (v$k8s_version, strict):"
manifests=$("$py" -c '
import pathlib, yaml
k = pathlib.Path("deploy/kubernetes")
listed = yaml.safe_load((k / "kustomization.yaml").read_text()).get("resources", [])
print("\n".join(str(k / r) for r in listed + ["secret.yaml"]))')
mapfile -t manifests <<< "$manifests"
if output=$("$venv/bin/kubernetes-validate" --strict --kubernetes-version "$k8s_version" \
                "${manifests[@]}" 2>&1); then
    printf '%s\n' "$output" | sed 's/^INFO /  ok   /'
else
    printf '%s\n' "$output" | sed 's/^/       /'
    fail "kubernetes-validate"
fi

# ---- 3. Dockerfile ------------------------------------------------------------------------------
echo "hadolint (deploy/Dockerfile):"
if "$venv/bin/hadolint" deploy/Dockerfile; then
    echo "  ok   hadolint $("$venv/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -n1): no findings"
else
    fail "hadolint"
fi
"$py" deploy/check.py dockerfile || fail "deploy/check.py dockerfile"

# ---- 4. Configurations ------------------------------------------------------------------------
"$py" deploy/check.py configs || fail "deploy/check.py configs"

if [ ${#failed[@]} -gt 0 ]; then
    echo "deploy check: ${#failed[@]} failed: ${failed[*]}"
    exit 1
fi
echo "deploy check: all passed"
