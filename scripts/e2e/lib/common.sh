# shellcheck shell=bash
# Shared helpers of setup-local-cluster.sh and cleanup-local-cluster.sh: logging, paths and
# deadline-bound waiting. Sourced, never executed.
# The paths and settings below are used by the scripts that source this file:
# shellcheck disable=SC2034

LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LIB_DIR}/../../.." && pwd)"
# shellcheck source=scripts/e2e/versions.env
source "${REPO_ROOT}/scripts/e2e/versions.env"

# Everything the cluster writes at run time lives under RUN_DIR (logs, pids, PKI, kubeconfigs,
# containerd and kubelet state); the build cache lives under CACHE_DIR and survives cleanup.
RUN_DIR="${HODEI_CLUSTER_RUN_DIR:-/tmp/hodei-local-cluster}"
CACHE_DIR="${HODEI_CLUSTER_CACHE:-${HOME}/.cache/hodei-local-cluster}"
BIN_DIR="${CACHE_DIR}/${KUBERNETES_VERSION}/bin"

LOG_DIR="${RUN_DIR}/logs"
PID_DIR="${RUN_DIR}/pids"
PKI_DIR="${RUN_DIR}/pki"
CONF_DIR="${RUN_DIR}/config"
ETCD_DATA_DIR="${RUN_DIR}/etcd"
CONTAINERD_ROOT="${RUN_DIR}/containerd/root"
CONTAINERD_STATE="${RUN_DIR}/containerd/state"
CONTAINERD_SOCKET="${RUN_DIR}/containerd/containerd.sock"
KUBELET_ROOT="${RUN_DIR}/kubelet"
CNI_CONF_DIR="${RUN_DIR}/cni/net.d"
CNI_STATE_DIR="${RUN_DIR}/cni/state"
KUBECONFIG_PATH="${RUN_DIR}/kubeconfig"

# Network layout. Pods get addresses from POD_CIDR on the CNI bridge; its first address is the
# host as seen from Pods. Neither range may collide with Docker's 172.17.0.0/16 default bridge.
CNI_BRIDGE="${HODEI_CLUSTER_BRIDGE:-hodei-cni0}"
POD_CIDR="${HODEI_CLUSTER_POD_CIDR:-10.244.0.0/24}"
POD_GATEWAY="${HODEI_CLUSTER_POD_GATEWAY:-10.244.0.1}"
SERVICE_CIDR="${HODEI_CLUSTER_SERVICE_CIDR:-10.96.0.0/16}"
SERVICE_API_IP="${HODEI_CLUSTER_SERVICE_API_IP:-10.96.0.1}"
APISERVER_PORT="${HODEI_CLUSTER_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${HODEI_CLUSTER_ETCD_PORT:-2379}"
ETCD_PEER_PORT="${HODEI_CLUSTER_ETCD_PEER_PORT:-2380}"
# The CNI network is named after its bridge, and the iptables rules the cluster adds carry a
# comment naming it too, so cleanup finds exactly this cluster's rules (the bridge plugin's
# masquerade rules carry `name: "<network>"`).
CNI_NETWORK="${CNI_BRIDGE}"
IPTABLES_COMMENT="hodei-local-cluster:${CNI_BRIDGE}"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

require_root() {
  [[ ${EUID} -eq 0 ]] || die "this script manages mounts, cgroups and network devices: run it as root"
}

require_commands() {
  local missing=() cmd
  for cmd in "$@"; do
    command -v "${cmd}" >/dev/null 2>&1 || missing+=("${cmd}")
  done
  ((${#missing[@]} == 0)) || die "missing commands: ${missing[*]}"
}

# Pid of a component started by setup (empty when it is not running).
component_pid() {
  local name=$1 pid
  [[ -f "${PID_DIR}/${name}.pid" ]] || return 0
  pid="$(<"${PID_DIR}/${name}.pid")"
  # A killed component can linger as a zombie until init reaps it: that is not running.
  if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null && [[ "$(ps -o stat= -p "${pid}")" != Z* ]]; then
    echo "${pid}"
  fi
}

show_log_tail() {
  local name=$1 file="${LOG_DIR}/$1.log"
  if [[ -f "${file}" ]]; then
    printf -- '---- last 30 lines of %s ----\n' "${file}" >&2
    tail -n 30 "${file}" >&2
    printf -- '---- end of %s ----\n' "${file}" >&2
  else
    printf 'no log file %s\n' "${file}" >&2
  fi
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMPONENT_FOR_LOGS COMMAND...
# Polls COMMAND once a second until it succeeds. On timeout (or when the component process has
# died) prints the component's last log lines and exits.
wait_for() {
  local what=$1 timeout=$2 component=$3
  shift 3
  local start=${SECONDS}
  info "waiting up to ${timeout}s for ${what}"
  until "$@" >/dev/null 2>&1; do
    if [[ -n "${component}" && "${component}" != "-" && -z "$(component_pid "${component}")" ]]; then
      show_log_tail "${component}"
      die "${component} is not running while waiting for ${what}"
    fi
    if ((SECONDS - start >= timeout)); then
      [[ "${component}" != "-" ]] && show_log_tail "${component}"
      die "timed out after ${timeout}s waiting for ${what}"
    fi
    sleep 1
  done
  info "ok: ${what} ($((SECONDS - start))s)"
}

kctl() {
  "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"
}

ctr_k8s() {
  ctr --address "${CONTAINERD_SOCKET}" --namespace k8s.io "$@"
}
