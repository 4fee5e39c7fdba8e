#!/usr/bin/env bash
# Starts the Docker engine (dockerd) when it is not running, so that privileged containers (Kind
# nodes) work also on hosts whose capability bounding set lacks CAP_SYS_RESOURCE. Leaves a
# running engine alone. Used by .ci/run; safe to run by hand and to run again.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

LOG_FILE="${HODEI_DOCKERD_LOG:-/var/log/hodei-dockerd.log}"
WAIT_SECONDS="${HODEI_DOCKERD_WAIT_SECONDS:-60}"
# The wrapper is copied out of the checkout: the engine outlives this script and the checkout.
RUNTIME_NAME=hodei-runc
RUNTIME_PATH=/usr/local/libexec/hodei/runc-without-sys-resource
CAP_SYS_RESOURCE=24
STARTED=${SECONDS}

usage() {
  cat <<EOF
Usage: $(basename "$0") [--help]

Starts dockerd in the background (its own session, log ${LOG_FILE}) unless 'docker info'
already answers, and waits up to ${WAIT_SECONDS}s for it.

If this process's capability bounding set lacks CAP_SYS_RESOURCE (capability ${CAP_SYS_RESOURCE}, read from
CapBnd in /proc/self/status), every 'docker run --privileged' would fail with "unable to apply
caps: operation not permitted". dockerd is then started with an extra OCI runtime,
${RUNTIME_NAME} (${RUNTIME_PATH}, installed from scripts/e2e/runc-without-sys-resource),
as its default: runc without that one capability. Otherwise dockerd starts with plain runc.

Environment (defaults in brackets):
  HODEI_DOCKERD_LOG           dockerd's log file [/var/log/hodei-dockerd.log]
  HODEI_DOCKERD_WAIT_SECONDS  how long to wait for the engine to answer [60]
  HODEI_DOCKERD_ARGS          extra dockerd arguments, split on spaces [none]
EOF
}

step() { printf '\n==> [%4ss] %s\n' "$((SECONDS - STARTED))" "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
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

# 0 when the bounding set of this process (and so of a dockerd it starts) has the capability.
bounding_set_has() {
  local bounding
  bounding="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
  [[ -n "${bounding}" ]] || die "cannot read CapBnd from /proc/self/status"
  (((16#${bounding} >> $1) & 1))
}

engine_answers() { docker info >/dev/null 2>&1; }

describe_engine() {
  info "engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), default runtime $(docker info --format '{{.DefaultRuntime}}')"
}

step "Docker engine"
command -v docker >/dev/null || die "the docker client is missing: apt-get install docker.io"
if engine_answers; then
  info "already running: left as it is"
  describe_engine
  if ! bounding_set_has "${CAP_SYS_RESOURCE}" &&
    [[ "$(docker info --format '{{.DefaultRuntime}}')" != "${RUNTIME_NAME}" ]]; then
    warn "this host lacks CAP_SYS_RESOURCE but the running engine's default runtime is not ${RUNTIME_NAME}: privileged containers (Kind nodes) will fail with 'unable to apply caps'. Stop that engine and run this script to start it with the wrapper."
  fi
  exit 0
fi

((EUID == 0)) || die "dockerd is not running and starting it needs root"
command -v dockerd >/dev/null || die "dockerd is missing: apt-get install docker.io"

args=(--log-level=warn)
if bounding_set_has "${CAP_SYS_RESOURCE}"; then
  info "CapBnd has CAP_SYS_RESOURCE: plain runc"
else
  command -v jq >/dev/null || die "jq is missing (the runtime wrapper needs it): apt-get install jq"
  command -v runc >/dev/null || die "runc is missing: apt-get install runc"
  install -D -m 0755 "${SCRIPT_DIR}/runc-without-sys-resource" "${RUNTIME_PATH}"
  info "CapBnd lacks CAP_SYS_RESOURCE: default runtime ${RUNTIME_NAME} = ${RUNTIME_PATH}"
  args+=(--add-runtime "${RUNTIME_NAME}=${RUNTIME_PATH}" --default-runtime "${RUNTIME_NAME}")
fi
if [[ -n "${HODEI_DOCKERD_ARGS:-}" ]]; then
  read -r -a extra <<<"${HODEI_DOCKERD_ARGS}"
  args+=("${extra[@]}")
fi

step "Starting dockerd ${args[*]}"
mkdir -p "$(dirname "${LOG_FILE}")"
printf '\n==== dockerd starting at %s: %s\n' "$(date -u +%FT%TZ)" "${args[*]}" >>"${LOG_FILE}"
# Its own session: the engine outlives this script and the CI step that ran it.
setsid dockerd "${args[@]}" >>"${LOG_FILE}" 2>&1 </dev/null &
pid=$!
info "pid ${pid}, log ${LOG_FILE}"

deadline=$((SECONDS + WAIT_SECONDS))
until engine_answers; do
  if ! kill -0 "${pid}" 2>/dev/null; then
    tail -n 30 "${LOG_FILE}" >&2
    die "dockerd exited (log above: ${LOG_FILE})"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 30 "${LOG_FILE}" >&2
    die "dockerd did not answer 'docker info' within ${WAIT_SECONDS}s (log above: ${LOG_FILE})"
  fi
  sleep 1
done
step "Docker engine ready"
describe_engine
