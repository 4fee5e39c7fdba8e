# shellcheck shell=bash
# nix run .#kind-down: deletes the E2E Kind cluster (scripts/e2e/cleanup-kind.sh does the work).

usage() {
  cat <<EOF
Usage: nix run .#kind-down [-- ARGS...]

Deletes the worker Pods and Secrets, then the Kind cluster ${HODEI_NIX_KIND_CLUSTER_NAME} and its
kubeconfig, by running scripts/e2e/cleanup-kind.sh with HODEI_KEEP_CLUSTER=0. Safe to run when
the cluster does not exist. ARGS go to that script.

Environment (defaults in brackets):
  KIND_CLUSTER_NAME  cluster name [${HODEI_NIX_KIND_CLUSTER_NAME}]
  HODEI_REPO         checkout to run in [the git work tree around the current directory]
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi

trap remove_source_copy EXIT

enter_checkout
require_script scripts/e2e/cleanup-kind.sh
use_pinned_tools
export KIND_CLUSTER_NAME="${KIND_CLUSTER_NAME:-${HODEI_NIX_KIND_CLUSTER_NAME}}"

step "Running scripts/e2e/cleanup-kind.sh for the cluster ${KIND_CLUSTER_NAME}"
HODEI_KEEP_CLUSTER=0 bash scripts/e2e/cleanup-kind.sh "$@"
