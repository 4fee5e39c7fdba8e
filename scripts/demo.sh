#!/usr/bin/env bash
# Runs one job end to end on this machine: builds the binaries, starts a private throw-away
# PostgreSQL and hodei-server (local provider), runs `hodei run -- <command>`, and tears
# everything down again. Exits with the job's exit code.
#
# Usage: scripts/demo.sh [--release] [-- COMMAND...]      (default command: echo hello)
set -euo pipefail

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

profile=debug
cargo_profile=()
command=(echo hello)
while (($#)); do
  case "$1" in
    --release) profile=release; cargo_profile=(--release); shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; (($#)) && command=("$@"); break ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '==> %s\n' "$*" >&2; }

find_pg_bin() {
  if [[ -n "${HODEI_PG_BIN:-}" ]]; then echo "$HODEI_PG_BIN"; return; fi
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return
  fi
  local dir
  dir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [[ -n "$dir" ]]; then echo "$dir"; return; fi
  if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
  echo "PostgreSQL is not installed: apt-get install postgresql (or set HODEI_PG_BIN)" >&2
  return 1
}

if ! pg_bin=$(find_pg_bin 2>/dev/null); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "PostgreSQL is not installed; installing Debian's postgresql package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  pg_bin=$(find_pg_bin)
fi
work=$(mktemp -d /tmp/hodei-demo.XXXXXX)
server_pid=""
pg_pid=""
# shellcheck disable=SC2317,SC2329  # invoked by the trap below (0.11 reports it as SC2329)
cleanup() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    say "stopping hodei-server"
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ -n "$pg_pid" ]] && kill -0 "$pg_pid" 2>/dev/null; then
    say "stopping PostgreSQL"
    # pg_ctl, not a signal to $pg_pid: as root that is runuser, and a background job of a
    # script ignores SIGINT, so PostgreSQL's own "fast shutdown" signal would never arrive.
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg" stop -m fast -w >/dev/null 2>&1 ||
      kill -TERM "$pg_pid" 2>/dev/null || true
    wait "$pg_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT INT TERM

# PostgreSQL refuses to run as root; use the postgres (or nobody) account then.
# (Set before the trap can fire: the cleanup uses it.)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
  pg_user=postgres
  id -u "$pg_user" >/dev/null 2>&1 || pg_user=nobody
  chown "$pg_user" "$work"
  as_pg=(runuser -u "$pg_user" --)
fi

say "building hodei-server, hodei-worker and hodei ($profile)"
(cd "$repo" && cargo build --quiet "${cargo_profile[@]}" -p hodei-server -p hodei-worker -p hodei-cli)
target_dir="${CARGO_TARGET_DIR:-}"
if [[ -z "$target_dir" ]]; then
  target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fi
[[ -n "$target_dir" ]] || { echo "cannot find cargo's target directory; set CARGO_TARGET_DIR" >&2; exit 1; }
bin="$target_dir/$profile"

say "starting a private PostgreSQL ($pg_bin)"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust --no-sync -E UTF8 >"$work/initdb.log"
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg" -k "$work" -c listen_addresses= -c fsync=off \
  >"$work/postgres.log" 2>&1 &
pg_pid=$!
database_url="postgres://postgres@localhost/postgres?host=$work"
for _ in $(seq 1 100); do
  [[ -S "$work/.s.PGSQL.5432" ]] && break
  sleep 0.1
done
[[ -S "$work/.s.PGSQL.5432" ]] || { tail -n 20 "$work/postgres.log" >&2; exit 1; }

say "creating an API token for this demo (hodei-server tokens create)"
# The job API needs a token even on loopback; the CLI reads it from HODEI_API_TOKEN (given to
# the CLI only, not to the server, whose environment is no place for it). It lives in this
# private database, which the cleanup deletes.
api_token=$(HODEI_DATABASE_URL="$database_url" "$bin/hodei-server" tokens create \
  --name demo --scopes jobs:submit 2>"$work/tokens.log") ||
  { cat "$work/tokens.log" >&2; exit 1; }

say "starting hodei-server on a free loopback port (local provider)"
HODEI_DATABASE_URL="$database_url" RUST_LOG=info \
  "$bin/hodei-server" --listen "127.0.0.1:0" --metrics-listen off \
  --worker-binary "$bin/hodei-worker" >"$work/server.log" 2>&1 &
server_pid=$!
# The port the kernel chose is in the server's "listening" line.
port=""
for _ in $(seq 1 300); do
  port=$(sed -e 's/\x1b\[[0-9;]*m//g' "$work/server.log" |
    sed -n 's/.*hodei-server listening.*addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' | head -n 1)
  [[ -n "$port" ]] && HODEI_API_TOKEN="$api_token" "$bin/hodei" --server "http://127.0.0.1:$port" jobs list >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$port" ]] || { tail -n 20 "$work/server.log" >&2; echo "hodei-server did not start" >&2; exit 1; }
say "hodei-server is on 127.0.0.1:$port"

say "hodei run -- ${command[*]}"
set +e
HODEI_API_TOKEN="$api_token" "$bin/hodei" --server "http://127.0.0.1:$port" run -- "${command[@]}"
status=$?
set -e
say "job exited with $status"
exit "$status"
