#!/usr/bin/env bash
# Builds the worker image (default hodei-worker:e2e-test) without pulling anything: the release
# hodei-worker, the shared libraries it links, Debian's static busybox as shell and tools, and
# the host's CA bundle, on top of `scratch`, loaded into the local Docker engine.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

IMAGE="${HODEI_WORKER_IMAGE:-hodei-worker:e2e-test}"
BUSYBOX="${HODEI_BUSYBOX:-/bin/busybox}"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
# The conventional unprivileged uid of distroless images; the image runs as it.
WORKER_UID=65532
WORKER_USER=hodei
SIZE_TARGET_MB=25

SKIP_BUILD=0
BINARY=""
WORK_DIR=""

usage() {
  cat <<EOF
Usage: $(basename "$0") [--skip-build] [--binary PATH] [--help]

Builds the hodei-worker image from scratch (nothing is pulled) and loads it into the local
Docker engine: the release hodei-worker, the shared libraries ldd lists for it, busybox-static
as /bin/sh and the usual tools, CA certificates, /tmp, and a non-root user (uid ${WORKER_UID})
that the image runs as. Safe to run again: an unchanged input gives the same image.

  --skip-build    do not run cargo; use the existing release binary of the workspace
  --binary PATH   put PATH in the image as hodei-worker (implies --skip-build)
  -h, --help      this text

Environment (defaults in brackets):
  HODEI_WORKER_IMAGE  image name and tag, never :latest [hodei-worker:e2e-test]
  CARGO_TARGET_DIR    where cargo puts the release binary [the workspace's target/]
  HODEI_BUSYBOX       a statically linked busybox [/bin/busybox, from Debian's busybox-static]
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

# A tag names one build; `latest` (also what a missing tag means) hides which build a test ran.
check_image_name() {
  local name="${IMAGE%%@*}" last tag
  last="${name##*/}"
  if [[ "${last}" == *:* ]]; then
    tag="${last##*:}"
  else
    tag="latest"
  fi
  if [[ "${tag}" == "latest" ]]; then
    die "refusing to tag ${IMAGE}: ':latest' (also implied by a missing tag) does not say which build runs; set HODEI_WORKER_IMAGE to a name with an explicit tag such as hodei-worker:e2e-test"
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
  [[ -x "${BUSYBOX}" ]] || die "${BUSYBOX} not found: install Debian's busybox-static (apt-get install busybox-static)"
  # ldd fails on a static executable ("not a dynamic executable"); a dynamic busybox would need
  # its libraries too and is not what the image promises.
  if ldd "${BUSYBOX}" >/dev/null 2>&1; then
    die "${BUSYBOX} is dynamically linked: install busybox-static or point HODEI_BUSYBOX at a static busybox"
  fi
  [[ -s "${CA_BUNDLE}" ]] || die "${CA_BUNDLE} not found: install ca-certificates"
  info "docker engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
  info "busybox ${BUSYBOX}, CA bundle ${CA_BUNDLE}"
}

release_binary() {
  local target_dir
  target_dir="${CARGO_TARGET_DIR:-}"
  if [[ -z "${target_dir}" ]]; then
    target_dir="$(cd "${REPO_ROOT}" && cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  fi
  [[ -n "${target_dir}" ]] || die "cannot find cargo's target directory; set CARGO_TARGET_DIR"
  echo "${target_dir}/release/hodei-worker"
}

build_binary() {
  if [[ -n "${BINARY}" ]]; then
    step "using the given binary ${BINARY}"
  elif ((SKIP_BUILD)); then
    BINARY="$(release_binary)"
    step "using the existing release binary ${BINARY} (--skip-build)"
  else
    step "building hodei-worker (cargo build --release -p hodei-worker)"
    (cd "${REPO_ROOT}" && cargo build --release -p hodei-worker)
    BINARY="$(release_binary)"
  fi
  [[ -f "${BINARY}" && -x "${BINARY}" ]] ||
    die "${BINARY} is not an executable file; build it with cargo build --release -p hodei-worker or drop --skip-build"
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
  WORK_DIR="$(mktemp -d -t hodei-worker-image.XXXXXX)"
  local rootfs="${WORK_DIR}/context/rootfs" home="${WORK_DIR}/context/home"
  step "assembling the root filesystem in ${rootfs}"
  mkdir -p "${rootfs}/usr/local/bin" "${rootfs}/bin" "${rootfs}/etc/ssl/certs" "${rootfs}/tmp" \
    "${home}/${WORKER_USER}"
  install -m 0755 "${BINARY}" "${rootfs}/usr/local/bin/hodei-worker"
  info "/usr/local/bin/hodei-worker"

  local library libraries
  libraries="$(shared_libraries "${BINARY}")"
  if [[ -z "${libraries}" ]]; then
    info "hodei-worker is statically linked: no shared libraries"
  fi
  # Each at the path ldd resolved it to, symlinks followed, so the loader named in the ELF
  # header (/lib64/ld-linux-x86-64.so.2) and the default search path both find them.
  while IFS= read -r library; do
    [[ -n "${library}" ]] || continue
    mkdir -p "${rootfs}$(dirname "${library}")"
    cp -L "${library}" "${rootfs}${library}"
    info "${library}"
  done <<<"${libraries}"

  install -m 0755 "${BUSYBOX}" "${rootfs}/bin/busybox"
  local applet count=0
  while IFS= read -r applet; do
    [[ -n "${applet}" && "${applet}" != "busybox" ]] || continue
    ln -sf busybox "${rootfs}/bin/${applet}"
    count=$((count + 1))
  done < <("${BUSYBOX}" --list)
  [[ -L "${rootfs}/bin/sh" ]] || die "${BUSYBOX} has no sh applet"
  info "/bin/busybox with ${count} applet links (sh, ls, cat, env, ...)"

  cp -L "${CA_BUNDLE}" "${rootfs}${CA_BUNDLE}"
  info "${CA_BUNDLE}"
  chmod 1777 "${rootfs}/tmp"
  info "/tmp (1777)"

  cat >"${rootfs}/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
${WORKER_USER}:x:${WORKER_UID}:${WORKER_UID}:hodei worker:/home/${WORKER_USER}:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"${rootfs}/etc/group" <<EOF
root:x:0:
${WORKER_USER}:x:${WORKER_UID}:
nogroup:x:65534:
EOF
  # glibc's default is "files dns" too; written so the lookup order is visible in the image.
  printf 'hosts: files dns\n' >"${rootfs}/etc/nsswitch.conf"
  info "/etc/passwd, /etc/group (${WORKER_USER} = ${WORKER_UID}), /etc/nsswitch.conf, /home/${WORKER_USER}"

  cat >"${WORK_DIR}/context/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=${WORKER_UID}:${WORKER_UID} home/ /home/
ENV PATH=/usr/local/bin:/bin \\
    SSL_CERT_FILE=${CA_BUNDLE} \\
    HOME=/home/${WORKER_USER}
LABEL org.opencontainers.image.title="hodei-worker" \\
      org.opencontainers.image.description="Hodei Jobs worker agent" \\
      org.opencontainers.image.revision="$(git -C "${REPO_ROOT}" rev-parse HEAD 2>/dev/null || echo unknown)"
USER ${WORKER_UID}:${WORKER_UID}
WORKDIR /home/${WORKER_USER}
ENTRYPOINT ["/usr/local/bin/hodei-worker"]
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

verify_image() {
  step "verifying ${IMAGE}"
  local checks
  # The loader resolves every library of hodei-worker inside the image, or names the missing one.
  checks="$(docker run --rm --network none --entrypoint /bin/sh "${IMAGE}" -c '
    set -e
    echo "shell: ok"
    echo "user: $(id -u):$(id -g)"
    test -s /etc/ssl/certs/ca-certificates.crt && echo "ca bundle: ok"
    test -w /tmp && echo "tmp: writable"
    loader=$(ls /lib64/ld-linux-*.so.* 2>/dev/null | head -n1 || true)
    if [ -n "$loader" ]; then
      "$loader" --list /usr/local/bin/hodei-worker >/dev/null && echo "libraries: all resolved"
    else
      echo "libraries: none (static)"
    fi
  ' 2>&1)" || die "the image does not work: ${checks}"
  indent <<<"${checks}"
  grep -qx "user: ${WORKER_UID}:${WORKER_UID}" <<<"${checks}" || die "the image does not run as ${WORKER_UID}"
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
