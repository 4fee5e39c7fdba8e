#!/usr/bin/env bash
# Removes what the Kubernetes E2E suite leaves behind: the worker Pods and token Secrets in the
# test namespace, then the Kind cluster itself unless HODEI_KEEP_CLUSTER=1.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"

CLUSTER="${KIND_CLUSTER_NAME:-hodei-e2e}"
NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"
KUBECONFIG_FILE="${HODEI_E2E_KUBECONFIG:-${REPO_ROOT}/target/e2e/kubeconfig}"
ENV_FILE="$(dirname "${KUBECONFIG_FILE}")/kind.env"
KEEP_CLUSTER="${HODEI_KEEP_CLUSTER:-0}"
# Exactly what the provider labels (crates/providers/src/labels.rs).
SELECTOR="app.kubernetes.io/managed-by=hodei"

CURRENT_STEP="start"

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--keep-cluster] [--help]

Deletes the Pods and Secrets labelled ${SELECTOR} in namespace ${NAMESPACE}
of the Kind cluster ${CLUSTER}, then deletes the cluster and its kubeconfig file. Safe to run
again, and when the cluster does not exist.

  --keep-cluster   only delete the worker Pods and Secrets (same as HODEI_KEEP_CLUSTER=1)
  -h, --help       this text

Environment (defaults in brackets):
  KIND_CLUSTER_NAME         cluster name [hodei-e2e]
  HODEI_K8S_TEST_NAMESPACE  test namespace [hodei-e2e]
  HODEI_KEEP_CLUSTER        1: keep the cluster for the next run [0]
  HODEI_E2E_KUBECONFIG      the cluster's kubeconfig file [<repo>/target/e2e/kubeconfig]
USAGE
}

step() {
  CURRENT_STEP="$*"
  printf '\n==> %s\n' "$*"
}
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

on_exit() {
  local status=$?
  if ((status != 0)); then
    printf '\nFAILED during: %s\n' "${CURRENT_STEP}" >&2
    printf "Run this script again; 'kind delete cluster --name %s' removes the cluster in any state.\n" "${CLUSTER}" >&2
  fi
}
trap on_exit EXIT

kctl() { kubectl --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

require_tools() {
  local missing=0
  if ! command -v kind >/dev/null 2>&1; then
    warn "kind is missing: 'go install sigs.k8s.io/kind@latest', a release binary (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), or 'nix develop'"
    missing=1
  fi
  if ! command -v kubectl >/dev/null 2>&1; then
    warn "kubectl is missing: https://kubernetes.io/docs/tasks/tools/ or 'nix develop'"
    missing=1
  fi
  if ! command -v docker >/dev/null 2>&1; then
    warn "docker is missing: Kind clusters are Docker containers; install Docker Engine or Docker Desktop"
    missing=1
  fi
  ((missing == 0)) || die "install the tools above and run this script again"
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx -- "${CLUSTER}"
}

while (($#)); do
  case "$1" in
    --keep-cluster) KEEP_CLUSTER=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown argument: $1"
      ;;
  esac
  shift
done

step "Checking tools"
require_tools

if ! cluster_exists; then
  step "Nothing to do: no Kind cluster named ${CLUSTER}"
  rm -f "${KUBECONFIG_FILE}" "${ENV_FILE}"
  exit 0
fi

step "Deleting worker Pods and Secrets (${SELECTOR}) in namespace ${NAMESPACE}"
mkdir -p "$(dirname "${KUBECONFIG_FILE}")"
kind export kubeconfig --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}"
if ! kctl get --raw /readyz >/dev/null 2>&1; then
  warn "the API server of ${CLUSTER} does not answer; skipping to the cluster deletion"
elif kctl get namespace "${NAMESPACE}" >/dev/null 2>&1; then
  info "before: $(kctl -n "${NAMESPACE}" get pods,secrets -l "${SELECTOR}" -o name | wc -l) objects"
  kctl -n "${NAMESPACE}" delete pods,secrets -l "${SELECTOR}" \
    --ignore-not-found --wait --timeout=120s
  left="$(kctl -n "${NAMESPACE}" get pods,secrets -l "${SELECTOR}" -o name)"
  if [[ -n "${left}" ]]; then
    # Pods on a node that stopped answering never finish terminating; say which, then go on:
    # deleting the cluster removes them anyway.
    warn "still present after 120s:"$'\n'"${left}"
  else
    info "no worker Pods or Secrets left"
  fi
else
  info "namespace ${NAMESPACE} does not exist"
fi

if [[ "${KEEP_CLUSTER}" == "1" ]]; then
  step "Keeping the cluster ${CLUSTER} (HODEI_KEEP_CLUSTER=1)"
  info "kubeconfig: ${KUBECONFIG_FILE}"
  exit 0
fi

step "Deleting the Kind cluster ${CLUSTER}"
kind delete cluster --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}"
rm -f "${KUBECONFIG_FILE}" "${ENV_FILE}"
info "cluster, kubeconfig and env file removed"
