# shellcheck shell=bash
# nix run .#demo: a private PostgreSQL, the server, one job (scripts/demo.sh does the work).

usage() {
  cat <<EOF
Usage: nix run .#demo [-- COMMAND...]

Runs scripts/demo.sh with the pinned Rust toolchain and PostgreSQL: it starts a private
PostgreSQL and hodei-server, runs 'hodei run -- echo hello' (or COMMAND), prints the job's
output and exit code, and tears everything down.

Environment (defaults in brackets):
  HODEI_REPO  checkout to run in [the git work tree around the current directory]
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi

trap remove_source_copy EXIT

enter_checkout
require_script scripts/demo.sh
export HODEI_PG_BIN="${HODEI_PG_BIN:-${HODEI_NIX_PG_BIN}}"

step "Running scripts/demo.sh"
bash scripts/demo.sh "$@"
