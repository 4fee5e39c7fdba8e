#!/usr/bin/env bash
# Creates (or reuses) the Kind cluster of the Kubernetes E2E suite, applies the test namespace
# and the provider's RBAC, and loads the worker image into the cluster's nodes.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
MANIFESTS="${REPO_ROOT}/deploy/kubernetes"

CLUSTER="${KIND_CLUSTER_NAME:-hodei-e2e}"
NODE_IMAGE="${KIND_NODE_IMAGE:-}"
NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"
WORKER_IMAGE="${HODEI_WORKER_IMAGE:-hodei-worker:e2e-test}"
IMAGE_ARCHIVE="${HODEI_WORKER_IMAGE_ARCHIVE:-}"
KUBECONFIG_FILE="${HODEI_E2E_KUBECONFIG:-${REPO_ROOT}/target/e2e/kubeconfig}"
ENV_FILE="$(dirname "${KUBECONFIG_FILE}")/kind.env"
WAIT_SECONDS="${HODEI_KIND_WAIT_SECONDS:-180}"

SKIP_IMAGE=0
WORK_DIR=""
CURRENT_STEP="start"

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--skip-image] [--help]

Creates the Kind cluster ${CLUSTER} if it does not exist (reuses it if it does), writes its
kubeconfig to a file of its own (never ~/.kube/config), applies
deploy/kubernetes/namespace-test.yaml and deploy/kubernetes/rbac-test.yaml, loads the worker
image into the nodes and writes an env file for the suite. Safe to run again.

  --skip-image   do not load the worker image (cluster and manifests only)
  -h, --help     this text

Environment (defaults in brackets):
  KIND_CLUSTER_NAME           cluster name [hodei-e2e]
  KIND_NODE_IMAGE             node image, best pinned with the digest listed in the release
                              notes of your Kind version: kindest/node:vX.Y.Z@sha256:...
                              [Kind's default for its version]
  HODEI_K8S_TEST_NAMESPACE    test namespace [hodei-e2e]
  HODEI_WORKER_IMAGE          worker image, never :latest [hodei-worker:e2e-test]
  HODEI_WORKER_IMAGE_ARCHIVE  load this image tarball (docker save, nix build output)
                              instead of the image in the Docker engine
  HODEI_E2E_KUBECONFIG        kubeconfig written for the cluster [<repo>/target/e2e/kubeconfig]
  HODEI_E2E_SERVER_HOST       host address Pods use to reach a server on this machine
                              [gateway of the 'kind' Docker network]
  HODEI_KIND_WAIT_SECONDS     how long to wait for the control plane and nodes [180]

Afterwards: source ${ENV_FILE}
(exports KUBECONFIG, KIND_CLUSTER_NAME, HODEI_K8S_TEST_NAMESPACE, HODEI_WORKER_IMAGE and
HODEI_E2E_SERVER_HOST). Tear down: scripts/e2e/cleanup-kind.sh.
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

cleanup() {
  local status=$?
  if [[ -n "${WORK_DIR}" ]]; then
    rm -rf "${WORK_DIR}"
  fi
  if ((status != 0)); then
    printf '\nFAILED during: %s\n' "${CURRENT_STEP}" >&2
    printf 'A cluster created so far is kept; fix the cause and run this script again.\n' >&2
  fi
}
trap cleanup EXIT

kctl() { kubectl --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

require_tools() {
  local missing=0
  if ! command -v docker >/dev/null 2>&1; then
    warn "docker is missing: install Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop"
    missing=1
  fi
  if ! command -v kind >/dev/null 2>&1; then
    warn "kind is missing: 'go install sigs.k8s.io/kind@latest', a release binary (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), or 'nix develop'"
    missing=1
  fi
  if ! command -v kubectl >/dev/null 2>&1; then
    warn "kubectl is missing: https://kubernetes.io/docs/tasks/tools/ or 'nix develop'"
    missing=1
  fi
  ((missing == 0)) || die "install the tools above and run this script again"
  docker info >/dev/null 2>&1 ||
    die "the Docker daemon does not answer ('docker info' failed): start it (e.g. 'sudo systemctl start docker') and check that your user may use it"
}

check_image_name() {
  local last="${WORKER_IMAGE##*/}"
  if [[ "${last}" != *:* || "${last##*:}" == "latest" ]]; then
    die "HODEI_WORKER_IMAGE=${WORKER_IMAGE} has no tag or ':latest': a moving tag lets a stale image pass the tests unnoticed, and Pods without an explicit imagePullPolicy then pull from a registry instead of using the loaded image; use a fixed tag such as hodei-worker:e2e-test"
  fi
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx -- "${CLUSTER}"
}

# Loads the worker image into every node of the cluster.
load_image() {
  if [[ -n "${IMAGE_ARCHIVE}" ]]; then
    [[ -f "${IMAGE_ARCHIVE}" ]] || die "HODEI_WORKER_IMAGE_ARCHIVE=${IMAGE_ARCHIVE} does not exist"
    info "loading the archive ${IMAGE_ARCHIVE}"
    kind load image-archive "${IMAGE_ARCHIVE}" --name "${CLUSTER}"
    return
  fi
  docker image inspect "${WORKER_IMAGE}" >/dev/null 2>&1 ||
    die "image ${WORKER_IMAGE} is not in the Docker engine: build it with scripts/build-worker-image.sh (or set HODEI_WORKER_IMAGE_ARCHIVE to an image tarball)"
  if kind load docker-image "${WORKER_IMAGE}" --name "${CLUSTER}"; then
    return
  fi
  # Docker's containerd image store (the default of new Docker 29 installs) saves archives the
  # nodes' containerd rejects ("content digest ... not found", kind issue 3795). A
  # single-platform save, loaded as an archive, works with both image stores.
  warn "'kind load docker-image' failed; retrying through a single-platform archive (kind issue 3795)"
  WORK_DIR="$(mktemp -d)"
  local archive="${WORK_DIR}/worker-image.tar" platform
  platform="linux/$(docker version --format '{{.Server.Arch}}')"
  if ! docker image save --platform "${platform}" --output "${archive}" "${WORKER_IMAGE}" 2>/dev/null; then
    # Engines older than API 1.48 have no --platform; their archives are single-platform anyway.
    docker image save --output "${archive}" "${WORKER_IMAGE}"
  fi
  kind load image-archive "${archive}" --name "${CLUSTER}"
}

# Applies a manifest of deploy/kubernetes with the test namespace in place of hodei-e2e, only
# in name:/namespace: fields (so the ServiceAccount hodei-e2e-provider keeps its name).
apply_manifest() {
  local file=$1
  info "applying ${file#"${REPO_ROOT}/"} (namespace ${NAMESPACE})"
  sed -E "s/^([[:space:]]*(name|namespace): )hodei-e2e\$/\\1${NAMESPACE}/" "${file}" | kctl apply -f -
}

# The IPv4 gateway of the 'kind' Docker network: the host, as Pods on Linux reach it.
kind_gateway() {
  docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n 1 || true
}

while (($#)); do
  case "$1" in
    --skip-image) SKIP_IMAGE=1 ;;
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

step "Checking tools and settings"
require_tools
if ((SKIP_IMAGE == 0)) && [[ -z "${IMAGE_ARCHIVE}" ]]; then
  check_image_name
fi
[[ "${NAMESPACE}" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "HODEI_K8S_TEST_NAMESPACE=${NAMESPACE} is not a valid namespace name (lower-case letters, digits, '-')"
info "$(kind version)"
info "cluster ${CLUSTER}, namespace ${NAMESPACE}, kubeconfig ${KUBECONFIG_FILE}"

mkdir -p "$(dirname "${KUBECONFIG_FILE}")"
if cluster_exists; then
  step "Reusing the Kind cluster ${CLUSTER}"
  kind export kubeconfig --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}"
else
  step "Creating the Kind cluster ${CLUSTER}${NODE_IMAGE:+ from ${NODE_IMAGE}}"
  create_args=(create cluster --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}" --wait "${WAIT_SECONDS}s")
  if [[ -n "${NODE_IMAGE}" ]]; then
    create_args+=(--image "${NODE_IMAGE}")
  fi
  kind "${create_args[@]}"
fi

step "Waiting for the API server and the nodes"
kctl get --raw /readyz >/dev/null ||
  die "the API server of ${CLUSTER} does not answer; if its node container stopped (e.g. after a Docker restart), delete the cluster with scripts/e2e/cleanup-kind.sh and run this script again"
# 'kubectl wait --all' fails at once while no node has registered yet, so wait for one first.
deadline=$((SECONDS + WAIT_SECONDS))
until [[ -n "$(kctl get nodes -o name 2>/dev/null)" ]]; do
  ((SECONDS < deadline)) || die "no node registered with the API server of ${CLUSTER} within ${WAIT_SECONDS}s"
  sleep 2
done
kctl wait --for=condition=Ready nodes --all --timeout="${WAIT_SECONDS}s"

step "Applying the test namespace and the provider's RBAC"
apply_manifest "${MANIFESTS}/namespace-test.yaml"
apply_manifest "${MANIFESTS}/rbac-test.yaml"
# Pods are refused until the namespace's 'default' ServiceAccount exists; the controller
# manager creates it shortly after the namespace.
deadline=$((SECONDS + 60))
until kctl -n "${NAMESPACE}" get serviceaccount default >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "the ServiceAccount 'default' never appeared in namespace ${NAMESPACE}"
  sleep 1
done
info "namespace ${NAMESPACE} is ready for worker Pods"

if ((SKIP_IMAGE == 0)); then
  step "Loading the worker image ${IMAGE_ARCHIVE:-${WORKER_IMAGE}} into ${CLUSTER}"
  load_image
else
  step "Not loading the worker image (--skip-image)"
fi

step "Writing ${ENV_FILE}"
if [[ -n "${HODEI_E2E_SERVER_HOST:-}" ]]; then
  server_host="${HODEI_E2E_SERVER_HOST}"
elif docker info --format '{{.OperatingSystem}}' 2>/dev/null | grep -q 'Docker Desktop'; then
  # The kind network's gateway is inside Docker Desktop's VM, not this machine.
  server_host=host.docker.internal
else
  server_host="$(kind_gateway)"
fi
{
  printf '# Written by scripts/e2e/setup-kind-cluster.sh for the Kind cluster %s.\n' "${CLUSTER}"
  printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_FILE}"
  printf 'export KIND_CLUSTER_NAME=%q\n' "${CLUSTER}"
  printf 'export HODEI_K8S_TEST_NAMESPACE=%q\n' "${NAMESPACE}"
  printf 'export HODEI_WORKER_IMAGE=%q\n' "${WORKER_IMAGE}"
  if [[ -n "${server_host}" ]]; then
    printf 'export HODEI_E2E_SERVER_HOST=%q\n' "${server_host}"
  fi
} >"${ENV_FILE}"
if [[ -n "${server_host}" ]]; then
  info "Pods reach this machine at ${server_host} (override with HODEI_E2E_SERVER_HOST; Docker Desktop: host.docker.internal)"
else
  warn "could not read the gateway of the 'kind' Docker network; set HODEI_E2E_SERVER_HOST (GETTING_STARTED.md, Networking)"
fi

step "Done"
info "source ${ENV_FILE}"
info "kubectl -n ${NAMESPACE} get pods,secrets -l app.kubernetes.io/managed-by=hodei"
