# shellcheck shell=bash
# The cluster's proof, run by `setup-local-cluster.sh --smoke-test`: Pods of locally imported
# images run to completion with their logs readable, and a Pod reaches a TCP listener on the host
# through the CNI bridge's gateway (the path a worker Pod takes to hodei-server).

SMOKE_NAMESPACE="${HODEI_K8S_TEST_NAMESPACE:-hodei-e2e}"
SMOKE_HTTP_PID=""
SMOKE_HTTP_DIR=""

stop_smoke_http_server() {
  if [[ -n "${SMOKE_HTTP_PID}" ]]; then
    kill "${SMOKE_HTTP_PID}" 2>/dev/null || true
    wait "${SMOKE_HTTP_PID}" 2>/dev/null || true
    SMOKE_HTTP_PID=""
  fi
  [[ -n "${SMOKE_HTTP_DIR}" ]] && rm -rf "${SMOKE_HTTP_DIR}"
  SMOKE_HTTP_DIR=""
}

# run_pod_to_completion NAME IMAGE EXPECTED_LOG COMMAND...
run_pod_to_completion() {
  local name=$1 image=$2 expected=$3
  shift 3
  local command_json
  command_json="$(printf '"%s",' "$@")"
  command_json="[${command_json%,}]"
  kctl -n "${SMOKE_NAMESPACE}" delete pod "${name}" --ignore-not-found --wait=true >/dev/null
  info "pod ${SMOKE_NAMESPACE}/${name}: image ${image}, command ${command_json}"
  kctl -n "${SMOKE_NAMESPACE}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  labels:
    app.kubernetes.io/managed-by: hodei-local-cluster-smoke-test
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  # Pod Security "restricted" (enforced on the test namespace), as the worker Pods run.
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  containers:
  - name: main
    image: ${image}
    imagePullPolicy: IfNotPresent
    command: ${command_json}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities:
        drop: ["ALL"]
EOF
  local phase="" deadline=$((SECONDS + 120))
  while ((SECONDS < deadline)); do
    phase="$(kctl -n "${SMOKE_NAMESPACE}" get pod "${name}" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "${phase}" == Succeeded || "${phase}" == Failed ]] && break
    sleep 1
  done
  if [[ "${phase}" != Succeeded ]]; then
    warn "pod ${name} ended in phase '${phase:-unknown}'"
    kctl -n "${SMOKE_NAMESPACE}" describe pod "${name}" >&2 || true
    kctl -n "${SMOKE_NAMESPACE}" logs "${name}" >&2 || true
    show_log_tail kubelet
    die "pod ${name} did not succeed"
  fi
  local logs
  logs="$(kctl -n "${SMOKE_NAMESPACE}" logs "${name}")"
  printf '    kubectl logs %s: %s\n' "${name}" "${logs}"
  grep -qF -- "${expected}" <<<"${logs}" || die "pod ${name} logs lack '${expected}'"
}

smoke_test() {
  local worker_image=$1
  trap stop_smoke_http_server RETURN
  step "Smoke test: a Pod of a local image runs echo to completion"
  run_pod_to_completion smoke-echo-busybox "${BUSYBOX_IMAGE}" "hello from pod" \
    /bin/busybox echo "hello from pod"
  if image_in_containerd "$(qualified_image_name "${worker_image}")"; then
    run_pod_to_completion smoke-echo-worker "${worker_image}" "hello from pod" \
      /bin/sh -c "echo hello from pod"
  else
    warn "${worker_image} is not in containerd: skipped the worker-image Pod (build the image, re-run setup)"
  fi

  step "Smoke test: a Pod reaches a TCP listener on the host at ${POD_GATEWAY}"
  require_commands python3
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])')"
  SMOKE_HTTP_DIR="$(mktemp -d)"
  echo "hello from the host" >"${SMOKE_HTTP_DIR}/probe.txt"
  python3 -m http.server --bind 0.0.0.0 --directory "${SMOKE_HTTP_DIR}" "${port}" \
    >"${LOG_DIR}/smoke-http-server.log" 2>&1 &
  SMOKE_HTTP_PID=$!
  wait_for "host HTTP listener on 0.0.0.0:${port}" 20 - curl -sf "http://127.0.0.1:${port}/probe.txt"
  # No `wget -T`: Debian's busybox 1.35 wget crashes with it; the Pod deadline bounds the wait.
  run_pod_to_completion smoke-host-reach "${BUSYBOX_IMAGE}" "hello from the host" \
    /bin/busybox wget -q -O - "http://${POD_GATEWAY}:${port}/probe.txt"

  step "Smoke test: cluster state"
  kctl get nodes -o wide
  kctl get pods -A -o wide
  kctl -n "${SMOKE_NAMESPACE}" delete pod smoke-echo-busybox smoke-echo-worker smoke-host-reach \
    --ignore-not-found --wait=true >/dev/null
  info "smoke test passed; its Pods are deleted"
}
