# shellcheck shell=bash
# nix run .#kind-up: the E2E Kind cluster, ready for the suite, kept until kind-down.
# The work is scripts/e2e/setup-kind-cluster.sh's; this app pins the tools, the node image and
# supplies the Nix-built worker and server images as archives.

usage() {
  cat <<EOF
Usage: nix run .#kind-up [-- ARGS...]

Creates (or reuses) the Kind cluster ${HODEI_NIX_KIND_CLUSTER_NAME} from the pinned node image
(or, without access to Docker Hub, from one built locally), applies the test namespace and
RBAC, and loads the Nix-built worker and server images, by running
scripts/e2e/setup-kind-cluster.sh.
ARGS go to that script (e.g. --skip-image). Delete the cluster with: nix run .#kind-down

Environment (defaults in brackets):
  KIND_CLUSTER_NAME       cluster name [${HODEI_NIX_KIND_CLUSTER_NAME}]
  HODEI_KIND_NODE_SOURCE  registry (${HODEI_NIX_KIND_NODE_IMAGE}), local or auto [auto]
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
require_script scripts/e2e/setup-kind-cluster.sh
export_pins
use_nix_worker_image
use_nix_server_image

ARCHIVE_DIR="$(mktemp -d -t hodei-images.XXXXXX)"
export HODEI_WORKER_IMAGE_ARCHIVE="${ARCHIVE_DIR}/worker-image.tar"
write_worker_image "${HODEI_WORKER_IMAGE_ARCHIVE}"
export HODEI_SERVER_IMAGE_ARCHIVE="${ARCHIVE_DIR}/server-image.tar"
write_server_image "${HODEI_SERVER_IMAGE_ARCHIVE}"

step "Running scripts/e2e/setup-kind-cluster.sh"
bash scripts/e2e/setup-kind-cluster.sh "$@"
info "delete the cluster with: nix run .#kind-down"
