# shellcheck shell=bash
# Starting and checking the cluster's processes. Sourced by setup-local-cluster.sh after
# common.sh, pki.sh and images.sh.

# is_ours PID: the process's command line names the run directory, so a recycled pid of some
# unrelated process is never mistaken for (or stopped as) a cluster component.
is_ours() {
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "${RUN_DIR}"
}

# start_component NAME BINARY ARGS...
# Starts NAME in its own session (so it outlives this script and the CI step's process group),
# appending to LOG_DIR/NAME.log, unless it is already running.
start_component() {
  local name=$1 binary=$2 pid
  shift 2
  pid="$(component_pid "${name}")"
  if [[ -n "${pid}" ]] && is_ours "${pid}"; then
    info "${name} is already running (pid ${pid})"
    return
  fi
  [[ -x "${binary}" ]] || die "${binary} not found or not executable"
  printf '\n==== %s starting at %s\n' "${name}" "$(date -u +%FT%TZ)" >>"${LOG_DIR}/${name}.log"
  # Without job control this background child is not a process-group leader, so setsid
  # execs in place and $! is the component's own pid.
  setsid "${binary}" "$@" >>"${LOG_DIR}/${name}.log" 2>&1 </dev/null &
  echo $! >"${PID_DIR}/${name}.pid"
  info "started ${name} (pid $!), log ${LOG_DIR}/${name}.log"
}

# Fails early, with the owner, when a port the cluster needs is taken by something else.
require_port_free() {
  local component=$1 port=$2
  [[ -n "$(component_pid "${component}")" ]] && return 0
  if ss -Hltn "sport = :${port}" | grep -q .; then
    ss -Hltnp "sport = :${port}" >&2 || true
    die "port ${port} (needed by ${component}) is already in use; stop that process or set the matching HODEI_CLUSTER_*_PORT"
  fi
}

curl_api() {
  curl -sf --max-time 5 --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/admin.crt" \
    --key "${PKI_DIR}/admin.key" "https://127.0.0.1:${APISERVER_PORT}$1"
}

etcd_healthy() {
  curl -sf --max-time 5 "http://127.0.0.1:${ETCD_CLIENT_PORT}/health" | grep -q '"health":"true"'
}

apiserver_ready() { curl_api /readyz >/dev/null; }

# Controller-manager and scheduler serve /healthz to anyone on their secure ports.
component_healthz() {
  curl -skf --max-time 5 "https://127.0.0.1:$1/healthz" | grep -qx ok
}

containerd_up() {
  ctr --address "${CONTAINERD_SOCKET}" version >/dev/null 2>&1
}

cri_ready() {
  local status
  status="$("${BIN_DIR}/crictl" --config "${CONF_DIR}/crictl.yaml" info 2>/dev/null)" || return 1
  grep -q '"type": "RuntimeReady"' <<<"${status}"
}

node_ready() {
  [[ "$(kctl get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == "True" ]]
}

service_account_exists() {
  kctl -n "$1" get serviceaccount default >/dev/null 2>&1
}

start_containerd() {
  start_component containerd "$(command -v containerd)" --config "${CONF_DIR}/containerd.toml"
  wait_for "containerd on ${CONTAINERD_SOCKET}" 60 containerd containerd_up
}

start_etcd() {
  require_port_free etcd "${ETCD_CLIENT_PORT}"
  require_port_free etcd "${ETCD_PEER_PORT}"
  # Plain HTTP on the loopback interface only: the API server is its only client.
  start_component etcd "${BIN_DIR}/etcd" \
    --name hodei-local \
    --data-dir "${ETCD_DATA_DIR}" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "hodei-local=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --listen-metrics-urls "" \
    --log-level warn
  wait_for "etcd health on 127.0.0.1:${ETCD_CLIENT_PORT}" 60 etcd etcd_healthy
}

start_apiserver() {
  local node_ip=$1
  require_port_free kube-apiserver "${APISERVER_PORT}"
  start_component kube-apiserver "${BIN_DIR}/kube-apiserver" \
    --advertise-address "${node_ip}" \
    --bind-address 0.0.0.0 \
    --secure-port "${APISERVER_PORT}" \
    --etcd-servers "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --client-ca-file "${PKI_DIR}/ca.crt" \
    --tls-cert-file "${PKI_DIR}/apiserver.crt" \
    --tls-private-key-file "${PKI_DIR}/apiserver.key" \
    --kubelet-client-certificate "${PKI_DIR}/apiserver-kubelet-client.crt" \
    --kubelet-client-key "${PKI_DIR}/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "${PKI_DIR}/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${PKI_DIR}/sa.pub" \
    --service-account-signing-key-file "${PKI_DIR}/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --requestheader-client-ca-file "${PKI_DIR}/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${PKI_DIR}/front-proxy-client.crt" \
    --proxy-client-key-file "${PKI_DIR}/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,ServiceAccount \
    --allow-privileged=true \
    --profiling=false \
    --v=1
  wait_for "kube-apiserver /readyz on https://127.0.0.1:${APISERVER_PORT}" 180 kube-apiserver apiserver_ready
}

start_controller_manager() {
  local kubeconfig="${CONF_DIR}/controller-manager.kubeconfig"
  require_port_free kube-controller-manager 10257
  # One controller identity per controller (--use-service-account-credentials), as kubeadm
  # does; the garbage collector is among the default controllers (it deletes the Secrets a
  # worker Pod owns); the root CA goes into every ServiceAccount token volume.
  start_component kube-controller-manager "${BIN_DIR}/kube-controller-manager" \
    --kubeconfig "${kubeconfig}" \
    --authentication-kubeconfig "${kubeconfig}" \
    --authorization-kubeconfig "${kubeconfig}" \
    --bind-address 127.0.0.1 \
    --use-service-account-credentials=true \
    --service-account-private-key-file "${PKI_DIR}/sa.key" \
    --root-ca-file "${PKI_DIR}/ca.crt" \
    --cluster-signing-cert-file "${PKI_DIR}/ca.crt" \
    --cluster-signing-key-file "${PKI_DIR}/ca.key" \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --controllers '*' \
    --leader-elect=false \
    --profiling=false \
    --v=1
  wait_for "kube-controller-manager /healthz on 127.0.0.1:10257" 120 kube-controller-manager component_healthz 10257
}

start_scheduler() {
  local kubeconfig="${CONF_DIR}/scheduler.kubeconfig"
  require_port_free kube-scheduler 10259
  start_component kube-scheduler "${BIN_DIR}/kube-scheduler" \
    --kubeconfig "${kubeconfig}" \
    --authentication-kubeconfig "${kubeconfig}" \
    --authorization-kubeconfig "${kubeconfig}" \
    --bind-address 127.0.0.1 \
    --leader-elect=false \
    --profiling=false \
    --v=1
  wait_for "kube-scheduler /healthz on 127.0.0.1:10259" 120 kube-scheduler component_healthz 10259
}

# --containerd is cAdvisor's (deprecated, still honoured) socket flag: without it cAdvisor looks
# for /run/containerd/containerd.sock and Pods get no CPU/memory statistics.
start_kubelet() {
  local node=$1 node_ip=$2
  require_port_free kubelet 10250
  require_port_free kubelet 10248
  start_component kubelet "${BIN_DIR}/kubelet" \
    --config "${CONF_DIR}/kubelet-config.yaml" \
    --kubeconfig "${CONF_DIR}/kubelet.kubeconfig" \
    --root-dir "${KUBELET_ROOT}" \
    --hostname-override "${node}" \
    --node-ip "${node_ip}" \
    --containerd "${CONTAINERD_SOCKET}" \
    --v=1
  wait_for "node ${node} Ready" 180 kubelet node_ready "${node}"
}
