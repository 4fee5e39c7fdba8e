#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (job-spec validation, the
# proto -> domain conversion at the gRPC edge, the authorization header and API token parsing;
# 'cargo fuzz list' finds each [[bin]] of fuzz/Cargo.toml). Fails if a target finds a crash,
# and leaves the crashing input in fuzz/artifacts/<target>/ to reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

SECONDS_PER_TARGET=60
TOOLCHAIN="${HODEI_FUZZ_TOOLCHAIN:-nightly}"
TARGETS=()

usage() {
  cat <<USAGE
Usage: $(basename "$0") [-s SECONDS] [TARGET...]

Runs each fuzz target (default: all of them, from 'cargo fuzz list') for SECONDS seconds
(default ${SECONDS_PER_TARGET}) with the ${TOOLCHAIN} toolchain (HODEI_FUZZ_TOOLCHAIN overrides;
fuzzing needs nightly for its sanitizer instrumentation). Installs cargo-fuzz when it is
missing. Corpora grow in fuzz/corpus/<target>/ and are reused by the next run. Safe to run
again.

  -s, --seconds SECONDS   time per target
  -h, --help              this text
USAGE
}

step() { printf '\n==> %s\n' "$*"; }

while (($#)); do
  case "$1" in
    -s|--seconds)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { usage >&2; exit 2; }
      SECONDS_PER_TARGET="$2"
      shift 2
      ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done

cleanup() {
  # A fuzzer interrupted mid-run leaves nothing behind but its corpus, which is kept on purpose.
  local status=$?
  if ((status != 0)); then
    echo "fuzzing failed (exit ${status}); crashing inputs, if any, are in fuzz/artifacts/" >&2
  fi
}
trap cleanup EXIT

cd "${REPO_ROOT}"

step "Toolchain ${TOOLCHAIN}"
if ! rustup run "${TOOLCHAIN}" rustc --version; then
  echo "the ${TOOLCHAIN} toolchain is missing: rustup toolchain install ${TOOLCHAIN}" >&2
  exit 1
fi

step "cargo-fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
cargo fuzz --version

if ((${#TARGETS[@]} == 0)); then
  mapfile -t TARGETS < <(cargo "+${TOOLCHAIN}" fuzz list)
fi

step "Building ${#TARGETS[@]} target(s): ${TARGETS[*]}"
for target in "${TARGETS[@]}"; do
  cargo "+${TOOLCHAIN}" fuzz build "${target}"
done

mkdir -p fuzz/logs
for target in "${TARGETS[@]}"; do
  step "Fuzzing ${target} for ${SECONDS_PER_TARGET}s (libFuzzer's output: fuzz/logs/${target}.log)"
  mkdir -p "fuzz/corpus/${target}"
  # libFuzzer prints a line per new input (thousands a minute): they go to the log, and only
  # its final figures, or the end of the log when a target fails, are shown here.
  if ! cargo "+${TOOLCHAIN}" fuzz run "${target}" "fuzz/corpus/${target}" -- \
    -max_total_time="${SECONDS_PER_TARGET}" -print_final_stats=1 >"fuzz/logs/${target}.log" 2>&1; then
    tail -n 60 "fuzz/logs/${target}.log" >&2
    exit 1
  fi
  grep -E '^(Done|stat::)' "fuzz/logs/${target}.log" || tail -n 5 "fuzz/logs/${target}.log"
done

step "No crash in ${#TARGETS[@]} target(s), ${SECONDS_PER_TARGET}s each"
