#!/usr/bin/env bash
# Creates (or reuses) the Kind cluster of the Kubernetes E2E suite, from the pinned kindest/node
# or from a node image built here without any registry, applies the test namespace and the
# provider's RBAC, and loads the worker and server images into the node.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/e2e/lib/common.sh
source "${SCRIPT_DIR}/lib/common.sh"
# shellcheck source=scripts/e2e/lib/kind.sh
source "${SCRIPT_DIR}/lib/kind.sh"

MANIFESTS="${REPO_ROOT}/deploy/kubernetes"
CLUSTER="${KIND_CLUSTER_NAME:-hodei-e2e}"
NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"
WORKER_IMAGE="${HODEI_WORKER_IMAGE:-hodei-worker:e2e-test}"
IMAGE_ARCHIVE="${HODEI_WORKER_IMAGE_ARCHIVE:-}"
SERVER_IMAGE="${HODEI_SERVER_IMAGE:-hodei-server:e2e-test}"
SERVER_IMAGE_ARCHIVE="${HODEI_SERVER_IMAGE_ARCHIVE:-}"
KUBECONFIG_FILE="${HODEI_E2E_KUBECONFIG:-${REPO_ROOT}/target/e2e/kubeconfig}"
ENV_FILE="$(dirname "${KUBECONFIG_FILE}")/kind.env"
WAIT_SECONDS="${HODEI_KIND_WAIT_SECONDS:-180}"

SKIP_IMAGE=0
WORK_DIR=""

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--skip-image] [--help]

Creates the single-node Kind cluster ${CLUSTER} if it does not exist (reuses it if it does),
writes its kubeconfig to a file of its own (never ~/.kube/config), waits for the node and
CoreDNS to be Ready, applies deploy/kubernetes/namespace-test.yaml and rbac-test.yaml, loads the
worker image and the server image (deploy/kubernetes/server runs it) with
'kind load image-archive' and writes an env file for the suite. Safe to run again.

The node image, unless KIND_NODE_IMAGE names one (HODEI_KIND_NODE_SOURCE):
  registry  the pinned ${KIND_REGISTRY_NODE_IMAGE%@*}@… (scripts/e2e/versions.env), pulled
            from Docker Hub once
  local     ${LOCAL_NODE_IMAGE}, built here without any registry by
            scripts/e2e/build-kind-node-image.sh (first time: ~15 min and root; then cached)
  auto      registry when the engine has the pinned image or Docker Hub answers, else local
            (the default)

  --skip-image   do not load the images (cluster and manifests only)
  -h, --help     this text

Environment (defaults in brackets):
  KIND_CLUSTER_NAME           cluster name [hodei-e2e]
  KIND_NODE_IMAGE             node image to use as it is [chosen by HODEI_KIND_NODE_SOURCE]
  HODEI_KIND_NODE_SOURCE      auto, registry or local [auto]
  HODEI_K8S_TEST_NAMESPACE    test namespace [hodei-e2e]
  HODEI_WORKER_IMAGE          worker image, never :latest [hodei-worker:e2e-test]
  HODEI_WORKER_IMAGE_ARCHIVE  load this image tarball (docker save, nix build output)
                              instead of the image in the Docker engine
  HODEI_SERVER_IMAGE          server image, never :latest [hodei-server:e2e-test]
  HODEI_SERVER_IMAGE_ARCHIVE  likewise for the server image; without it and without the
                              image in the engine, the server image is not loaded (the
                              servers' suite then fails saying so)
  HODEI_E2E_KUBECONFIG        kubeconfig written for the cluster [<repo>/target/e2e/kubeconfig]
  HODEI_E2E_SERVER_HOST       host address Pods use to reach a server on this machine
                              [gateway of the 'kind' Docker network]
  HODEI_KIND_WAIT_SECONDS     how long to wait for the node and for CoreDNS [180]
  HODEI_KIND_BIN, HODEI_KUBECTL_BIN   kind and kubectl to run [see scripts/e2e/lib/kind.sh]

Afterwards: source ${ENV_FILE}
(exports KUBECONFIG, KIND_CLUSTER_NAME, HODEI_K8S_TEST_NAMESPACE, HODEI_WORKER_IMAGE,
HODEI_SERVER_IMAGE and HODEI_E2E_SERVER_HOST). Tear down: scripts/e2e/cleanup-kind.sh.
USAGE
}

cleanup() {
  local status=$?
  if [[ -n "${WORK_DIR}" ]]; then
    rm -rf "${WORK_DIR}"
  fi
  if ((status != 0)); then
    printf '\nFAILED during: %s\n' "${CURRENT_STEP}" >&2
    printf 'A cluster created so far is kept; fix the cause and run this script again, or delete it with scripts/e2e/cleanup-kind.sh.\n' >&2
  fi
}
trap cleanup EXIT

kctl() { "${KUBECTL[@]}" --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

# check_image_name VARIABLE IMAGE
check_image_name() {
  local last="${2##*/}"
  if [[ "${last}" != *:* || "${last##*:}" == "latest" ]]; then
    die "$1=$2 has no tag or ':latest': a moving tag lets a stale image pass the tests unnoticed, and Pods without an explicit imagePullPolicy then pull from a registry instead of using the loaded image; use a fixed tag such as ${last%%:*}:e2e-test"
  fi
}

cluster_exists() {
  "${KIND[@]}" get clusters 2>/dev/null | grep -qx -- "${CLUSTER}"
}

# Images enter the node as archives: `kind load image-archive` works with both of Docker's image
# stores, unlike `kind load docker-image` with the containerd store (the default of new Docker 29
# installs; kind issue 3795).
# load_image IMAGE ARCHIVE ARCHIVE_VARIABLE BUILD_SCRIPT: loads ARCHIVE if given, else IMAGE
# from the Docker engine.
load_image() {
  local image=$1 archive=$2 variable=$3 script=$4
  if [[ -n "${archive}" ]]; then
    [[ -f "${archive}" ]] || die "${variable}=${archive} does not exist"
    info "archive ${archive}"
  else
    docker image inspect "${image}" >/dev/null 2>&1 ||
      die "image ${image} is not in the Docker engine: build it with ${script} (or set ${variable} to an image tarball)"
    [[ -n "${WORK_DIR}" ]] || WORK_DIR="$(mktemp -d)"
    archive="${WORK_DIR}/${image//[:\/]/_}.tar"
    local platform
    platform="linux/$(docker version --format '{{.Server.Arch}}')"
    # A single-platform archive; engines older than API 1.48 have no --platform, and their
    # archives are single-platform anyway.
    if ! docker image save --platform "${platform}" --output "${archive}" "${image}" 2>/dev/null; then
      docker image save --output "${archive}" "${image}"
    fi
    info "docker image save ${image} ($(docker image inspect --format '{{.Id}}' "${image}" | cut -c8-19), $(du -h "${archive}" | cut -f1))"
  fi
  "${KIND[@]}" load image-archive "${archive}" --name "${CLUSTER}" 2>&1 | indent
  local node
  for node in $("${KIND[@]}" get nodes --name "${CLUSTER}"); do
    docker exec "${node}" crictl images 2>/dev/null | grep -F "${image%:*}" | indent ||
      die "${image} is not in ${node}'s containerd after kind load image-archive"
  done
}

# Applies a manifest of deploy/kubernetes with the test namespace in place of hodei-e2e, only
# in name:/namespace: fields (so the ServiceAccount hodei-e2e-provider keeps its name).
apply_manifest() {
  local file=$1
  info "applying ${file#"${REPO_ROOT}/"} (namespace ${NAMESPACE})"
  sed -E "s/^([[:space:]]*(name|namespace): )hodei-e2e\$/\\1${NAMESPACE}/" "${file}" | kctl apply -f - | indent
}

node_registered() { [[ -n "$(kctl get nodes -o name 2>/dev/null)" ]]; }
coredns_ready() {
  [[ "$(kctl -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" -ge 1 ]]
}
default_service_account() { kctl -n "${NAMESPACE}" get serviceaccount default; }

# Says what the node shows when a wait fails: node conditions, kube-system Pods, recent events.
show_cluster_state() {
  {
    kctl get nodes -o wide
    kctl -n kube-system get pods -o wide
    kctl get events -A --sort-by=.lastTimestamp | tail -n 20
  } 2>&1 | indent >&2 || true
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
command -v docker >/dev/null 2>&1 ||
  die "docker is missing: install Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop"
docker info >/dev/null 2>&1 ||
  die "the Docker daemon does not answer ('docker info' failed): start it (e.g. 'sudo systemctl start docker', or scripts/e2e/start-dockerd.sh as root) and check that your user may use it"
if ((SKIP_IMAGE == 0)) && [[ -z "${IMAGE_ARCHIVE}" ]]; then
  check_image_name HODEI_WORKER_IMAGE "${WORKER_IMAGE}"
fi
if ((SKIP_IMAGE == 0)) && [[ -z "${SERVER_IMAGE_ARCHIVE}" ]]; then
  check_image_name HODEI_SERVER_IMAGE "${SERVER_IMAGE}"
fi
[[ "${NAMESPACE}" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "HODEI_K8S_TEST_NAMESPACE=${NAMESPACE} is not a valid namespace name (lower-case letters, digits, '-')"
info "cluster ${CLUSTER}, namespace ${NAMESPACE}, kubeconfig ${KUBECONFIG_FILE}"
mkdir -p "$(dirname "${KUBECONFIG_FILE}")"

step "Node image"
select_node_image
resolve_kind_tools

create_started=${SECONDS}
if cluster_exists; then
  step "Reusing the Kind cluster ${CLUSTER}"
  "${KIND[@]}" export kubeconfig --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_FILE}" 2>&1 | indent
  info "its node image: $(docker inspect --format '{{.Config.Image}}' "$(cluster_containers "${CLUSTER}" | head -n 1)")"
else
  step "Creating the Kind cluster ${CLUSTER}: kind create cluster --image ${NODE_IMAGE}"
  "${KIND[@]}" create cluster --name "${CLUSTER}" --image "${NODE_IMAGE}" \
    --kubeconfig "${KUBECONFIG_FILE}" --wait "${WAIT_SECONDS}s" 2>&1 | indent
  info "kind create cluster returned after $((SECONDS - create_started))s"
fi

step "Waiting for the API server, the node and CoreDNS"
kctl get --raw /readyz >/dev/null ||
  die "the API server of ${CLUSTER} does not answer; if its node container stopped (e.g. after a Docker restart), delete the cluster with scripts/e2e/cleanup-kind.sh and run this script again"
# 'kubectl wait --all' fails at once while no node has registered yet, so wait for one first.
wait_until "a node registered with the API server" "${WAIT_SECONDS}" node_registered || {
  show_cluster_state
  die "no node registered within ${WAIT_SECONDS}s"
}
kctl wait --for=condition=Ready nodes --all --timeout="${WAIT_SECONDS}s" | indent || {
  show_cluster_state
  die "the node did not become Ready within ${WAIT_SECONDS}s"
}
info "node Ready $((SECONDS - create_started))s after kind create cluster started"
# CoreDNS needs the Pod network, kube-proxy's Service rules and the API server: its readiness
# proves the node image's networking, though the suite itself dials the host by address.
wait_until "CoreDNS Ready (deployment kube-system/coredns)" "${WAIT_SECONDS}" coredns_ready || {
  show_cluster_state
  die "CoreDNS did not become Ready within ${WAIT_SECONDS}s"
}
info "CoreDNS Ready $((SECONDS - create_started))s after kind create cluster started"

step "Applying the test namespace and the provider's RBAC"
apply_manifest "${MANIFESTS}/namespace-test.yaml"
apply_manifest "${MANIFESTS}/rbac-test.yaml"
# Pods are refused until the namespace's 'default' ServiceAccount exists; the controller
# manager creates it shortly after the namespace.
wait_until "ServiceAccount ${NAMESPACE}/default" 60 default_service_account ||
  die "the ServiceAccount 'default' never appeared in namespace ${NAMESPACE}"

if ((SKIP_IMAGE == 0)); then
  step "Loading the worker image ${IMAGE_ARCHIVE:-${WORKER_IMAGE}} into ${CLUSTER} (kind load image-archive)"
  load_image "${WORKER_IMAGE}" "${IMAGE_ARCHIVE}" HODEI_WORKER_IMAGE_ARCHIVE scripts/build-worker-image.sh
  # Only the servers' suite (deploy/kubernetes/server in the cluster) needs it; the provider's
  # suite runs its server on this machine.
  if [[ -n "${SERVER_IMAGE_ARCHIVE}" ]] || docker image inspect "${SERVER_IMAGE}" >/dev/null 2>&1; then
    step "Loading the server image ${SERVER_IMAGE_ARCHIVE:-${SERVER_IMAGE}} into ${CLUSTER} (kind load image-archive)"
    load_image "${SERVER_IMAGE}" "${SERVER_IMAGE_ARCHIVE}" HODEI_SERVER_IMAGE_ARCHIVE scripts/build-server-image.sh
  else
    warn "the server image ${SERVER_IMAGE} is not in the Docker engine: not loaded (build it with scripts/build-server-image.sh; only the servers' suite needs it)"
  fi
else
  step "Not loading the images (--skip-image)"
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
  printf 'export HODEI_SERVER_IMAGE=%q\n' "${SERVER_IMAGE}"
  if [[ -n "${server_host}" ]]; then
    printf 'export HODEI_E2E_SERVER_HOST=%q\n' "${server_host}"
  fi
  # The kubectl this script chose (its version fits the node's); the suite's scripts reuse it.
  printf 'export HODEI_KUBECTL_BIN=%q\n' "${KUBECTL[0]}"
} >"${ENV_FILE}"
if [[ -n "${server_host}" ]]; then
  info "Pods reach this machine at ${server_host} (override with HODEI_E2E_SERVER_HOST; Docker Desktop: host.docker.internal)"
else
  warn "could not read the gateway of the 'kind' Docker network; set HODEI_E2E_SERVER_HOST (GETTING_STARTED.md, Networking)"
fi

step "Done"
kctl get nodes -o wide | indent
info "source ${ENV_FILE}"
info "${KUBECTL[0]} -n ${NAMESPACE} get pods,secrets -l app.kubernetes.io/managed-by=hodei"
