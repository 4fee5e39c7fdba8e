# shellcheck shell=bash
# nix run .#e2e-k8s: the Kubernetes E2E suite on a Kind cluster, with every version pinned.
# The work is scripts/e2e/run-kubernetes-e2e.sh's (the same script CI and non-Nix users run);
# this app supplies the pinned tools, node image and Nix-built worker image.

usage() {
  cat <<EOF
Usage: nix run .#e2e-k8s [-- ARGS...]

Runs the Kubernetes E2E suite against a Kind cluster:
  1. checks that the host's Docker daemon answers (the flake pins only the docker client);
  2. writes the Nix-built worker image ${HODEI_NIX_WORKER_IMAGE} and server image
     ${HODEI_NIX_SERVER_IMAGE} to temporary archives;
  3. runs scripts/e2e/run-kubernetes-e2e.sh: it creates or reuses the cluster from the pinned
     node image (or, without access to Docker Hub, from one it builds locally), applies
     deploy/kubernetes/*-test.yaml, loads the archives (kind load image-archive), runs the suite
     with cargo nextest, and cleans up on every exit path, deleting the cluster unless
     HODEI_KEEP_CLUSTER=1.
ARGS go to run-kubernetes-e2e.sh.

Environment (defaults in brackets):
  HODEI_KEEP_CLUSTER      1: keep the cluster afterwards; 'nix run .#kind-down' deletes it [0]
  KIND_CLUSTER_NAME       cluster name [${HODEI_NIX_KIND_CLUSTER_NAME}]
  HODEI_KIND_NODE_SOURCE  registry: ${HODEI_NIX_KIND_NODE_IMAGE};
                          local: built by scripts/e2e/build-kind-node-image.sh (root, Go,
                          debootstrap, containerd from the host); auto: registry if Docker Hub
                          answers, else local [auto]
  KIND_NODE_IMAGE         any other node image, used as it is
  HODEI_REPO              checkout to run in [the git work tree around the current directory]
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi

ARCHIVE_DIR=""
cleanup() {
  if [[ -n "${ARCHIVE_DIR}" ]]; then
    rm -rf "${ARCHIVE_DIR}"
  fi
  remove_source_copy
}
trap cleanup EXIT

check_docker
enter_checkout
require_script scripts/e2e/run-kubernetes-e2e.sh
require_script scripts/e2e/cleanup-kind.sh
export_pins
export HODEI_PG_BIN="${HODEI_PG_BIN:-${HODEI_NIX_PG_BIN}}"
use_nix_worker_image
use_nix_server_image

ARCHIVE_DIR="$(mktemp -d -t hodei-images.XXXXXX)"
export HODEI_WORKER_IMAGE_ARCHIVE="${ARCHIVE_DIR}/worker-image.tar"
write_worker_image "${HODEI_WORKER_IMAGE_ARCHIVE}"
export HODEI_SERVER_IMAGE_ARCHIVE="${ARCHIVE_DIR}/server-image.tar"
write_server_image "${HODEI_SERVER_IMAGE_ARCHIVE}"

step "Running scripts/e2e/run-kubernetes-e2e.sh on the Kind cluster ${KIND_CLUSTER_NAME}"
status=0
bash scripts/e2e/run-kubernetes-e2e.sh "$@" || status=$?

# The script cleans up in its own trap. A script killed by a signal it cannot trap (SIGKILL,
# e.g. a CI timeout) never ran that trap, so clean up for it here; the cleanup script is
# idempotent and itself honours HODEI_KEEP_CLUSTER.
if ((status > 128)); then
  warn "run-kubernetes-e2e.sh was stopped by signal $((status - 128)); running scripts/e2e/cleanup-kind.sh for it"
  bash scripts/e2e/cleanup-kind.sh ||
    warn "cleanup-kind.sh failed; delete the cluster with: nix run .#kind-down"
fi
if ((status != 0)); then
  exit "${status}"
fi
