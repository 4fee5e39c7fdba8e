#!/usr/bin/env bash
# Runs the web dashboard's browser acceptance tests (crates/server/tests/web_browser.rs):
# Debian's chromium, headless, driven through chromedriver, against an in-process hodei-server
# with a real PostgreSQL and local workers. Installs the two packages when missing, starts
# chromedriver on a free loopback port, runs the suite, and stops the driver (and every
# browser it started) afterwards, also when a test fails or the run is interrupted.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"

PROFILE="${NEXTEST_PROFILE:-default}"
SUITE_FILTER='binary(web_browser)'
NEXTEST_ARGS=()
DRIVER_PID=""
DRIVER_LOG=""

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--help] [-- NEXTEST_ARGS...]

Runs the browser suite with cargo nextest (--run-ignored only, filter '${SUITE_FILTER}').

Steps: install the Debian packages chromium and chromium-driver if missing (needs root
and apt); start chromedriver on a free port of 127.0.0.1; run the suite with
HODEI_WEBDRIVER_URL pointing at it; stop chromedriver and its browsers.

The suite writes the screenshots of the three pages to docs/screenshots/web-*.png and the
100,000-line figures to target/web-e2e/100k-lines.txt (also printed below).

  -h, --help   this text
  -- ARGS      passed to cargo nextest run (e.g. -- --no-capture)

Environment (defaults in brackets):
  NEXTEST_PROFILE        nextest profile (.config/nextest.toml) [default]
  HODEI_CHROMIUM         browser binary [/usr/bin/chromium]
  HODEI_WEB_SCREENSHOTS  where the screenshots go [docs/screenshots]
  CARGO_TARGET_DIR       cargo's target directory [the workspace's target/]
USAGE
}

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "${DRIVER_PID}" ]] && kill -0 "${DRIVER_PID}" 2>/dev/null; then
    info "stopping chromedriver (pid ${DRIVER_PID})"
    # Its own process group (setsid below): the browsers it started go with it.
    kill -TERM -- "-${DRIVER_PID}" 2>/dev/null || true
    wait "${DRIVER_PID}" 2>/dev/null || true
  fi
  if ((status != 0)) && [[ -n "${DRIVER_LOG}" && -s "${DRIVER_LOG}" ]]; then
    printf 'chromedriver log (last 20 lines):\n' >&2
    tail -n 20 "${DRIVER_LOG}" >&2 || true
  fi
  [[ -n "${DRIVER_LOG}" ]] && rm -f "${DRIVER_LOG}"
  exit "${status}"
}

while (($#)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      NEXTEST_ARGS=("$@")
      break
      ;;
    *)
      usage >&2
      die "unknown argument: $1"
      ;;
  esac
done

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Browser and driver"
missing=()
command -v "${HODEI_CHROMIUM:-chromium}" >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
  ((EUID == 0)) || die "missing ${missing[*]}: run as root, or: sudo apt-get install -y ${missing[*]}"
  info "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
info "$("${HODEI_CHROMIUM:-chromium}" --version 2>/dev/null || echo "chromium: version unknown")"
info "$(chromedriver --version)"
cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest is missing: cargo install cargo-nextest --locked"

step "chromedriver on a free port"
# Port 0 is not accepted by chromedriver: ask the kernel for a free port, then hand it over.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
DRIVER_LOG="$(mktemp -t hodei-chromedriver.XXXXXX)"
setsid chromedriver --port="${port}" --allowed-ips=127.0.0.1 >"${DRIVER_LOG}" 2>&1 </dev/null &
DRIVER_PID=$!
export HODEI_WEBDRIVER_URL="http://127.0.0.1:${port}"
deadline=$((SECONDS + 20))
until curl -fsS "${HODEI_WEBDRIVER_URL}/status" >/dev/null 2>&1; do
  kill -0 "${DRIVER_PID}" 2>/dev/null || die "chromedriver exited: $(cat "${DRIVER_LOG}")"
  ((SECONDS < deadline)) || die "chromedriver did not answer on ${HODEI_WEBDRIVER_URL} within 20s"
  sleep 0.2
done
info "ready at ${HODEI_WEBDRIVER_URL} (pid ${DRIVER_PID})"

step "Browser suite (cargo nextest run --run-ignored only, ${SUITE_FILTER})"
cd "${REPO_ROOT}"
started=${SECONDS}
cargo nextest run -p hodei-server --profile "${PROFILE}" --run-ignored only \
  -E "${SUITE_FILTER}" --no-capture "${NEXTEST_ARGS[@]}"
info "suite took $((SECONDS - started))s"

report="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}/web-e2e/100k-lines.txt"
if [[ -f "${report}" ]]; then
  step "100,000-line log"
  sed 's/^/    /' "${report}"
fi
step "Screenshots"
find "${HODEI_WEB_SCREENSHOTS:-${REPO_ROOT}/docs/screenshots}" -maxdepth 1 -name 'web-*.png' \
  -printf '    %p (%s bytes)\n' 2>/dev/null || true
