#!/usr/bin/env bash
# Builds a Kind node image without any image registry: a Debian root file system (debootstrap
# from Debian's mirror), kind's own base files (from the sigs.k8s.io/kind Go module), the
# Kubernetes binaries and component images built from the Go module proxy, all images kubeadm
# needs already in the node's containerd. See docs/air-gapped-cluster.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/e2e/lib/common.sh
source "${SCRIPT_DIR}/lib/common.sh"
# shellcheck source=scripts/e2e/lib/build.sh
source "${SCRIPT_DIR}/lib/build.sh"
# shellcheck source=scripts/e2e/lib/images.sh
source "${SCRIPT_DIR}/lib/images.sh"

NODE_FILES="${REPO_ROOT}/deploy/kind-node"
DEBIAN_MIRROR="${HODEI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the node runs besides the binaries built here: kind's base image list (images/base/
# Dockerfile of kind), without the storage-test and rootless extras, plus Debian's container
# runtime and CNI plugins in place of the ones kind builds from source.
DEBIAN_PACKAGES=(systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod
  libseccomp2 pigz bash ca-certificates curl jq procps containerd runc containernetworking-plugins)

FORCE=0
REFRESH_ROOTFS=0
CHECK_ONLY=0
WORK_DIR=""
SCRATCH_CONTAINERD_PID=""

usage() {
  cat <<EOF
Usage: $(basename "$0") [--force] [--refresh-rootfs] [--check] [--help]

Builds the Kind node image ${LOCAL_NODE_IMAGE} (Kubernetes ${KUBERNETES_VERSION}) into the local
Docker engine without pulling anything, or does nothing when the image there was built from the
same inputs (label ${NODE_IMAGE_INPUTS_LABEL}: a hash of versions.env, this script,
its libraries, deploy/kind-node/ and the Go version). Then:

  kind create cluster --image ${LOCAL_NODE_IMAGE}
  (or: HODEI_KIND_NODE_SOURCE=local scripts/e2e/run-kubernetes-e2e.sh)

Steps: build kind, kubeadm, kubelet, kubectl, kube-proxy, the control plane, etcd, crictl and
CoreDNS with Go (cached in ${CACHE_DIR}); debootstrap a Debian ${DEBIAN_SUITE}
root file system (cached); add kind ${KIND_VERSION}'s base files and the binaries; pack
every image 'kubeadm config images list' names into a one-layer image and import it into the
node's containerd; docker import the result.

Needs root, Go, gcc with the static C library, debootstrap, containerd (ctr), jq, busybox-static
and a running Docker engine. Reaches the Go module proxy and Debian's mirror, nothing else.

  --force           build even if the image is current (from the cached components and
                    root file system)
  --refresh-rootfs  debootstrap the Debian root file system again (Debian's updates), then
                    build
  --check           exit 0 if the image is current, 1 if it would be built; build nothing
  -h, --help        this text

Environment (defaults in brackets):
  HODEI_KIND_CACHE             build cache, kept across runs [~/.cache/hodei-kind-node]
  HODEI_KIND_LOCAL_NODE_IMAGE  image name [localhost/hodei/kind-node:${KUBERNETES_VERSION}]
  HODEI_DEBIAN_MIRROR          Debian mirror for debootstrap [http://deb.debian.org/debian]
  GOPROXY                      Go module proxy [https://proxy.golang.org,direct]
  HODEI_BUILD_NICE             niceness of the Go builds [10]
EOF
}

stop_scratch_containerd() {
  if [[ -n "${SCRATCH_CONTAINERD_PID}" ]]; then
    kill -TERM "${SCRATCH_CONTAINERD_PID}" 2>/dev/null || true
    wait "${SCRATCH_CONTAINERD_PID}" 2>/dev/null || true
    SCRATCH_CONTAINERD_PID=""
  fi
}

on_exit() {
  local status=$?
  stop_scratch_containerd
  if [[ -n "${WORK_DIR}" && -d "${WORK_DIR}" ]]; then
    rm -rf "${WORK_DIR}"
  fi
  if ((status != 0)) && ((CHECK_ONLY == 0)); then
    printf '\nFAILED (exit %s) during: %s\n' "${status}" "${CURRENT_STEP}" >&2
    printf 'Nothing is left behind but the build cache (%s); run this script again.\n' "${CACHE_DIR}" >&2
  fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

while (($#)); do
  case "$1" in
    --force) FORCE=1 ;;
    --refresh-rootfs)
      REFRESH_ROOTFS=1
      FORCE=1
      ;;
    --check) CHECK_ONLY=1 ;;
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

# --- inputs ----------------------------------------------------------------------------------

# The hash of everything the image is made of that this repository controls. Debian's packages
# are not in it: the root file system is cached by its package list (debian_rootfs) and
# refreshed with --refresh-rootfs.
inputs_hash() {
  {
    echo "image ${LOCAL_NODE_IMAGE} arch $(dpkg --print-architecture)"
    echo "debian ${DEBIAN_SUITE} ${DEBIAN_PACKAGES[*]}"
    echo "go $(go env GOVERSION 2>/dev/null || echo none)"
    (cd "${REPO_ROOT}" && sha256sum scripts/e2e/versions.env scripts/e2e/build-kind-node-image.sh \
      scripts/e2e/lib/build.sh scripts/e2e/lib/images.sh && find deploy/kind-node -type f -print0 |
      sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-64
}

image_inputs_label() {
  docker image inspect --format "{{index .Config.Labels \"${NODE_IMAGE_INPUTS_LABEL}\"}}" \
    "${LOCAL_NODE_IMAGE}" 2>/dev/null || true
}

# --- the Debian root file system -------------------------------------------------------------

# Prints the path of a tarball of the Debian root file system, made once per package list.
debian_rootfs() {
  local key tarball rootfs
  key="$(printf '%s\n' "${DEBIAN_SUITE}" "${DEBIAN_MIRROR}" "$(dpkg --print-architecture)" \
    "${DEBIAN_PACKAGES[@]}" | sha256sum | cut -c1-16)"
  tarball="${CACHE_DIR}/rootfs/debian-${DEBIAN_SUITE}-${key}.tar"
  if [[ -f "${tarball}" && ${REFRESH_ROOTFS} -eq 0 ]]; then
    info "cached: ${tarball} ($(du -h "${tarball}" | cut -f1))" >&2
    echo "${tarball}"
    return
  fi
  rootfs="${WORK_DIR}/debootstrap"
  info "debootstrap --variant=minbase ${DEBIAN_SUITE} from ${DEBIAN_MIRROR} (a few minutes)" >&2
  local log="${WORK_DIR}/debootstrap.log"
  if ! debootstrap --variant=minbase --include="$(
    IFS=,
    echo "${DEBIAN_PACKAGES[*]}"
  )" "${DEBIAN_SUITE}" "${rootfs}" "${DEBIAN_MIRROR}" >"${log}" 2>&1; then
    tail -n 30 "${log}" >&2
    [[ -f "${rootfs}/debootstrap/debootstrap.log" ]] && tail -n 30 "${rootfs}/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (output above)"
  fi
  # What kind's clean-install removes after installing packages: caches, logs, documentation.
  chroot "${rootfs}" apt-get clean
  rm -rf "${rootfs}"/var/cache/debconf/* "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/log/* \
    "${rootfs}"/tmp/* "${rootfs}"/var/tmp/* "${rootfs}"/usr/share/doc/* \
    "${rootfs}"/usr/share/doc-base/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/local/*
  mkdir -p "$(dirname "${tarball}")"
  rm -f "$(dirname "${tarball}")"/debian-"${DEBIAN_SUITE}"-*.tar
  tar --numeric-owner --xattrs -C "${rootfs}" -cf "${tarball}.tmp" .
  mv -f "${tarball}.tmp" "${tarball}"
  rm -rf "${rootfs}"
  info "made ${tarball} ($(du -h "${tarball}" | cut -f1))" >&2
  echo "${tarball}"
}

# --- assembling the node ---------------------------------------------------------------------

# kind's images/base/files, installed with the modes of kind's images/base/Dockerfile (scripts
# and directories 0755, everything else 0644), then that Dockerfile's RUN steps.
install_kind_base_files() {
  local rootfs=$1 files
  files="$(module_dir "sigs.k8s.io/kind@${KIND_VERSION}")/images/base/files"
  [[ -d "${files}" ]] || die "kind ${KIND_VERSION}'s images/base/files not found in the module cache (${files})"
  info "kind base files from ${files}"
  install -m 0755 "${files}"/usr/local/bin/* "${rootfs}/usr/local/bin/"
  mkdir -p "${rootfs}/kind/bin" "${rootfs}/LICENSES" "${rootfs}/etc/containerd" \
    "${rootfs}/etc/default" "${rootfs}/etc/sysctl.d" "${rootfs}/etc/systemd/system/kubelet.service.d"
  (cd "${files}/kind" && find . -type f ! -path './bin/*' -exec install -D -m 0644 {} "${rootfs}/kind/{}" \;)
  install -m 0755 "${files}"/kind/bin/* "${rootfs}/kind/bin/"
  chmod 0755 "${rootfs}/kind" "${rootfs}/kind/bin"
  install -m 0644 "${files}"/LICENSES/* "${rootfs}/LICENSES/"
  find "${files}/etc" -maxdepth 1 -type f -exec install -m 0644 {} "${rootfs}/etc/" \;
  install -m 0644 "${files}"/etc/containerd/* "${rootfs}/etc/containerd/"
  install -m 0644 "${files}"/etc/default/* "${rootfs}/etc/default/"
  install -m 0644 "${files}"/etc/sysctl.d/* "${rootfs}/etc/sysctl.d/"
  find "${files}/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "${rootfs}/etc/systemd/system/" \;
  install -m 0644 "${files}"/etc/systemd/system/kubelet.service.d/* "${rootfs}/etc/systemd/system/kubelet.service.d/"

  # The Dockerfile's RUN steps: only the services kind wants, no kmsg in journald, systemd as
  # init; kubelet, containerd and undo-mount-hacks enabled, binfmt masked.
  find "${rootfs}/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "${rootfs}"/lib/systemd/system/multi-user.target.wants/* \
    "${rootfs}"/etc/systemd/system/*.wants/* \
    "${rootfs}"/lib/systemd/system/local-fs.target.wants/* \
    "${rootfs}"/lib/systemd/system/sockets.target.wants/*udev* \
    "${rootfs}"/lib/systemd/system/sockets.target.wants/*initctl* \
    "${rootfs}"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"${rootfs}/etc/systemd/journald.conf"
  [[ -e "${rootfs}/sbin/init" ]] || ln -s /usr/lib/systemd/systemd "${rootfs}/sbin/init"
  chroot "${rootfs}" systemctl enable kubelet.service containerd.service undo-mount-hacks.service 2>&1 | indent
  chroot "${rootfs}" systemctl mask systemd-binfmt.service 2>&1 | indent
  mkdir -p "${rootfs}/etc/kubernetes/manifests"
}

# Debian installs containerd in /usr/bin and the CNI plugins in /usr/lib/cni; kind's units and
# containerd's defaults look in /usr/local/bin and /opt/cni/bin.
link_debian_runtime() {
  local rootfs=$1 tool
  for tool in containerd ctr containerd-shim-runc-v2; do
    [[ -x "${rootfs}/usr/bin/${tool}" ]] || die "Debian's containerd package lacks /usr/bin/${tool}"
    ln -sf "/usr/bin/${tool}" "${rootfs}/usr/local/bin/${tool}"
  done
  mkdir -p "${rootfs}/opt/cni"
  ln -sfn /usr/lib/cni "${rootfs}/opt/cni/bin"
  info "containerd $(chroot "${rootfs}" containerd --version | awk '{print $3}'), runc $(chroot "${rootfs}" runc --version | awk 'NR==1 {print $3}'), CNI plugins in /usr/lib/cni"
}

# What `kind build node-image` adds to a base image: the binaries, /kind/version, the CNI
# manifest, the sandbox image name; plus this project's static CNI configuration and the boot-time
# restrict_oom_score_adj decision.
install_node_files() {
  local rootfs=$1 pause=$2 cmd
  for cmd in kubeadm kubelet kubectl; do
    install -m 0755 "${BIN_DIR}/${cmd}" "${rootfs}/usr/bin/${cmd}"
  done
  install -m 0755 "${BIN_DIR}/crictl" "${rootfs}/usr/local/bin/crictl"
  echo "${KUBERNETES_VERSION}" >"${rootfs}/kind/version"
  install -D -m 0644 "${NODE_FILES}/default-cni.yaml" "${rootfs}/kind/manifests/default-cni.yaml"
  install -D -m 0644 "${NODE_FILES}/10-hodei-bridge.conflist" "${rootfs}/etc/cni/net.d/10-hodei-bridge.conflist"
  install -m 0755 "${NODE_FILES}/restrict-oom-score-adj" "${rootfs}/usr/local/bin/hodei-restrict-oom-score-adj"
  install -D -m 0644 "${NODE_FILES}/10-hodei-restrict-oom-score-adj.conf" \
    "${rootfs}/etc/systemd/system/containerd.service.d/10-hodei-restrict-oom-score-adj.conf"

  local config="${rootfs}/etc/containerd/config.toml"
  grep -q '^[[:space:]]*sandbox_image = ' "${config}" || die "no sandbox_image in kind's containerd config"
  sed -i "s|^\([[:space:]]*sandbox_image = \).*|\1\"${pause}\"|" "${config}"
  info "sandbox_image = \"${pause}\"; CNI: /etc/cni/net.d/10-hodei-bridge.conflist"

  # The OCI spec template of kind's Dockerfile: containerd's default, plus the hook that gives
  # every container its own product_uuid, without rlimits.
  chroot "${rootfs}" ctr oci spec |
    jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"${rootfs}/etc/containerd/cri-base.json"
}

# Writes one image archive per name `kubeadm config images list` prints, into $2.
build_component_images() {
  local rootfs=$1 out=$2 name repository
  mkdir -p "${out}"
  while read -r name; do
    [[ -n "${name}" ]] || continue
    repository="${name%:*}"
    case "${repository##*/}" in
      kube-apiserver | kube-controller-manager | kube-scheduler)
        binary_image "${name}" "${BIN_DIR}/${repository##*/}" "${out}/${repository##*/}.tar"
        ;;
      kube-proxy)
        kube_proxy_image "${name}" "${BIN_DIR}/kube-proxy" "${rootfs}" "${NODE_FILES}/iptables-wrapper" \
          "${out}/kube-proxy.tar"
        ;;
      etcd) binary_image "${name}" "${BIN_DIR}/etcd" "${out}/etcd.tar" ;;
      coredns) coredns_image "${name}" "${BIN_DIR}/coredns" "${out}/coredns.tar" ;;
      pause) pause_image "${name}" "${NODE_FILES}/pause.c" "${out}/pause.tar" ;;
      *) die "kubeadm lists ${name}, which this script does not know how to build" ;;
    esac
    info "$(printf '%-52s %6s' "${name}" "$(du -h "${out}/${repository##*/}.tar" | cut -f1)")"
  done <<<"${KUBEADM_IMAGES}"
}

# Imports the archives in $2 into the node's /var/lib/containerd with a throw-away containerd of
# the same version as the node's (Debian's), namespace k8s.io, without unpacking: the node's
# CRI plugin unpacks an image the first time a container uses it.
preload_images() {
  local rootfs=$1 archives=$2 dir="${WORK_DIR}/scratch-containerd"
  mkdir -p "${dir}"
  cat >"${dir}/config.toml" <<EOF
version = 2
root = "${rootfs}/var/lib/containerd"
state = "${dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "${dir}/containerd.sock"
[ttrpc]
  address = "${dir}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"
EOF
  containerd --config "${dir}/config.toml" >"${dir}/containerd.log" 2>&1 &
  SCRATCH_CONTAINERD_PID=$!
  local ctr=(ctr --address "${dir}/containerd.sock" --namespace k8s.io)
  if ! wait_until "the throw-away containerd on ${dir}/containerd.sock" 30 "${ctr[@]}" version; then
    tail -n 20 "${dir}/containerd.log" >&2
    die "containerd did not start"
  fi
  local archive
  for archive in "${archives}"/*.tar; do
    "${ctr[@]}" images import --no-unpack --digests "${archive}" >/dev/null ||
      die "importing ${archive} failed (${dir}/containerd.log)"
  done
  local imported not_imported=0 name
  imported="$("${ctr[@]}" images ls -q)"
  while read -r name; do
    if grep -qxF "${name}" <<<"${imported}"; then
      info "in the node's containerd: ${name}"
    else
      warn "not in the node's containerd: ${name}"
      not_imported=1
    fi
  done <<<"${KUBEADM_IMAGES}"
  stop_scratch_containerd
  ((not_imported == 0)) || die "some images kubeadm needs are missing (above)"
}

# docker import of the root file system, then a one-line build for what import cannot set
# (STOPSIGNAL, labels). The legacy builder pulls nothing for a FROM of a local image.
import_node_image() {
  local rootfs=$1 hash=$2 staging="${LOCAL_NODE_IMAGE}-rootfs" previous
  previous="$(docker image inspect --format '{{.Id}}' "${LOCAL_NODE_IMAGE}" 2>/dev/null || true)"
  tar --numeric-owner --xattrs -C "${rootfs}" -c . |
    docker import \
      --change 'ENV container=docker' \
      --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
      - "${staging}" >/dev/null
  DOCKER_BUILDKIT=0 docker build --quiet --tag "${LOCAL_NODE_IMAGE}" - >/dev/null 2>"${WORK_DIR}/build.log" <<EOF || {
FROM ${staging}
STOPSIGNAL SIGRTMIN+3
LABEL ${NODE_IMAGE_INPUTS_LABEL}="${hash}" \\
      io.hodei.kind-node.kubernetes="${KUBERNETES_VERSION}" \\
      io.hodei.kind-node.kind="${KIND_VERSION}" \\
      org.opencontainers.image.description="Kind node, Kubernetes ${KUBERNETES_VERSION}, built without a registry by scripts/e2e/build-kind-node-image.sh"
EOF
    indent <"${WORK_DIR}/build.log" >&2
    die "docker build FROM ${staging} failed (output above)"
  }
  docker image rm "${staging}" >/dev/null
  # The image this one replaces, if nothing else uses it: it was ours (same name and label).
  local current
  current="$(docker image inspect --format '{{.Id}}' "${LOCAL_NODE_IMAGE}")"
  if [[ -n "${previous}" && "${previous}" != "${current}" ]]; then
    if docker image rm "${previous}" >/dev/null 2>&1; then
      info "removed the previous ${LOCAL_NODE_IMAGE} (${previous:7:12})"
    else
      info "the previous ${LOCAL_NODE_IMAGE} (${previous:7:12}) is still used; left in place"
    fi
  fi
}

# --- main ------------------------------------------------------------------------------------

main() {
  step "Kind node image ${LOCAL_NODE_IMAGE}: inputs"
  require_commands docker sha256sum dpkg
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer ('docker info'); start it (scripts/e2e/start-dockerd.sh)"
  local hash current
  hash="$(inputs_hash)"
  current="$(image_inputs_label)"
  info "inputs ${hash:0:16}… (versions.env, this script, lib/build.sh, lib/images.sh, deploy/kind-node/, Go)"
  if [[ "${current}" == "${hash}" && ${FORCE} -eq 0 ]]; then
    info "${LOCAL_NODE_IMAGE} is current ($(docker image inspect --format '{{.Id}}' "${LOCAL_NODE_IMAGE}" | cut -c8-19)): nothing to build"
    return 0
  fi
  if ((CHECK_ONLY)); then
    info "${LOCAL_NODE_IMAGE} ${current:+was built from other inputs (${current:0:16}…)}${current:-does not exist}: it would be built"
    return 1
  fi
  [[ -n "${current}" ]] && info "the existing image was built from other inputs (${current:0:16}…): rebuilding"
  require_root "debootstrap, chroot and the node's containerd state need root"
  require_commands go gcc strip debootstrap chroot containerd ctr jq tar busybox
  go_env

  mkdir -p "${CACHE_DIR}"
  WORK_DIR="$(mktemp -d "${CACHE_DIR}/work.XXXXXX")"

  step "Components from the Go module proxy (cache ${BIN_DIR})"
  build_all
  KUBEADM_IMAGES="$("${BIN_DIR}/kubeadm" config images list --kubernetes-version "${KUBERNETES_VERSION}")"
  local pause
  pause="$(grep -E '/pause:' <<<"${KUBEADM_IMAGES}")" || die "kubeadm lists no pause image"
  info "kubeadm ${KUBERNETES_VERSION} needs: $(tr '\n' ' ' <<<"${KUBEADM_IMAGES}")"

  step "Debian ${DEBIAN_SUITE} root file system (cache ${CACHE_DIR}/rootfs)"
  local tarball rootfs="${WORK_DIR}/rootfs"
  tarball="$(debian_rootfs)"
  mkdir -p "${rootfs}"
  tar --numeric-owner --xattrs -C "${rootfs}" -xf "${tarball}"

  step "Node files: kind ${KIND_VERSION} base files, Debian's containerd, Kubernetes binaries"
  install_kind_base_files "${rootfs}"
  link_debian_runtime "${rootfs}"
  install_node_files "${rootfs}" "${pause}"

  step "Component images (one layer each, named as kubeadm lists them)"
  build_component_images "${rootfs}" "${WORK_DIR}/images"

  step "Pre-loading the images into the node's containerd"
  preload_images "${rootfs}" "${WORK_DIR}/images"

  step "Importing the node image into Docker"
  import_node_image "${rootfs}" "${hash}"

  step "Done"
  info "${LOCAL_NODE_IMAGE} $(docker image inspect --format '{{.Id}}' "${LOCAL_NODE_IMAGE}" | cut -c8-19), $(docker image inspect --format '{{.Size}}' "${LOCAL_NODE_IMAGE}" | awk '{printf "%.0f MB", $1 / 1e6}'), label ${NODE_IMAGE_INPUTS_LABEL}=${hash:0:16}…"
  info "kind create cluster --image ${LOCAL_NODE_IMAGE}"
}

KUBEADM_IMAGES=""
main
