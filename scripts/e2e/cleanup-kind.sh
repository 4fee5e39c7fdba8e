#!/usr/bin/env bash
# Removes what the Kubernetes E2E suite leaves behind: the worker Pods and token Secrets in the
# test namespace, then the Kind cluster itself (node containers and their volumes, the 'kind'
# Docker network when nothing else uses it, the kubeconfig and env files) unless
# HODEI_KEEP_CLUSTER=1, and verifies that none of it is left.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/e2e/lib/common.sh
source "${SCRIPT_DIR}/lib/common.sh"
# shellcheck source=scripts/e2e/lib/kind.sh
source "${SCRIPT_DIR}/lib/kind.sh"

CLUSTER="${KIND_CLUSTER_NAME:-hodei-e2e}"
NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"
KUBECONFIG_FILE="${HODEI_E2E_KUBECONFIG:-${REPO_ROOT}/target/e2e/kubeconfig}"
ENV_FILE="$(dirname "${KUBECONFIG_FILE}")/kind.env"
KEEP_CLUSTER="${HODEI_KEEP_CLUSTER:-0}"
# Exactly what the provider labels (crates/providers/src/labels.rs).
SELECTOR="app.kubernetes.io/managed-by=hodei"

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--keep-cluster] [--help]

Deletes the Pods and Secrets labelled ${SELECTOR} in namespace ${NAMESPACE}
of the Kind cluster ${CLUSTER}, then deletes the cluster: its node containers with their
volumes, the 'kind' Docker network if no other container is attached to it, and the
kubeconfig and env files. Ends by checking, line by line, that none of these is left (exit
status 1 otherwise). Safe to run again, and when the cluster does not exist.

  --keep-cluster   only delete the worker Pods and Secrets (same as HODEI_KEEP_CLUSTER=1)
  -h, --help       this text

Environment (defaults in brackets):
  KIND_CLUSTER_NAME         cluster name [hodei-e2e]
  HODEI_K8S_TEST_NAMESPACE  test namespace [hodei-e2e]
  HODEI_KEEP_CLUSTER        1: keep the cluster for the next run [0]
  HODEI_E2E_KUBECONFIG      the cluster's kubeconfig file [<repo>/target/e2e/kubeconfig]
  HODEI_KIND_BIN, HODEI_KUBECTL_BIN   kind and kubectl to run [see scripts/e2e/lib/kind.sh]
USAGE
}

on_exit() {
  local status=$?
  if ((status != 0)); then
    printf '\nFAILED during: %s\n' "${CURRENT_STEP}" >&2
    printf "Run this script again; 'kind delete cluster --name %s' removes the cluster in any state.\n" "${CLUSTER}" >&2
  fi
}
trap on_exit EXIT

kctl() { "${KUBECTL[@]}" --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

cluster_exists() {
  "${KIND[@]}" get clusters 2>/dev/null | grep -qx -- "${CLUSTER}"
}

delete_worker_objects() {
  mkdir -p "$(dirname "${KUBECONFIG_FILE}")"
  "${KIND[@]}" export kubeconfig --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}" >/dev/null 2>&1 || true
  if ! kctl get --raw /readyz >/dev/null 2>&1; then
    warn "the API server of ${CLUSTER} does not answer; skipping to the cluster deletion"
  elif kctl get namespace "${NAMESPACE}" >/dev/null 2>&1; then
    info "before: $(kctl -n "${NAMESPACE}" get pods,secrets -l "${SELECTOR}" -o name | wc -l) objects"
    kctl -n "${NAMESPACE}" delete pods,secrets -l "${SELECTOR}" \
      --ignore-not-found --wait --timeout=120s | indent
    local left
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
}

# The 'kind' network is shared by every Kind cluster on this engine; kind never deletes it.
# It goes when no container is attached to it any more.
remove_kind_network() {
  docker network inspect kind >/dev/null 2>&1 || {
    info "no 'kind' Docker network"
    return
  }
  local attached
  attached="$(docker network inspect kind --format '{{range .Containers}}{{.Name}} {{end}}')"
  if [[ -n "${attached// /}" ]]; then
    info "the 'kind' Docker network is still used by: ${attached}; kept"
  else
    docker network rm kind >/dev/null
    info "removed the 'kind' Docker network"
  fi
}

# NODES and VOLUMES: what the cluster had, recorded before deleting it.
NODES=()
VOLUMES=()
verify() {
  local failed=0 left name
  left="$(cluster_containers "${CLUSTER}")"
  if [[ -n "${left}" ]]; then
    warn "node containers remain: ${left//$'\n'/ }"
    failed=1
  else
    info "ok: no container labelled io.x-k8s.kind.cluster=${CLUSTER}${NODES[*]:+ (was: ${NODES[*]})}"
  fi
  for name in "${VOLUMES[@]}"; do
    if docker volume inspect "${name}" >/dev/null 2>&1; then
      warn "the node's volume ${name} remains"
      failed=1
    fi
  done
  info "ok: none of the ${#VOLUMES[@]} volume(s) of the node container(s) is left"
  if docker network inspect kind >/dev/null 2>&1; then
    local attached
    attached="$(docker network inspect kind --format '{{range .Containers}}{{.Name}} {{end}}')"
    if [[ -z "${attached// /}" ]]; then
      warn "the 'kind' Docker network remains with nothing attached"
      failed=1
    else
      info "ok: the 'kind' Docker network remains for other containers: ${attached}"
    fi
  else
    info "ok: no 'kind' Docker network"
  fi
  if cluster_exists; then
    warn "kind still lists the cluster ${CLUSTER}"
    failed=1
  else
    info "ok: kind lists no cluster ${CLUSTER}"
  fi
  for name in "${KUBECONFIG_FILE}" "${ENV_FILE}"; do
    if [[ -e "${name}" ]]; then
      warn "${name} remains"
      failed=1
    else
      info "ok: no ${name}"
    fi
  done
  return "${failed}"
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
command -v docker >/dev/null 2>&1 || die "docker is missing: Kind clusters are Docker containers"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer ('docker info' failed)"
resolve_kind_tools

if cluster_exists; then
  step "Deleting worker Pods and Secrets (${SELECTOR}) in namespace ${NAMESPACE}"
  delete_worker_objects
  if [[ "${KEEP_CLUSTER}" == "1" ]]; then
    step "Keeping the cluster ${CLUSTER} (HODEI_KEEP_CLUSTER=1)"
    info "kubeconfig: ${KUBECONFIG_FILE}"
    exit 0
  fi
  step "Deleting the Kind cluster ${CLUSTER}"
  mapfile -t NODES < <(cluster_containers "${CLUSTER}")
  if ((${#NODES[@]})); then
    mapfile -t VOLUMES < <(container_volumes "${NODES[@]}")
  fi
  info "node containers: ${NODES[*]:-none}; their volumes: ${#VOLUMES[@]}"
  "${KIND[@]}" delete cluster --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}" 2>&1 | indent
else
  step "No Kind cluster named ${CLUSTER}"
  if [[ "${KEEP_CLUSTER}" == "1" ]]; then
    exit 0
  fi
fi

step "Removing what kind leaves: the 'kind' network, the kubeconfig and env files"
# kind deletes containers with their anonymous volumes; a node killed half-way may leave some.
for volume in "${VOLUMES[@]}"; do
  if docker volume rm "${volume}" >/dev/null 2>&1; then
    info "removed the leftover volume ${volume}"
  fi
done
remove_kind_network
rm -f "${KUBECONFIG_FILE}" "${ENV_FILE}"

step "Verifying that nothing of the cluster ${CLUSTER} is left"
verify || die "cleanup incomplete (see above)"
step "Clean"
