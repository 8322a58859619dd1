#!/usr/bin/env bash
# Installs the x402 peer kit's dependencies. Idempotent; run from any directory.
#
#   - npm packages (anvil binary + solcjs) into local/x402/node_modules, via `npm ci`,
#     only when node_modules is missing or package-lock.json changed;
#   - the Python venv <repo>/.venv-x402 from local/x402/requirements.txt, only when
#     the venv is missing/broken or requirements.txt changed.
#
# Progress goes to stderr (one line per step). The only thing printed on stdout is,
# at the end, the path of the venv's python.
#
# Environment:
#   X402_PYTHON   interpreter used to create the venv (default: python3, needs >= 3.10)
set -euo pipefail

KIT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$KIT_DIR/../.." && pwd)"
VENV_DIR="$REPO_DIR/.venv-x402"
VENV_PY="$VENV_DIR/bin/python"
BASE_PY="${X402_PYTHON:-python3}"

NPM_STAMP="$KIT_DIR/node_modules/.x402-setup-lock.sha256"
VENV_STAMP="$VENV_DIR/.x402-setup-requirements.sha256"

T0=$(date +%s%N)
log() {
    local ms=$((($(date +%s%N) - T0) / 1000000))
    printf '[x402 setup +%d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*" >&2
}
die() {
    log "ERROR: $*"
    exit 1
}
# Runs a command with its output captured; shows the output (on stderr) only on failure.
quiet() {
    local out rc=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        cat "$out" >&2
        rm -f "$out"
        die "command failed (exit $rc): $*"
    fi
    rm -f "$out"
}
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
write_stamp() { printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }

# Serialise concurrent runs (two test jobs starting at once).
mkdir -p "$KIT_DIR/.cache"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$KIT_DIR/.cache/setup.lock"
    flock 9
fi

# ---------------------------------------------------------------- npm packages
command -v node >/dev/null 2>&1 || die "node not found (Node >= 20 needed)"
command -v npm >/dev/null 2>&1 || die "npm not found"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node >= 20 needed (found $(node --version))"

lock_sha=$(sha_of "$KIT_DIR/package-lock.json")
if [ -d "$KIT_DIR/node_modules" ] && [ -f "$NPM_STAMP" ] && [ "$(cat "$NPM_STAMP")" = "$lock_sha" ]; then
    log "npm packages up to date (lock ${lock_sha:0:12})"
else
    log "npm ci in $KIT_DIR (lock ${lock_sha:0:12}) ..."
    # `--include=optional`: the anvil binary ships in an optional, per-platform dependency.
    (cd "$KIT_DIR" && quiet npm ci --no-audit --no-fund --include=optional)
    write_stamp "$NPM_STAMP" "$lock_sha"
    log "npm packages installed"
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) anvil_pkg=anvil-linux-amd64 ;;
    Linux-aarch64 | Linux-arm64) anvil_pkg=anvil-linux-arm64 ;;
    Darwin-x86_64) anvil_pkg=anvil-darwin-amd64 ;;
    Darwin-arm64) anvil_pkg=anvil-darwin-arm64 ;;
    *) die "unsupported platform $(uname -s)-$(uname -m)" ;;
esac
[ -x "$KIT_DIR/node_modules/@foundry-rs/$anvil_pkg/bin/anvil" ] ||
    die "anvil binary missing from node_modules/@foundry-rs/$anvil_pkg (optional deps omitted?)"
[ -f "$KIT_DIR/node_modules/solc/solc.js" ] || die "solcjs missing from node_modules/solc"

# ----------------------------------------------------------------- Python venv
req_sha=$(sha_of "$KIT_DIR/requirements.txt")
if [ -x "$VENV_PY" ] && "$VENV_PY" -c '' 2>/dev/null && [ -f "$VENV_STAMP" ] &&
    [ "$(cat "$VENV_STAMP")" = "$req_sha" ]; then
    log "venv up to date: $VENV_DIR (requirements ${req_sha:0:12})"
else
    command -v "$BASE_PY" >/dev/null 2>&1 || die "$BASE_PY not found"
    "$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
        die "Python >= 3.10 needed ($BASE_PY is $("$BASE_PY" --version 2>&1))"
    log "creating venv $VENV_DIR with $("$BASE_PY" --version 2>&1) ..."
    # --clear: a refresh starts from an empty venv so removed pins do not linger.
    quiet "$BASE_PY" -m venv --clear "$VENV_DIR"
    # The repo's .gitignore covers .venv/ but not this directory; keep git quiet about it.
    printf '*\n' >"$VENV_DIR/.gitignore"
    log "pip install -r requirements.txt ..."
    quiet "$VENV_PY" -m pip install --disable-pip-version-check --no-input -q \
        -r "$KIT_DIR/requirements.txt"
    quiet "$VENV_PY" -c 'import x402, x402.mechanisms.evm.exact, x402.http.clients.requests, eth_account, web3'
    write_stamp "$VENV_STAMP" "$req_sha"
    log "venv ready"
fi

log "done"
echo "$VENV_PY"
