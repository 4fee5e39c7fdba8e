#!/usr/bin/env bash
# Runs the Kubernetes E2E suites against a real Kind cluster: the provider's
# (crates/server/tests/e2e_kubernetes_provider.rs, a server on this machine, worker Pods) and the
# servers' (e2e_kubernetes_servers.rs, deploy/kubernetes/server with three replicas in the
# cluster). Brings the cluster up (from the pinned kindest/node, or from a node image built here
# without any registry), builds the worker and server images if missing, runs the suites with
# cargo nextest, and cleans up on every exit path.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/e2e/lib/common.sh
source "${SCRIPT_DIR}/lib/common.sh"
# shellcheck source=scripts/e2e/lib/kind.sh
source "${SCRIPT_DIR}/lib/kind.sh"

WORKER_IMAGE="${HODEI_WORKER_IMAGE:-hodei-worker:e2e-test}"
IMAGE_ARCHIVE="${HODEI_WORKER_IMAGE_ARCHIVE:-}"
SERVER_IMAGE="${HODEI_SERVER_IMAGE:-hodei-server:e2e-test}"
SERVER_IMAGE_ARCHIVE="${HODEI_SERVER_IMAGE_ARCHIVE:-}"
# Where deploy/kubernetes/server puts its worker Pods (HODEI_K8S_NAMESPACE there).
SERVER_WORKER_NAMESPACE=hodei-workers
# The test binaries, each a suite of #[ignore]d tests.
SUITES=(e2e_kubernetes_provider e2e_kubernetes_servers)
NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"
KEEP_CLUSTER="${HODEI_KEEP_CLUSTER:-0}"
PROFILE="${NEXTEST_PROFILE:-default}"
# Where the Kind setup writes its kubeconfig and env file (as setup-kind-cluster.sh).
KIND_KUBECONFIG="${HODEI_E2E_KUBECONFIG:-${REPO_ROOT}/target/e2e/kubeconfig}"
# Snapshots of `kubectl get pods -A` taken while a worker Pod runs: proof the suite used Pods.
SNAPSHOT_FILE="${HODEI_E2E_POD_SNAPSHOTS:-${REPO_ROOT}/target/e2e/pods-during-suite.txt}"
# Exactly what the provider labels (crates/providers/src/labels.rs).
SELECTOR="app.kubernetes.io/managed-by=hodei"

REBUILD_IMAGE=0
NEXTEST_ARGS=()
CLUSTER_TOUCHED=0
WATCH_PID=""

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--keep-cluster] [--rebuild-image] [--help] [-- NEXTEST_ARGS...]

Runs the Kubernetes E2E suites (${SUITES[*]})
against a real single-node Kind cluster:
  1. checks the tools it needs (and says how to install a missing one);
  2. builds the worker image ${WORKER_IMAGE} with scripts/build-worker-image.sh and the server
     image ${SERVER_IMAGE} with scripts/build-server-image.sh if the Docker engine does not
     have them (each skipped when its HODEI_*_IMAGE_ARCHIVE is set);
  3. builds the suites (cargo test --workspace --test ... --no-run) and the hodei CLI (one
     test serves it to a Pod) before any cluster exists;
  4. brings the cluster up with scripts/e2e/setup-kind-cluster.sh: node image (below), kind
     create cluster, node and CoreDNS Ready, deploy/kubernetes/*-test.yaml applied, both
     images loaded with kind load image-archive;
  5. runs: cargo nextest run --workspace --test e2e_kubernetes_provider
           --test e2e_kubernetes_servers --profile \$NEXTEST_PROFILE --run-ignored only
           -E 'binary(e2e_kubernetes_provider) | binary(e2e_kubernetes_servers)'
           [NEXTEST_ARGS...]
     with KUBECONFIG, HODEI_E2E_K8S=1, HODEI_K8S_TEST_NAMESPACE, HODEI_WORKER_IMAGE and
     HODEI_SERVER_IMAGE exported, saving 'kubectl get pods -A' while worker Pods run to
     ${SNAPSHOT_FILE#"${REPO_ROOT}/"};
  6. on every exit path (success, failure, Ctrl-C): deletes the Pods and Secrets labelled
     ${SELECTOR} (in ${NAMESPACE} and ${SERVER_WORKER_NAMESPACE}) and the servers'
     deploy/kubernetes/server objects, then the cluster with scripts/e2e/cleanup-kind.sh,
     which verifies that no node container, volume, 'kind' network or kubeconfig is left,
     unless HODEI_KEEP_CLUSTER=1.

The node image, unless KIND_NODE_IMAGE names one, follows HODEI_KIND_NODE_SOURCE: registry
(the pinned kindest/node from Docker Hub), local (built here without any registry by
scripts/e2e/build-kind-node-image.sh; root, ~15 min the first time) or auto (registry if
Docker Hub answers, else local; the default).

  --keep-cluster    keep the cluster afterwards (same as HODEI_KEEP_CLUSTER=1)
  --rebuild-image   rebuild the worker and server images even if they exist (after changing
                    the worker or the server)
  -h, --help        this text
  -- ARGS           passed to cargo nextest, e.g. -- --no-capture test_k8s_pod_cleanup

Environment (defaults in brackets):
  HODEI_KIND_NODE_SOURCE      auto, registry or local [auto]
  KIND_NODE_IMAGE             node image to use as it is [chosen by HODEI_KIND_NODE_SOURCE]
  HODEI_KEEP_CLUSTER          1: keep the cluster for the next run [0]
  NEXTEST_PROFILE             nextest profile (.config/nextest.toml) [default]
  HODEI_WORKER_IMAGE          worker image, never :latest [hodei-worker:e2e-test]
  HODEI_WORKER_IMAGE_ARCHIVE  load this image tarball instead of the Docker engine's image
                              (what 'nix run .#e2e-k8s' passes) [none]
  HODEI_SERVER_IMAGE          server image, never :latest [hodei-server:e2e-test]
  HODEI_SERVER_IMAGE_ARCHIVE  likewise for the server image [none]
  HODEI_K8S_TEST_NAMESPACE    test namespace [hodei-e2e]
  HODEI_E2E_SERVER_HOST       host address Pods use to reach the tests' server
                              [gateway of the 'kind' Docker network]
  KIND_CLUSTER_NAME           [hodei-e2e]
  HODEI_E2E_KUBECONFIG        [<repo>/target/e2e/kubeconfig]
  HODEI_KIND_CACHE            build cache of the local node image [~/.cache/hodei-kind-node]
USAGE
}

kctl() { "${KUBECTL[@]}" "$@"; }

# --- cleanup, on every exit path -------------------------------------------------------------

stop_pod_watch() {
  if [[ -n "${WATCH_PID}" ]]; then
    kill "${WATCH_PID}" 2>/dev/null || true
    wait "${WATCH_PID}" 2>/dev/null || true
    WATCH_PID=""
  fi
  rm -f "${SNAPSHOT_FILE}.partial"
}

# delete_worker_objects NAMESPACE: the Pods and Secrets a provider created there.
delete_worker_objects() {
  local namespace=$1
  if ! kctl get namespace "${namespace}" >/dev/null 2>&1; then
    info "namespace ${namespace} does not exist"
    return 0
  fi
  kctl -n "${namespace}" delete pods,secrets -l "${SELECTOR}" \
    --ignore-not-found --wait --timeout=120s | sed 's/^/    /'
  local left
  left="$(kctl -n "${namespace}" get pods,secrets -l "${SELECTOR}" -o name 2>/dev/null || true)"
  if [[ -n "${left}" ]]; then
    warn "still present after 120s: ${left//$'\n'/ }"
    return 1
  fi
  info "no worker Pod or Secret left in ${namespace}"
}

delete_managed_objects() {
  if [[ -z "${KUBECONFIG:-}" || ! -f "${KUBECONFIG}" ]]; then
    info "no kubeconfig: no cluster to clean"
    return 0
  fi
  if ! kctl get --raw /readyz >/dev/null 2>&1; then
    warn "the API server does not answer: Pods and Secrets are left to the cluster cleanup"
    return 0
  fi
  local failed=0
  # The servers first, so that none of them creates a worker Pod while those are deleted.
  # Each test of the servers' suite deletes them itself; this is for a test that was killed.
  kctl delete -k "${REPO_ROOT}/deploy/kubernetes/server" --ignore-not-found --wait \
    --timeout=120s 2>&1 | indent || failed=1
  delete_worker_objects "${NAMESPACE}" || failed=1
  delete_worker_objects "${SERVER_WORKER_NAMESPACE}" || failed=1
  return "${failed}"
}

on_exit() {
  local status=$? cleanup_failed=0
  trap - EXIT INT TERM
  stop_pod_watch
  if ((status != 0)); then
    printf '\nFAILED (exit %s) during: %s\n' "${status}" "${CURRENT_STEP}" >&2
  fi
  if ((CLUSTER_TOUCHED)); then
    step "Cleanup: deploy/kubernetes/server, and worker Pods and Secrets (${SELECTOR}) in ${NAMESPACE} and ${SERVER_WORKER_NAMESPACE}"
    delete_managed_objects || cleanup_failed=1
    if [[ "${KEEP_CLUSTER}" == "1" ]]; then
      step "Cleanup: keeping the Kind cluster (HODEI_KEEP_CLUSTER=1)"
      info "KUBECONFIG=${KUBECONFIG:-?}"
    else
      step "Cleanup: removing the Kind cluster (scripts/e2e/cleanup-kind.sh)"
      bash "${SCRIPT_DIR}/cleanup-kind.sh" 2>&1 | indent || cleanup_failed=1
    fi
  fi
  if ((cleanup_failed)); then
    warn "cleanup incomplete (see above); run scripts/e2e/cleanup-kind.sh again"
    ((status != 0)) || status=1
  fi
  printf '\n%s after %ss (exit %s)\n' "$( ((status == 0)) && echo 'Done' || echo 'Failed')" \
    "$((SECONDS - SCRIPT_STARTED))" "${status}"
  exit "${status}"
}
trap on_exit EXIT
# A signal ends the script through the EXIT trap, which cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- checks ----------------------------------------------------------------------------------

require_tools() {
  local missing=0
  if ! command -v cargo >/dev/null 2>&1; then
    warn "cargo is missing: install Rust with rustup (https://rustup.rs), or 'nix develop'"
    missing=1
  elif ! cargo nextest --version >/dev/null 2>&1; then
    warn "cargo-nextest is missing: 'cargo install cargo-nextest --locked', or 'nix develop'"
    missing=1
  fi
  if ! command -v docker >/dev/null 2>&1; then
    warn "docker is missing: install Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop"
    missing=1
  fi
  ((missing == 0)) || die "install what is missing above and run this script again"
  if ! docker info >/dev/null 2>&1; then
    die "the Docker daemon does not answer ('docker info' failed): start it (e.g. 'sudo systemctl start docker', or scripts/e2e/start-dockerd.sh as root)"
  fi
}

# check_image_name VARIABLE IMAGE
check_image_name() {
  local last="${2##*/}"
  if [[ "${last}" != *:* || "${last##*:}" == "latest" ]]; then
    die "$1=$2 has no tag or ':latest': use a fixed tag such as ${last%%:*}:e2e-test"
  fi
}

# --- steps -----------------------------------------------------------------------------------

# prepare_image IMAGE ARCHIVE ARCHIVE_VARIABLE IMAGE_VARIABLE BUILD_SCRIPT
prepare_image() {
  local image=$1 archive=$2 archive_variable=$3 image_variable=$4 script=$5
  if [[ -n "${archive}" ]]; then
    [[ -f "${archive}" ]] || die "${archive_variable}=${archive} does not exist"
    info "the Kind setup loads the archive ${archive}"
    return
  fi
  if ((REBUILD_IMAGE == 0)) && docker image inspect "${image}" >/dev/null 2>&1; then
    info "${image} exists ($(docker image inspect --format '{{.Id}}' "${image}" | cut -c1-19)); --rebuild-image rebuilds it"
    return
  fi
  info "building ${image} with ${script}"
  env "${image_variable}=${image}" bash "${REPO_ROOT}/${script}"
}

bring_up_cluster() {
  CLUSTER_TOUCHED=1
  bash "${SCRIPT_DIR}/setup-kind-cluster.sh"
  local env_file
  env_file="$(dirname "${KIND_KUBECONFIG}")/kind.env"
  [[ -f "${env_file}" ]] || die "setup-kind-cluster.sh wrote no ${env_file}"
  # shellcheck source=/dev/null
  source "${env_file}"
  [[ -f "${KUBECONFIG:-}" ]] || die "no kubeconfig after the cluster setup (KUBECONFIG=${KUBECONFIG:-})"
  # The kubectl the setup chose (within one minor of the node).
  KUBECTL=("${HODEI_KUBECTL_BIN:-kubectl}")
}

# Every 2 s, keeps a `kubectl get pods -A` in which a worker Pod is Running.
watch_pods() {
  local snapshot="${SNAPSHOT_FILE}.partial"
  while true; do
    if kctl get pods -A -o wide >"${snapshot}" 2>/dev/null &&
      grep -qE '^[^ ]+ +hodei-worker-[^ ]+ +1/1 +Running ' "${snapshot}"; then
      {
        printf -- '--- %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        cat "${snapshot}"
      } >>"${SNAPSHOT_FILE}"
    fi
    sleep 2
  done
}

show_pod_snapshots() {
  local count
  count="$(grep -c -- '^--- ' "${SNAPSHOT_FILE}" 2>/dev/null || true)"
  if [[ "${count:-0}" -eq 0 ]]; then
    warn "no 'kubectl get pods -A' showed a Running worker Pod during the suite"
    return
  fi
  info "${count} snapshot(s) of 'kubectl get pods -A' with Running worker Pods in ${SNAPSHOT_FILE}; the first:"
  awk '/^--- /{n++} n==1' "${SNAPSHOT_FILE}" | sed 's/^/    /'
}

run_suite() {
  export HODEI_E2E_K8S=1 HODEI_E2E_CLUSTER=kind
  export HODEI_K8S_TEST_NAMESPACE="${NAMESPACE}" HODEI_WORKER_IMAGE="${WORKER_IMAGE}"
  export HODEI_SERVER_IMAGE="${SERVER_IMAGE}"
  info "KUBECONFIG=${KUBECONFIG} namespace ${NAMESPACE} images ${WORKER_IMAGE} ${SERVER_IMAGE} profile ${PROFILE}"
  mkdir -p "$(dirname "${SNAPSHOT_FILE}")"
  : >"${SNAPSHOT_FILE}"
  watch_pods &
  WATCH_PID=$!
  local status=0
  # Only these test targets are built: the other suites' binaries are not needed here.
  # --workspace, like the default suite, so cargo resolves the same features and reuses its
  # build instead of compiling part of the dependency graph again.
  (cd "${REPO_ROOT}" && cargo nextest run --workspace "${SUITE_TARGETS[@]}" \
    --profile "${PROFILE}" --run-ignored only -E "${SUITE_FILTER}" \
    "${NEXTEST_ARGS[@]}") || status=$?
  stop_pod_watch
  show_pod_snapshots
  return "${status}"
}

# --- main ------------------------------------------------------------------------------------

while (($#)); do
  case "$1" in
    --keep-cluster) KEEP_CLUSTER=1 ;;
    --rebuild-image) REBUILD_IMAGE=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      NEXTEST_ARGS=("$@")
      break
      ;;
    *)
      usage >&2
      die "unknown argument: $1 (nextest arguments go after --)"
      ;;
  esac
  shift
done

step "Checking tools and settings"
if [[ -n "${HODEI_E2E_CLUSTER:-}" && "${HODEI_E2E_CLUSTER}" != kind ]]; then
  die "HODEI_E2E_CLUSTER=${HODEI_E2E_CLUSTER}: only kind is supported (the air-gapped local cluster was replaced by a locally built Kind node image: HODEI_KIND_NODE_SOURCE=local)"
fi
[[ -n "${IMAGE_ARCHIVE}" ]] || check_image_name HODEI_WORKER_IMAGE "${WORKER_IMAGE}"
[[ -n "${SERVER_IMAGE_ARCHIVE}" ]] || check_image_name HODEI_SERVER_IMAGE "${SERVER_IMAGE}"
SUITE_TARGETS=()
SUITE_FILTER=""
for suite in "${SUITES[@]}"; do
  SUITE_TARGETS+=(--test "${suite}")
  SUITE_FILTER+="${SUITE_FILTER:+ | }binary(${suite})"
done
require_tools
export HODEI_KEEP_CLUSTER="${KEEP_CLUSTER}"
info "$(cargo nextest --version | head -n 1)"

step "Worker image ${WORKER_IMAGE}"
prepare_image "${WORKER_IMAGE}" "${IMAGE_ARCHIVE}" HODEI_WORKER_IMAGE_ARCHIVE HODEI_WORKER_IMAGE \
  scripts/build-worker-image.sh

step "Server image ${SERVER_IMAGE}"
prepare_image "${SERVER_IMAGE}" "${SERVER_IMAGE_ARCHIVE}" HODEI_SERVER_IMAGE_ARCHIVE HODEI_SERVER_IMAGE \
  scripts/build-server-image.sh

# Compile first: the cluster then lives only as long as the tests need it, and a compile
# error is not mistaken for a cluster problem. nextest reuses these test binaries.
step "Building the suites"
(cd "${REPO_ROOT}" && cargo test --workspace "${SUITE_TARGETS[@]}" --no-run)
# The hodei CLI, which a_job_in_a_pod_cannot_use_the_api_to_cancel_read_or_queue_jobs serves to a
# Pod: built here, or the testkit compiles it inside that test while its victim job's 60 s
# timeout runs (it did, and the victim timed out).
(cd "${REPO_ROOT}" && cargo build -p hodei-cli --bin hodei)

step "Bringing up the Kind cluster"
setup_started=${SECONDS}
bring_up_cluster
info "cluster ready in $((SECONDS - setup_started))s"

step "Running the Kubernetes E2E suite"
suite_started=${SECONDS}
run_suite
info "suite passed in $((SECONDS - suite_started))s"
CURRENT_STEP="cleanup"
