# shellcheck shell=bash
# Shared helpers of the Kind scripts (scripts/e2e/*kind*.sh): paths, pinned versions, logging
# with elapsed time, and deadline-bound waiting. Sourced, never executed.
# The paths and settings below are used by the scripts that source this file:
# shellcheck disable=SC2034

LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LIB_DIR}/../../.." && pwd)"
# shellcheck source=scripts/e2e/versions.env
source "${REPO_ROOT}/scripts/e2e/versions.env"
# The flake's apps and dev shell pass the node image they pin for their kind version.
KIND_REGISTRY_NODE_IMAGE="${HODEI_KIND_REGISTRY_NODE_IMAGE:-${KIND_REGISTRY_NODE_IMAGE}}"

# Everything built from source (components, image archives, the Debian root file system) lives
# under CACHE_DIR and survives every cleanup; deleting it forces a cold build.
CACHE_DIR="${HODEI_KIND_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/hodei-kind-node}"
BIN_DIR="${CACHE_DIR}/bin"
IMAGE_DIR="${CACHE_DIR}/images"

# The locally built node image (scripts/e2e/build-kind-node-image.sh).
LOCAL_NODE_IMAGE="${HODEI_KIND_LOCAL_NODE_IMAGE:-localhost/hodei/kind-node:${KUBERNETES_VERSION}}"
# The label that records the hash of the image's inputs; an image whose label matches is current.
NODE_IMAGE_INPUTS_LABEL=io.hodei.kind-node.inputs

# Steps show the seconds since the outermost script started (.ci/run, or the first of these
# scripts), so the clocks of nested scripts continue instead of restarting at 0.
SCRIPT_STARTED=${SECONDS}
export HODEI_STEP_EPOCH="${HODEI_STEP_EPOCH:-$(date +%s)}"
CURRENT_STEP="start"

step() {
  CURRENT_STEP="$*"
  printf '\n==> [%4ss] %s\n' "$(($(date +%s) - HODEI_STEP_EPOCH))" "$*"
}
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}
indent() { sed 's/^/    /'; }

require_root() {
  ((EUID == 0)) || die "$1: run this script as root"
}

require_commands() {
  local absent=() cmd
  for cmd in "$@"; do
    command -v "${cmd}" >/dev/null 2>&1 || absent+=("${cmd}")
  done
  ((${#absent[@]} == 0)) || die "missing commands: ${absent[*]}"
}

# wait_until DESCRIPTION TIMEOUT_SECONDS COMMAND...
# Polls COMMAND every second until it succeeds; on timeout says what it waited for and fails
# (returns 1, so the caller can show diagnostics before dying).
wait_until() {
  local what=$1 timeout=$2 start=${SECONDS}
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start >= timeout)); then
      warn "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 1
  done
  info "ok: ${what} ($((SECONDS - start))s)"
}

# 0 when the capability bounding set of this process has capability $1 (CapBnd, a hex mask).
bounding_set_has() {
  local bounding
  bounding="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
  [[ -n "${bounding}" ]] && (((16#${bounding} >> $1) & 1))
}
