# shellcheck shell=bash
# Prelude of every flake app (nix/apps.nix puts it before the app's own script).
# writeShellApplication adds the shebang, `set -o errexit -o nounset -o pipefail`, the pinned
# tools at the front of PATH, and the HODEI_NIX_* values below (runtimeEnv).

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

SOURCE_COPY=""

is_checkout() {
  [[ -f "$1/Cargo.toml" && -d "$1/crates/server" && -d "$1/scripts/e2e" ]]
}

# The scripts run cargo on the working tree: the tests build the code being edited and reuse its
# target/ directory. So the apps run in the user's checkout: HODEI_REPO if set, else the git work
# tree around the current directory, else the current directory. Outside any checkout (e.g.
# `nix run github:OWNER/REPO#e2e-k8s`) they run in a writable copy of the flake's source, which
# is removed afterwards.
enter_checkout() {
  local root=""
  if [[ -n "${HODEI_REPO:-}" ]]; then
    is_checkout "${HODEI_REPO}" ||
      die "HODEI_REPO=${HODEI_REPO} is not a hodei checkout (needs Cargo.toml, crates/server, scripts/e2e)"
    root="${HODEI_REPO}"
  elif root="$(git rev-parse --show-toplevel 2>/dev/null)" && is_checkout "${root}"; then
    :
  elif is_checkout "${PWD}"; then
    root="${PWD}"
  else
    root=""
  fi

  if [[ -n "${root}" ]]; then
    cd "${root}" || die "cannot enter ${root}"
    info "working tree: ${root}"
  else
    SOURCE_COPY="$(mktemp -d -t hodei-source.XXXXXX)"
    cp -R "${HODEI_NIX_FLAKE_SOURCE}/." "${SOURCE_COPY}"
    chmod -R u+w "${SOURCE_COPY}"
    cd "${SOURCE_COPY}" || die "cannot enter ${SOURCE_COPY}"
    info "not inside a hodei checkout: working in a copy of the flake's source, ${SOURCE_COPY}"
  fi
}

remove_source_copy() {
  if [[ -n "${SOURCE_COPY}" ]]; then
    rm -rf "${SOURCE_COPY}"
  fi
}

# The repository's scripts do the work; an app only pins tools and versions around them.
require_script() {
  [[ -f "$1" ]] || die "$1 is missing in $(pwd); is this checkout older than the flake app?"
}

check_docker() {
  step "Checking the Docker daemon (the flake pins the docker client; the daemon is the host's)"
  docker info >/dev/null 2>&1 ||
    die "the Docker daemon does not answer ('docker info' failed): start it (e.g. 'sudo systemctl start docker') and check that your user may use it"
  info "Docker engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '(version unknown)')"
}

# The scripts choose kind and kubectl by version (scripts/e2e/lib/kind.sh); the apps hand them
# the flake's, so a kind built by scripts/e2e/build-kind-node-image.sh does not replace the pin.
use_pinned_tools() {
  HODEI_KIND_BIN="${HODEI_KIND_BIN:-$(command -v kind)}"
  HODEI_KUBECTL_BIN="${HODEI_KUBECTL_BIN:-$(command -v kubectl)}"
  export HODEI_KIND_BIN HODEI_KUBECTL_BIN
}

# Exports the pinned settings the scripts read. The node image pinned for nixpkgs' kind is the
# scripts' registry image: with HODEI_KIND_NODE_SOURCE=auto (their default) it is used when
# Docker Hub answers, and otherwise the scripts build a node image locally
# (scripts/e2e/build-kind-node-image.sh, with the host's root, Go, debootstrap and containerd).
# A KIND_NODE_IMAGE given by the caller wins, with a warning.
export_pins() {
  use_pinned_tools
  export KIND_CLUSTER_NAME="${KIND_CLUSTER_NAME:-${HODEI_NIX_KIND_CLUSTER_NAME}}"
  export HODEI_KIND_REGISTRY_NODE_IMAGE="${HODEI_NIX_KIND_NODE_IMAGE}"
  if [[ -n "${KIND_NODE_IMAGE:-}" && "${KIND_NODE_IMAGE}" != "${HODEI_NIX_KIND_NODE_IMAGE}" ]]; then
    warn "KIND_NODE_IMAGE=${KIND_NODE_IMAGE} overrides the pinned ${HODEI_NIX_KIND_NODE_IMAGE}"
  fi
  info "kind $(kind version 2>/dev/null | cut -d' ' -f2 || echo '?'), kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p'), registry node image ${HODEI_NIX_KIND_NODE_IMAGE} (HODEI_KIND_NODE_SOURCE=${HODEI_KIND_NODE_SOURCE:-auto})"
}

# The image the apps load is the one Nix built, so its name is not negotiable.
use_nix_worker_image() {
  if [[ -n "${HODEI_WORKER_IMAGE:-}" && "${HODEI_WORKER_IMAGE}" != "${HODEI_NIX_WORKER_IMAGE}" ]]; then
    warn "ignoring HODEI_WORKER_IMAGE=${HODEI_WORKER_IMAGE}: the Nix-built image is ${HODEI_NIX_WORKER_IMAGE}"
  fi
  export HODEI_WORKER_IMAGE="${HODEI_NIX_WORKER_IMAGE}"
}

# Likewise for the server image deploy/kubernetes/server runs (nix/server-image.nix).
use_nix_server_image() {
  if [[ -n "${HODEI_SERVER_IMAGE:-}" && "${HODEI_SERVER_IMAGE}" != "${HODEI_NIX_SERVER_IMAGE}" ]]; then
    warn "ignoring HODEI_SERVER_IMAGE=${HODEI_SERVER_IMAGE}: the Nix-built image is ${HODEI_NIX_SERVER_IMAGE}"
  fi
  export HODEI_SERVER_IMAGE="${HODEI_NIX_SERVER_IMAGE}"
}

# Writes the Nix-built server image to the file $1 (a `docker save`-style tarball).
write_server_image() {
  step "Writing the Nix-built server image ${HODEI_NIX_SERVER_IMAGE} to $1"
  "${HODEI_NIX_SERVER_IMAGE_STREAM}" >"$1"
  info "$(du -h "$1" | cut -f1) $1"
}

# Writes the Nix-built worker image to the file $1 (a `docker save`-style tarball).
write_worker_image() {
  step "Writing the Nix-built worker image ${HODEI_NIX_WORKER_IMAGE} to $1"
  "${HODEI_NIX_WORKER_IMAGE_STREAM}" >"$1"
  info "$(du -h "$1" | cut -f1) $1"
}
