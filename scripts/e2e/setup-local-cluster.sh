#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster from upstream sources, with no image registry:
# etcd and the control plane built from the Go module proxy, Debian's containerd/runc/CNI
# plugins, a locally built pause image. See docs/air-gapped-cluster.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/e2e/lib/common.sh
source "${SCRIPT_DIR}/lib/common.sh"
# shellcheck source=scripts/e2e/lib/build.sh
source "${SCRIPT_DIR}/lib/build.sh"
# shellcheck source=scripts/e2e/lib/images.sh
source "${SCRIPT_DIR}/lib/images.sh"
# shellcheck source=scripts/e2e/lib/pki.sh
source "${SCRIPT_DIR}/lib/pki.sh"
# shellcheck source=scripts/e2e/lib/components.sh
source "${SCRIPT_DIR}/lib/components.sh"
# shellcheck source=scripts/e2e/lib/smoke.sh
source "${SCRIPT_DIR}/lib/smoke.sh"

NODE_NAME="${HODEI_CLUSTER_NODE_NAME:-hodei-local-node}"
WORKER_IMAGE="${HODEI_WORKER_IMAGE:-hodei-worker:e2e-test}"
TEST_NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"

usage() {
  cat <<EOF
Usage: $(basename "$0") [--build-only] [--smoke-test] [--help]

Builds (once, cached) and starts a single-node Kubernetes ${KUBERNETES_VERSION} cluster on this
machine without any image registry, then prints its kubeconfig. Safe to run again: a running
cluster is verified, missing pieces are started, nothing is rebuilt.

  --build-only   only build the binaries and images into the cache, start nothing
  --smoke-test   after bring-up, prove the cluster: Pods of local images run echo to
                 completion and a Pod reaches a TCP listener on the host
  -h, --help     this text

Environment (defaults in brackets):
  HODEI_CLUSTER_RUN_DIR     logs, pids, PKI, kubeconfig, state [/tmp/hodei-local-cluster]
  HODEI_CLUSTER_CACHE       build cache, kept by cleanup [~/.cache/hodei-local-cluster]
  HODEI_WORKER_IMAGE        Docker image imported into containerd [hodei-worker:e2e-test]
  HODEI_K8S_TEST_NAMESPACE  test namespace [hodei-e2e]
  HODEI_CLUSTER_NODE_NAME   node name [hodei-local-node]
  HODEI_CLUSTER_NODE_IP     node IP [the source address of the default route]
  HODEI_CLUSTER_POD_CIDR / _POD_GATEWAY   Pod network [10.244.0.0/24 / 10.244.0.1]
  HODEI_CLUSTER_APISERVER_PORT            API server port [6443]

Pinned versions: scripts/e2e/versions.env. Tear down: scripts/e2e/cleanup-local-cluster.sh.
EOF
}

BUILD_ONLY=false
SMOKE_TEST=false
while (($#)); do
  case "$1" in
    --build-only) BUILD_ONLY=true ;;
    --smoke-test) SMOKE_TEST=true ;;
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

on_exit() {
  local status=$?
  if ((status != 0)); then
    printf '\nSetup failed (exit %s). Component logs: %s\n' "${status}" "${LOG_DIR}" >&2
    printf 'Tear down what was started: %s/cleanup-local-cluster.sh\n' "${SCRIPT_DIR}" >&2
  fi
}
trap on_exit EXIT

node_ip() {
  if [[ -n "${HODEI_CLUSTER_NODE_IP:-}" ]]; then
    echo "${HODEI_CLUSTER_NODE_IP}"
    return
  fi
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')"
  [[ -n "${ip}" ]] || ip="$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)"
  [[ -n "${ip}" ]] || die "cannot determine the node IP; set HODEI_CLUSTER_NODE_IP"
  echo "${ip}"
}

install_host_packages() {
  local packages=()
  command -v containerd >/dev/null || packages+=(containerd)
  command -v runc >/dev/null || packages+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    packages+=(containernetworking-plugins)
  command -v iptables >/dev/null || packages+=(iptables)
  command -v openssl >/dev/null || packages+=(openssl)
  command -v gcc >/dev/null || packages+=(gcc libc6-dev)
  command -v busybox >/dev/null || packages+=(busybox-static)
  if ((${#packages[@]})); then
    info "installing ${packages[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
  else
    info "containerd $(containerd --version | awk '{print $3}'), runc, CNI plugins, iptables, openssl, gcc, busybox are installed"
  fi
}

# cgroup v1 (this machine) and v2 both work with the cgroupfs driver, as long as the
# controllers the kubelet needs for QoS cgroups are mounted.
cgroups_per_qos() {
  local controller
  if [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]]; then
    echo true
    return
  fi
  for controller in cpu cpuacct cpuset memory pids; do
    if ! grep -qw "${controller}" <(awk '$3 == "cgroup" {print $4}' /proc/mounts | tr ',' '\n'); then
      warn "cgroup v1 controller ${controller} is not mounted: QoS cgroups disabled"
      echo false
      return
    fi
  done
  echo true
}

# Lowering an OOM score below 0 needs CAP_SYS_RESOURCE (capability 24), which some CI sandboxes
# drop from the bounding set.
restrict_oom_score_adj() {
  local bounding
  bounding="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
  if (((16#${bounding} >> 24) & 1)); then
    echo false
  else
    warn "no CAP_SYS_RESOURCE here: containerd will clamp Pod OOM scores to its own"
    echo true
  fi
}

# Host-dependent settings of the templates, detected once by detect_host_settings.
PER_QOS=true
RESTRICT_OOM=false

detect_host_settings() {
  PER_QOS="$(cgroups_per_qos)"
  RESTRICT_OOM="$(restrict_oom_score_adj)"
  info "cgroup $(stat -fc %T /sys/fs/cgroup | sed 's/tmpfs/v1/;s/cgroup2fs/v2/'), QoS cgroups ${PER_QOS}, clamp OOM scores ${RESTRICT_OOM}"
}

render() {
  local template=$1 output=$2 enforce
  if [[ "${PER_QOS}" == true ]]; then enforce='["pods"]'; else enforce='[]'; fi
  sed -e "s|@RUN_DIR@|${RUN_DIR}|g" \
    -e "s|@CONTAINERD_ROOT@|${CONTAINERD_ROOT}|g" \
    -e "s|@CONTAINERD_STATE@|${CONTAINERD_STATE}|g" \
    -e "s|@CONTAINERD_SOCKET@|${CONTAINERD_SOCKET}|g" \
    -e "s|@RUNC_ROOT@|${RUN_DIR}/containerd/runc|g" \
    -e "s|@RUNC@|$(command -v runc)|g" \
    -e "s|@PAUSE_IMAGE@|${PAUSE_IMAGE}|g" \
    -e "s|@CNI_BIN_DIR@|/usr/lib/cni|g" \
    -e "s|@CNI_CONF_DIR@|${CNI_CONF_DIR}|g" \
    -e "s|@CNI_STATE_DIR@|${CNI_STATE_DIR}|g" \
    -e "s|@CNI_BRIDGE@|${CNI_BRIDGE}|g" \
    -e "s|@CNI_NETWORK@|${CNI_NETWORK}|g" \
    -e "s|@POD_CIDR@|${POD_CIDR}|g" \
    -e "s|@POD_GATEWAY@|${POD_GATEWAY}|g" \
    -e "s|@PKI_DIR@|${PKI_DIR}|g" \
    -e "s|@CGROUPS_PER_QOS@|${PER_QOS}|g" \
    -e "s|@ENFORCE_NODE_ALLOCATABLE@|${enforce}|g" \
    -e "s|@RESTRICT_OOM_SCORE_ADJ@|${RESTRICT_OOM}|g" \
    "${REPO_ROOT}/deploy/local-cluster/${template}" >"${output}"
}

# iptables_rule CHAIN RULE...: appends nothing twice; every rule carries the cluster's comment
# so cleanup deletes exactly these.
iptables_rule() {
  local chain=$1
  shift
  local rule=("$@" -m comment --comment "${IPTABLES_COMMENT}" -j ACCEPT)
  iptables -C "${chain}" "${rule[@]}" 2>/dev/null || iptables -I "${chain}" 1 "${rule[@]}"
}

open_pod_network() {
  # The host itself is reached through INPUT (policy ACCEPT here). Docker sets FORWARD to DROP,
  # which would cut Pod↔Pod traffic over the bridge (br_netfilter) and Pod→outside traffic.
  sysctl -qw net.ipv4.ip_forward=1
  iptables_rule FORWARD -i "${CNI_BRIDGE}"
  iptables_rule FORWARD -o "${CNI_BRIDGE}" -m conntrack --ctstate RELATED,ESTABLISHED
  info "FORWARD accepts traffic from ${CNI_BRIDGE} and replies to it (rules tagged '${IPTABLES_COMMENT}')"
}

# The manifests name the namespace hodei-e2e; the test namespace takes its place, only in
# name:/namespace: fields (so the ServiceAccount hodei-e2e-provider keeps its name).
apply_test_manifests() {
  local manifest applied=false
  for manifest in namespace-test.yaml rbac-test.yaml; do
    if [[ -f "${REPO_ROOT}/deploy/kubernetes/${manifest}" ]]; then
      info "applying deploy/kubernetes/${manifest} (namespace ${TEST_NAMESPACE})"
      sed -E "s/^([[:space:]]*(name|namespace): )hodei-e2e\$/\1${TEST_NAMESPACE}/" \
        "${REPO_ROOT}/deploy/kubernetes/${manifest}" | kctl apply -f - | sed 's/^/    /'
      applied=true
    else
      warn "deploy/kubernetes/${manifest} does not exist yet: skipped"
    fi
  done
  if ! kctl get namespace "${TEST_NAMESPACE}" >/dev/null 2>&1; then
    ${applied} && warn "the manifests did not create namespace ${TEST_NAMESPACE}"
    info "creating a plain namespace ${TEST_NAMESPACE}"
    kctl create namespace "${TEST_NAMESPACE}" | sed 's/^/    /'
  fi
}

main() {
  step "Local cluster: Kubernetes ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}, crictl ${CRICTL_VERSION}"
  info "run dir ${RUN_DIR}; build cache ${CACHE_DIR}"
  require_root
  require_commands curl ip ss sysctl sed awk tar sha256sum setsid

  step "Host packages (containerd, runc, CNI plugins)"
  install_host_packages
  require_commands containerd ctr runc iptables openssl gcc busybox

  step "Build components from the Go module proxy (cached in ${BIN_DIR})"
  local build_start=${SECONDS}
  build_all
  info "binaries ready in $((SECONDS - build_start))s"

  step "Build local images (pause, busybox)"
  build_pause_image
  build_busybox_image

  if ${BUILD_ONLY}; then
    step "Build only: done"
    return
  fi

  local node_ip
  node_ip="$(node_ip)"
  step "Prepare ${RUN_DIR} (node ${NODE_NAME}, IP ${node_ip})"
  mkdir -p "${LOG_DIR}" "${PID_DIR}" "${CONF_DIR}" "${ETCD_DATA_DIR}" "${CONTAINERD_ROOT}" \
    "${CONTAINERD_STATE}" "${KUBELET_ROOT}" "${CNI_CONF_DIR}" "${CNI_STATE_DIR}" "${RUN_DIR}/pod-logs"
  chmod 700 "${ETCD_DATA_DIR}"
  mkdir -p "${RUN_DIR}/bin"
  ln -sfn "${BIN_DIR}/kubectl" "${RUN_DIR}/bin/kubectl"
  ln -sfn "${BIN_DIR}/crictl" "${RUN_DIR}/bin/crictl"

  step "Certificates and kubeconfigs"
  generate_pki "${NODE_NAME}" "${node_ip}"

  step "Configuration (containerd, CNI, kubelet) from deploy/local-cluster"
  detect_host_settings
  render containerd.toml.in "${CONF_DIR}/containerd.toml"
  render 10-hodei-bridge.conflist.in "${CNI_CONF_DIR}/10-hodei-bridge.conflist"
  render kubelet-config.yaml.in "${CONF_DIR}/kubelet-config.yaml"
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' \
    "${CONTAINERD_SOCKET}" "${CONTAINERD_SOCKET}" >"${CONF_DIR}/crictl.yaml"
  info "rendered into ${CONF_DIR} and ${CNI_CONF_DIR}"

  step "Start containerd (dedicated instance, socket ${CONTAINERD_SOCKET})"
  start_containerd
  import_archive "${IMAGE_DIR}/pause.tar"
  import_archive "${IMAGE_DIR}/busybox.tar"
  wait_for "containerd's CRI plugin" 60 containerd cri_ready
  info "images: $(ctr_k8s images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

  step "Pod network"
  open_pod_network

  step "Start etcd"
  start_etcd

  step "Start kube-apiserver"
  start_apiserver "${node_ip}"

  step "Start kube-controller-manager and kube-scheduler"
  start_controller_manager
  start_scheduler

  step "Start kubelet"
  start_kubelet "${NODE_NAME}" "${node_ip}"

  step "Wait for the default ServiceAccount"
  wait_for "ServiceAccount default/default" 120 kube-controller-manager service_account_exists default

  step "Apply the test namespace and RBAC (deploy/kubernetes)"
  apply_test_manifests
  wait_for "ServiceAccount ${TEST_NAMESPACE}/default" 120 kube-controller-manager service_account_exists "${TEST_NAMESPACE}"

  step "Import ${WORKER_IMAGE} from Docker into containerd"
  import_docker_image "${WORKER_IMAGE}"

  echo "${POD_GATEWAY}" >"${RUN_DIR}/host-address"

  if ${SMOKE_TEST}; then
    smoke_test "${WORKER_IMAGE}"
  fi

  step "Cluster is up"
  kctl get nodes -o wide | sed 's/^/    /'
  cat <<EOF

    kubeconfig:    ${KUBECONFIG_PATH}
    kubectl:       ${RUN_DIR}/bin/kubectl (${KUBERNETES_VERSION})
    host address:  ${POD_GATEWAY} (Pods reach host listeners on 0.0.0.0 here; also in ${RUN_DIR}/host-address)
    logs:          ${LOG_DIR}
    tear down:     ${SCRIPT_DIR}/cleanup-local-cluster.sh

    export KUBECONFIG=${KUBECONFIG_PATH} PATH=${RUN_DIR}/bin:\$PATH
EOF
}

main
