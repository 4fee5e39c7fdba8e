#!/usr/bin/env bash
# Builds the server image (default hodei-server:e2e-test) without pulling anything: the release
# hodei-server, the shared libraries it links and the host's CA bundle, on top of `scratch`,
# loaded into the local Docker engine. No shell: the server never runs one, and an image
# without one leaves an intruder nothing to run. Same contract as nix/server-image.nix.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

IMAGE="${HODEI_SERVER_IMAGE:-hodei-server:e2e-test}"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
# The conventional unprivileged uid of distroless images, as in the worker image and in
# deploy/kubernetes/server/deployment.yaml's securityContext.
SERVER_UID=65532
SERVER_USER=hodei
SIZE_TARGET_MB=40

SKIP_BUILD=0
BINARY=""
WORK_DIR=""

usage() {
  cat <<EOF
Usage: $(basename "$0") [--skip-build] [--binary PATH] [--help]

Builds the hodei-server image from scratch (nothing is pulled) and loads it into the local
Docker engine: the release hodei-server, the shared libraries ldd lists for it, CA
certificates, /tmp, and a non-root user (uid ${SERVER_UID}) that the image runs as. No shell.
Safe to run again: an unchanged input gives the same image.

  --skip-build    do not run cargo; use the existing release binary of the workspace
  --binary PATH   put PATH in the image as hodei-server (implies --skip-build)
  -h, --help      this text

Environment (defaults in brackets):
  HODEI_SERVER_IMAGE  image name and tag, never :latest [hodei-server:e2e-test]
  CARGO_TARGET_DIR    where cargo puts the release binary [the workspace's target/]

Then, e.g.: docker save ${IMAGE} | kind load image-archive /dev/stdin, or push it to your
registry, and deploy it with deploy/kubernetes/server (README, "Deploying the server").
EOF
}

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
indent() { sed 's/^/    /'; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  if [[ -n "${WORK_DIR}" ]]; then
    rm -rf "${WORK_DIR}"
  fi
}
trap cleanup EXIT

parse_args() {
  while (($# > 0)); do
    case "$1" in
      --skip-build) SKIP_BUILD=1 ;;
      --binary)
        (($# >= 2)) || die "--binary needs a path"
        BINARY="$2"
        SKIP_BUILD=1
        shift
        ;;
      --binary=*)
        BINARY="${1#--binary=}"
        SKIP_BUILD=1
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
    shift
  done
}

# A tag names one build; `latest` (also what a missing tag means) hides which build runs, and
# makes Kubernetes pull instead of using an image loaded into the node.
check_image_name() {
  local name="${IMAGE%%@*}" last tag
  last="${name##*/}"
  if [[ "${last}" == *:* ]]; then
    tag="${last##*:}"
  else
    tag="latest"
  fi
  if [[ "${tag}" == "latest" ]]; then
    die "refusing to tag ${IMAGE}: ':latest' (also implied by a missing tag) does not say which build runs; set HODEI_SERVER_IMAGE to a name with an explicit tag such as hodei-server:e2e-test"
  fi
}

check_prerequisites() {
  step "checking prerequisites"
  local cmd
  for cmd in docker ldd; do
    command -v "${cmd}" >/dev/null 2>&1 || die "${cmd} is not installed"
  done
  docker info >/dev/null 2>&1 ||
    die "the Docker engine does not answer (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}); is dockerd running? (as root: scripts/e2e/start-dockerd.sh)"
  [[ -s "${CA_BUNDLE}" ]] || die "${CA_BUNDLE} not found: install ca-certificates"
  info "docker engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
  info "CA bundle ${CA_BUNDLE}"
}

release_binary() {
  local target_dir
  target_dir="${CARGO_TARGET_DIR:-}"
  if [[ -z "${target_dir}" ]]; then
    target_dir="$(cd "${REPO_ROOT}" && cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  fi
  [[ -n "${target_dir}" ]] || die "cannot find cargo's target directory; set CARGO_TARGET_DIR"
  echo "${target_dir}/release/hodei-server"
}

build_binary() {
  if [[ -n "${BINARY}" ]]; then
    step "using the given binary ${BINARY}"
  elif ((SKIP_BUILD)); then
    BINARY="$(release_binary)"
    step "using the existing release binary ${BINARY} (--skip-build)"
  else
    step "building hodei-server (cargo build --release -p hodei-server)"
    (cd "${REPO_ROOT}" && cargo build --release -p hodei-server)
    BINARY="$(release_binary)"
  fi
  [[ -f "${BINARY}" && -x "${BINARY}" ]] ||
    die "${BINARY} is not an executable file; build it with cargo build --release -p hodei-server or drop --skip-build"
  info "$(du -h "${BINARY}" | cut -f1) ${BINARY}"
}

# Prints the absolute paths of the shared objects BINARY loads, the dynamic loader included;
# nothing for a static binary.
shared_libraries() {
  local binary=$1 output
  if ! output="$(ldd "${binary}" 2>&1)"; then
    # Static executables make ldd fail with this message; anything else is a real error.
    grep -q "not a dynamic executable" <<<"${output}" && return 0
    die "ldd ${binary} failed: ${output}"
  fi
  grep -q "statically linked" <<<"${output}" && return 0
  if grep -q "not found" <<<"${output}"; then
    die "${binary} needs libraries this machine lacks: $(grep "not found" <<<"${output}" | tr -s ' \t' ' ')"
  fi
  # "libc.so.6 => /lib/.../libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # the vDSO has no file.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"${output}" | sort -u
}

assemble_rootfs() {
  WORK_DIR="$(mktemp -d -t hodei-server-image.XXXXXX)"
  local rootfs="${WORK_DIR}/context/rootfs"
  step "assembling the root filesystem in ${rootfs}"
  mkdir -p "${rootfs}/usr/local/bin" "${rootfs}/etc/ssl/certs" "${rootfs}/tmp"
  install -m 0755 "${BINARY}" "${rootfs}/usr/local/bin/hodei-server"
  info "/usr/local/bin/hodei-server"

  local library libraries
  libraries="$(shared_libraries "${BINARY}")"
  if [[ -z "${libraries}" ]]; then
    info "hodei-server is statically linked: no shared libraries"
  fi
  # Each at the path ldd resolved it to, symlinks followed, so the loader named in the ELF
  # header (/lib64/ld-linux-x86-64.so.2) and the default search path both find them.
  while IFS= read -r library; do
    [[ -n "${library}" ]] || continue
    mkdir -p "${rootfs}$(dirname "${library}")"
    cp -L "${library}" "${rootfs}${library}"
    info "${library}"
  done <<<"${libraries}"

  # TLS to PostgreSQL and to the Kubernetes or Docker API, when they present public CAs.
  cp -L "${CA_BUNDLE}" "${rootfs}${CA_BUNDLE}"
  info "${CA_BUNDLE}"
  # Writable only when something is mounted there: the Deployment's root is read-only and
  # mounts an emptyDir on /tmp.
  chmod 1777 "${rootfs}/tmp"
  info "/tmp (1777)"

  # The user the image runs as has a name, so anything that looks its uid up finds one.
  cat >"${rootfs}/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
${SERVER_USER}:x:${SERVER_UID}:${SERVER_UID}:hodei server:/nonexistent:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
  cat >"${rootfs}/etc/group" <<EOF
root:x:0:
${SERVER_USER}:x:${SERVER_UID}:
nogroup:x:65534:
EOF
  # glibc's default is "files dns" too; written so the lookup order is visible in the image.
  printf 'hosts: files dns\n' >"${rootfs}/etc/nsswitch.conf"
  info "/etc/passwd, /etc/group (${SERVER_USER} = ${SERVER_UID}), /etc/nsswitch.conf"

  cat >"${WORK_DIR}/context/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin \\
    SSL_CERT_FILE=${CA_BUNDLE}
LABEL org.opencontainers.image.title="hodei-server" \\
      org.opencontainers.image.description="Hodei Jobs server" \\
      org.opencontainers.image.revision="$(git -C "${REPO_ROOT}" rev-parse HEAD 2>/dev/null || echo unknown)"
USER ${SERVER_UID}:${SERVER_UID}
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/hodei-server"]
EOF
}

build_image() {
  step "building ${IMAGE} with docker build FROM scratch (nothing is pulled)"
  # BuildKit when the client has it (buildx); otherwise the classic builder, which needs nothing
  # else. Neither pulls for FROM scratch.
  local -a build_env=()
  if ! docker buildx version >/dev/null 2>&1; then
    build_env=(env DOCKER_BUILDKIT=0)
  fi
  local log="${WORK_DIR}/build.log"
  if ! "${build_env[@]}" docker build --tag "${IMAGE}" "${WORK_DIR}/context" >"${log}" 2>&1; then
    indent <"${log}" >&2
    die "docker build of ${IMAGE} failed (output above)"
  fi
  # The classic builder's deprecation notice says nothing about this build.
  grep -v -e '^DEPRECATED: The legacy builder' -e 'Install the buildx component' \
    -e 'docs.docker.com/go/buildx' -e 'BuildKit is currently disabled' \
    -e 'environment-variable\.$' -e '^ *$' "${log}" | indent || true
}

# Without a shell in the image, the binary itself is the probe: `--version` runs only if the
# loader resolved every library inside the image.
verify_image() {
  step "verifying ${IMAGE}"
  local version user
  version="$(docker run --rm --network none "${IMAGE}" --version 2>&1)" ||
    die "hodei-server --version fails in the image (a missing library?): ${version}"
  info "runs: ${version}"
  user="$(docker image inspect --format '{{.Config.User}}' "${IMAGE}")"
  [[ "${user}" == "${SERVER_UID}:${SERVER_UID}" ]] || die "the image runs as '${user}', not ${SERVER_UID}:${SERVER_UID}"
  info "user: ${user}"
  # A read-only root, as in the Deployment: start-up must not need to write anywhere.
  version="$(docker run --rm --network none --read-only "${IMAGE}" --version 2>&1)" ||
    die "hodei-server --version fails on a read-only root: ${version}"
  info "read-only root: ok"
}

report() {
  local id size_bytes size_mb
  id="$(docker image inspect --format '{{.Id}}' "${IMAGE}")"
  size_bytes="$(docker image inspect --format '{{.Size}}' "${IMAGE}")"
  size_mb="$(awk -v b="${size_bytes}" 'BEGIN { printf "%.1f", b / 1000000 }')"
  step "done"
  info "image ${IMAGE}"
  info "id    ${id}"
  info "size  ${size_mb} MB (${size_bytes} bytes)"
  if ((size_bytes > SIZE_TARGET_MB * 1000000)); then
    warn "${IMAGE} is larger than the ${SIZE_TARGET_MB} MB target"
  fi
}

main() {
  parse_args "$@"
  check_image_name
  check_prerequisites
  build_binary
  assemble_rootfs
  build_image
  verify_image
  report
}

main "$@"
