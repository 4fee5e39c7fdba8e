#!/usr/bin/env bash
# Tears down the cluster of setup-local-cluster.sh completely: Pods, processes, mounts, network
# devices, iptables rules, cgroups and the run directory. The build cache is kept.
# Safe to run twice and when nothing is running; ends by verifying that nothing is left.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/e2e/lib/common.sh
source "${SCRIPT_DIR}/lib/common.sh"

usage() {
  cat <<EOF
Usage: $(basename "$0") [--help]

Stops the local cluster started by setup-local-cluster.sh (kubelet first, after removing every
Pod sandbox through the CRI), unmounts everything under ${RUN_DIR}, deletes the CNI bridge
${CNI_BRIDGE}, its veths and the cluster's iptables rules and cgroups, and removes
${RUN_DIR}. Keeps the build cache (${CACHE_DIR}). Exits non-zero if anything remains.

Environment: HODEI_CLUSTER_RUN_DIR, HODEI_CLUSTER_CACHE (as for setup-local-cluster.sh).
EOF
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  "") ;;
  *)
    usage >&2
    die "unknown argument: $1"
    ;;
esac

CRICTL="${BIN_DIR}/crictl"
# Records what the sandboxes used before they go, to check it went with them.
NETNS_LIST="$(mktemp)"
trap 'rm -f "${NETNS_LIST}"' EXIT

# Processes of this cluster: a component (or containerd shim) binary whose command line names
# the run directory. Matching both keeps unrelated processes (a `tail -f` of a log, the Docker
# engine's containerd and shims) out.
cluster_pids() {
  local dir pid exe
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ ${pid} -eq $$ ]] && continue
    exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)" || continue
    case "${exe##*/}" in
      containerd | containerd-shim* | etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kubelet) ;;
      *) continue ;;
    esac
    if tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "${RUN_DIR}"; then
      echo "${pid}"
    fi
  done
}

# stop_pid NAME PID: TERM, then KILL after a 20 s grace period (polled every 0.2 s).
stop_pid() {
  local name=$1 pid=$2 polls=0
  kill -TERM "${pid}" 2>/dev/null || return 0
  while kill -0 "${pid}" 2>/dev/null; do
    if ((polls >= 100)); then
      warn "${name} (pid ${pid}) ignored SIGTERM for 20s: SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.2
    polls=$((polls + 1))
  done
  info "stopped ${name} (pid ${pid})"
}

stop_component() {
  local name=$1 pid
  pid="$(component_pid "${name}")"
  if [[ -z "${pid}" ]]; then
    info "${name} is not running"
  elif ! tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "${RUN_DIR}"; then
    warn "pid ${pid} of ${PID_DIR}/${name}.pid is not ${name} of this cluster: left alone"
  else
    stop_pid "${name}" "${pid}"
  fi
  rm -f "${PID_DIR}/${name}.pid"
}

remove_pods() {
  if [[ -z "$(component_pid containerd)" ]] || [[ ! -S "${CONTAINERD_SOCKET}" ]]; then
    info "containerd is not running: no Pod sandbox to remove through the CRI"
    return
  fi
  if [[ -x "${CRICTL}" ]]; then
    local crictl=("${CRICTL}" --config "${CONF_DIR}/crictl.yaml" --runtime-endpoint "unix://${CONTAINERD_SOCKET}" --timeout 60s) ids=() id
    mapfile -t ids < <("${crictl[@]}" pods -q 2>/dev/null || true)
    for id in "${ids[@]}"; do
      "${crictl[@]}" inspectp "${id}" 2>/dev/null |
        sed -n 's|.*"path": "\(/[^"]*netns/[^"]*\)".*|\1|p' >>"${NETNS_LIST}" || true
    done
    if ((${#ids[@]})); then
      # StopPodSandbox runs the CNI DEL, which releases the address, the veth and the
      # masquerade rules of each Pod; RemovePodSandbox then deletes its containers.
      "${crictl[@]}" stopp "${ids[@]}" >/dev/null || warn "crictl stopp failed for some sandboxes"
      "${crictl[@]}" rmp -f "${ids[@]}" >/dev/null || warn "crictl rmp failed for some sandboxes"
      info "removed ${#ids[@]} Pod sandbox(es) through the CRI"
    else
      info "no Pod sandbox"
    fi
  else
    warn "${CRICTL} missing: removing containers with ctr only (no CNI teardown)"
  fi
  # Whatever the CRI did not remove (or without crictl): kill tasks, delete containers.
  local task container
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
    ctr_k8s tasks kill -s SIGKILL "${task}" >/dev/null 2>&1 || true
    ctr_k8s tasks delete -f "${task}" >/dev/null 2>&1 || true
    info "deleted leftover containerd task ${task}"
  done
  for container in $(ctr_k8s containers ls -q 2>/dev/null); do
    ctr_k8s containers delete "${container}" >/dev/null 2>&1 || true
    info "deleted leftover containerd container ${container}"
  done
}

# Container processes whose shim is gone survive in runc's state; runc can still kill them.
kill_runc_leftovers() {
  local root id
  for root in "${RUN_DIR}"/containerd/runc/*; do
    [[ -d "${root}" ]] || continue
    for id in $(runc --root "${root}" list -q 2>/dev/null); do
      runc --root "${root}" kill "${id}" KILL 2>/dev/null || true
      runc --root "${root}" delete -f "${id}" 2>/dev/null || true
      info "killed leftover runc container ${id}"
    done
  done
}

cluster_mounts() {
  awk -v root="${RUN_DIR}/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r -u
}

unmount_all() {
  local mount count=0 pass
  # Deepest first; a second pass catches mounts that were stacked.
  for pass in 1 2 3; do
    for mount in $(cluster_mounts); do
      umount "${mount}" 2>/dev/null || umount -l "${mount}" 2>/dev/null || warn "cannot unmount ${mount}"
      count=$((count + 1))
    done
    [[ -z "$(cluster_mounts)" ]] && break
    sleep "${pass}"
  done
  info "unmounted ${count} mount(s) under ${RUN_DIR}"
  local netns
  while read -r netns; do
    [[ -n "${netns}" && -e "${netns}" ]] || continue
    umount "${netns}" 2>/dev/null || umount -l "${netns}" 2>/dev/null || true
    rm -f "${netns}"
    info "removed leftover network namespace ${netns}"
  done <"${NETNS_LIST}"
}

remove_network() {
  local veth
  for veth in $(ip -o link show master "${CNI_BRIDGE}" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "${veth}" 2>/dev/null && info "deleted veth ${veth}"
  done
  if ip link show "${CNI_BRIDGE}" >/dev/null 2>&1; then
    ip link delete "${CNI_BRIDGE}"
    info "deleted bridge ${CNI_BRIDGE}"
  else
    info "bridge ${CNI_BRIDGE} does not exist"
  fi
}

# Our FORWARD rules carry IPTABLES_COMMENT; the bridge plugin's masquerade rules carry
# `name: "<CNI_NETWORK>"` and jump to per-Pod CNI-* chains (normally the CNI DEL of each sandbox
# already removed those). Both name this cluster's bridge, so another cluster's rules stay.
cluster_iptables_rules() {
  local cni_comment="name: \\\"${CNI_NETWORK}\\\""
  iptables -t "$1" -S 2>/dev/null | grep -F -e "${IPTABLES_COMMENT}" -e "${cni_comment}" |
    grep -- '^-A ' || true
}

remove_iptables_rules() {
  local table rule chain count=0
  for table in filter nat; do
    while read -r rule; do
      [[ -n "${rule}" ]] || continue
      chain="$(sed -n 's/.* -j \(CNI-[0-9a-f]*\).*/\1/p' <<<"${rule}")"
      # The rule text is iptables' own quoting (comments hold quotes): let the shell parse it.
      eval "iptables -t ${table} ${rule/#-A /-D }" 2>/dev/null && count=$((count + 1))
      if [[ -n "${chain}" ]]; then
        iptables -t "${table}" -F "${chain}" 2>/dev/null || true
        iptables -t "${table}" -X "${chain}" 2>/dev/null || true
      fi
    done < <(cluster_iptables_rules "${table}")
  done
  info "deleted ${count} iptables rule(s)"
}

# The kubelet's QoS and Pod cgroups (cgroupfs driver) in every hierarchy.
other_kubelets() {
  local dir
  for dir in /proc/[0-9]*; do
    [[ "$(readlink "${dir}/exe" 2>/dev/null)" == */kubelet ]] && echo "${dir#/proc/}"
  done
  return 0
}

cluster_cgroups() {
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name kubepods 2>/dev/null || true
}

remove_cgroups() {
  local cgroup dir count=0
  # kubepods is the cgroup of every kubelet on the host with the cgroupfs driver: leave it to
  # any kubelet still running (another cluster's).
  if [[ -n "$(other_kubelets)" ]]; then
    info "another kubelet runs on this host (pid $(other_kubelets | tr '\n' ' ')): kubepods cgroups left to it"
    return
  fi
  for cgroup in $(cluster_cgroups); do
    while read -r dir; do
      rmdir "${dir}" 2>/dev/null && count=$((count + 1))
    done < <(find "${cgroup}" -depth -type d)
  done
  info "removed ${count} cgroup(s)"
}

verify() {
  local failed=0 pids mounts
  pids="$(cluster_pids)"
  if [[ -n "${pids}" ]]; then
    warn "processes of the cluster remain:"
    for pid in ${pids}; do ps -o pid=,args= -p "${pid}" >&2 || true; done
    failed=1
  else
    info "ok: no process of the cluster (components, containerd, shims)"
  fi
  mounts="$(cluster_mounts)"
  if [[ -n "${mounts}" ]]; then
    warn "mounts remain under ${RUN_DIR}: ${mounts//$'\n'/ }"
    failed=1
  else
    info "ok: no mount under ${RUN_DIR}"
  fi
  local netns left=""
  while read -r netns; do
    [[ -n "${netns}" && -e "${netns}" ]] && left+=" ${netns}"
  done <"${NETNS_LIST}"
  if [[ -n "${left}" ]]; then
    warn "network namespaces remain:${left}"
    failed=1
  else
    info "ok: no network namespace of a Pod sandbox"
  fi
  if ip link show "${CNI_BRIDGE}" >/dev/null 2>&1 || [[ -n "$(ip -o link show master "${CNI_BRIDGE}" 2>/dev/null)" ]]; then
    warn "network device ${CNI_BRIDGE} (or its veths) remains"
    failed=1
  else
    info "ok: no bridge ${CNI_BRIDGE}, no veth on it"
  fi
  local rules
  rules="$(cluster_iptables_rules filter)$(cluster_iptables_rules nat)"
  if [[ -n "${rules}" ]]; then
    warn "iptables rules remain: ${rules}"
    failed=1
  else
    info "ok: no iptables rule of the cluster"
  fi
  if [[ -n "$(other_kubelets)" ]]; then
    info "ok: kubepods cgroups belong to another kubelet still running"
  elif [[ -n "$(cluster_cgroups)" ]]; then
    warn "cgroups remain: $(cluster_cgroups | tr '\n' ' ')"
    failed=1
  else
    info "ok: no kubepods cgroup"
  fi
  if [[ -e "${RUN_DIR}" ]]; then
    warn "${RUN_DIR} remains"
    failed=1
  else
    info "ok: ${RUN_DIR} is gone (build cache kept: ${CACHE_DIR})"
  fi
  return "${failed}"
}

main() {
  step "Clean up the local cluster (run dir ${RUN_DIR})"
  require_root
  require_commands ip iptables awk

  step "Stop kubelet (so it recreates nothing)"
  stop_component kubelet

  step "Remove every Pod sandbox and container through the CRI"
  remove_pods

  step "Stop the control plane"
  # Each takes a second or two to shut down gracefully: stop them together, etcd last.
  stop_component kube-scheduler &
  stop_component kube-controller-manager &
  stop_component kube-apiserver &
  wait
  stop_component etcd

  step "Stop containerd and any shim or container left"
  stop_component containerd
  kill_runc_leftovers
  local pid
  for pid in $(cluster_pids); do
    stop_pid "$(ps -o comm= -p "${pid}" 2>/dev/null || echo process)" "${pid}"
  done

  step "Unmount everything under ${RUN_DIR}"
  unmount_all

  step "Remove the Pod network (bridge, veths, iptables rules) and cgroups"
  remove_network
  remove_iptables_rules
  remove_cgroups

  step "Remove ${RUN_DIR}"
  if [[ -n "$(cluster_mounts)" ]]; then
    die "mounts remain under ${RUN_DIR}; not deleting it (would reach into mounted file systems)"
  fi
  rm -rf "${RUN_DIR}"
  # containerd 1.6 always puts shim sockets in /run/containerd/s, whatever its state directory;
  # drop those directories when they are empty (any containerd recreates them on demand).
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  info "removed"

  step "Verify that nothing of the cluster remains"
  verify || die "cleanup incomplete (see above)"
  step "Clean"
}

main
