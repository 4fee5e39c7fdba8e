# shellcheck shell=bash
# nix run .#e2e-docker: the Docker provider's E2E suite with the Nix-built worker image.
# The work is scripts/e2e/run-docker-e2e.sh's; this app loads the image and pins the tools.

usage() {
  cat <<EOF
Usage: nix run .#e2e-docker [-- ARGS...]

Loads the Nix-built worker image ${HODEI_NIX_WORKER_IMAGE} into the host's Docker engine
(docker load; nothing is pulled) and runs scripts/e2e/run-docker-e2e.sh, which runs the
Docker provider's suite with cargo nextest. ARGS go to run-docker-e2e.sh.

Environment (defaults in brackets):
  HODEI_REPO  checkout to run in [the git work tree around the current directory]
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi

trap remove_source_copy EXIT

check_docker
enter_checkout
require_script scripts/e2e/run-docker-e2e.sh
export HODEI_PG_BIN="${HODEI_PG_BIN:-${HODEI_NIX_PG_BIN}}"
use_nix_worker_image

step "Loading the Nix-built worker image ${HODEI_WORKER_IMAGE} into Docker"
"${HODEI_NIX_WORKER_IMAGE_STREAM}" | docker load
docker image inspect "${HODEI_WORKER_IMAGE}" >/dev/null 2>&1 ||
  die "docker load finished but ${HODEI_WORKER_IMAGE} is not in the engine"

step "Running scripts/e2e/run-docker-e2e.sh"
bash scripts/e2e/run-docker-e2e.sh "$@"
