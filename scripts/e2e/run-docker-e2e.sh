#!/usr/bin/env bash
# Runs the Docker E2E suites (crates/server/tests/e2e_docker_provider.rs and
# crates/providers/tests/docker_provider.rs) against the local Docker engine, building the
# worker image first when it is missing, and removes every Hodei container afterwards, also
# when a test fails.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"

export HODEI_WORKER_IMAGE="${HODEI_WORKER_IMAGE:-hodei-worker:e2e-test}"
PROFILE="${NEXTEST_PROFILE:-default}"
MANAGED_LABEL="app.kubernetes.io/managed-by=hodei"
SUITE_FILTER='binary(e2e_docker_provider) | binary(docker_provider)'
BENCH_FILTER='binary(bench_docker_provisioning)'

BENCH=0
REBUILD_IMAGE=0
NEXTEST_ARGS=()
CURRENT_STEP="start"

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--bench] [--rebuild-image] [--help] [-- NEXTEST_ARGS...]

Runs the Docker E2E suites with cargo nextest (--run-ignored only, filter
'${SUITE_FILTER}'): a real hodei-server in the test process,
workers as containers of the worker image on the local Docker engine.

Steps: check the engine and cargo-nextest; build the worker image with
scripts/build-worker-image.sh if the engine does not have it; run the suites; then remove
every container labelled ${MANAGED_LABEL} on this engine (also when tests fail
or the script is interrupted) and show that none is left. Safe to run again.

  --bench           afterwards, run the provisioning benchmark (queued -> container worker
                    registered, 20 jobs) and print its figures
  --rebuild-image   build the worker image even if the engine already has it
  -h, --help        this text
  -- ARGS           passed to cargo nextest run (e.g. -- --no-capture)

Environment (defaults in brackets):
  HODEI_WORKER_IMAGE     worker image, never :latest [hodei-worker:e2e-test]
  NEXTEST_PROFILE        nextest profile (.config/nextest.toml) [default]
  DOCKER_HOST            Docker engine [unix:///var/run/docker.sock]
  HODEI_E2E_SERVER_HOST  address containers use to reach the server on this machine
                         [gateway of the 'bridge' Docker network]
  CARGO_TARGET_DIR       cargo's target directory [the workspace's target/]

Note: the final cleanup removes every Hodei-managed container on this engine, not only this
run's; do not point it at an engine where a Hodei server runs workers you want to keep.
USAGE
}

step() {
  CURRENT_STEP="$*"
  printf '\n==> %s\n' "$*"
}
info() { printf '    %s\n' "$*"; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

remove_managed_containers() {
  local ids
  ids="$(docker ps -aq --filter "label=${MANAGED_LABEL}" 2>/dev/null || true)"
  if [[ -n "${ids}" ]]; then
    info "removing $(wc -w <<<"${ids}") container(s) labelled ${MANAGED_LABEL}"
    # Word splitting is intended: one argument per container id. --volumes: a worker's
    # anonymous volume (where its token was uploaded) goes with it.
    # shellcheck disable=SC2086
    docker rm -f --volumes ${ids} >/dev/null || printf 'WARNING: docker rm -f failed\n' >&2
  else
    info "no container labelled ${MANAGED_LABEL} left"
  fi
}

cleanup() {
  local status=$? failed_step="${CURRENT_STEP}"
  trap - EXIT INT TERM
  # Only when the engine answers: with no engine there is nothing to remove.
  if docker info >/dev/null 2>&1; then
    step "Removing Hodei containers"
    remove_managed_containers
    info "docker ps -a --filter label=${MANAGED_LABEL}:"
    docker ps -a --filter "label=${MANAGED_LABEL}" | sed 's/^/      /'
  fi
  if ((status != 0)); then
    printf '\nFAILED during: %s (exit %s)\n' "${failed_step}" "${status}" >&2
  fi
  exit "${status}"
}

parse_args() {
  while (($# > 0)); do
    case "$1" in
      --bench) BENCH=1 ;;
      --rebuild-image) REBUILD_IMAGE=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        NEXTEST_ARGS=("$@")
        return
        ;;
      *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
    shift
  done
}

check_engine() {
  step "Checking the Docker engine"
  command -v docker >/dev/null 2>&1 ||
    die "the docker CLI is not installed (Debian: apt-get install docker.io)"
  if ! docker info >/dev/null 2>&1; then
    die "no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}: start it \
(systemctl start docker, or as root scripts/e2e/start-dockerd.sh) or set DOCKER_HOST"
  fi
  info "engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
  local leftovers
  leftovers="$(docker ps -aq --filter "label=${MANAGED_LABEL}" | wc -l)"
  if ((leftovers > 0)); then
    info "${leftovers} container(s) labelled ${MANAGED_LABEL} exist already; they are removed at the end"
  fi
}

check_nextest() {
  step "Checking cargo-nextest"
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs)"
  if ! cargo nextest --version >/dev/null 2>&1; then
    die "cargo-nextest is not installed: cargo install cargo-nextest --locked \
(or use the Nix devShell: nix develop)"
  fi
  info "$(cargo nextest --version 2>/dev/null | head -n1)"
}

ensure_image() {
  step "Checking the worker image ${HODEI_WORKER_IMAGE}"
  if ((REBUILD_IMAGE == 0)) && docker image inspect "${HODEI_WORKER_IMAGE}" >/dev/null 2>&1; then
    info "present: $(docker image inspect --format '{{.Id}} created {{.Created}}' "${HODEI_WORKER_IMAGE}")"
    info "(--rebuild-image rebuilds it from the current sources)"
    return
  fi
  step "Building the worker image ${HODEI_WORKER_IMAGE} (scripts/build-worker-image.sh)"
  "${REPO_ROOT}/scripts/build-worker-image.sh"
}

run_suites() {
  step "Running the Docker suites (cargo nextest, profile ${PROFILE})"
  (
    cd "${REPO_ROOT}"
    # --test builds only these binaries: the other suites need not compile for this one to run.
    # --workspace, like the default suite, so cargo resolves the same features and reuses its
    # build instead of compiling part of the dependency graph again.
    cargo nextest run --workspace \
      --test e2e_docker_provider --test docker_provider --profile "${PROFILE}" \
      --run-ignored only -E "${SUITE_FILTER}" ${NEXTEST_ARGS[@]+"${NEXTEST_ARGS[@]}"}
  )
}

run_bench() {
  step "Running the provisioning benchmark (queued -> container worker registered)"
  (
    cd "${REPO_ROOT}"
    # The figures, not the server's per-job log lines.
    RUST_LOG="${RUST_LOG:-warn}" cargo nextest run --workspace --test bench_docker_provisioning \
      --profile "${PROFILE}" \
      --run-ignored only -E "${BENCH_FILTER}" --no-capture
  )
}

main() {
  parse_args "$@"
  check_engine
  check_nextest
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ensure_image
  run_suites
  if ((BENCH)); then
    run_bench
  fi
  CURRENT_STEP="done"
  step "Docker suites passed"
}

main "$@"
