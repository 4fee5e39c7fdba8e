# shellcheck shell=bash
# Local images for the air-gapped cluster: the sandbox (pause) image, a busybox test image, and
# importing images from the Docker engine into containerd's k8s.io namespace.
# Sourced by setup-local-cluster.sh after common.sh.

# The sandbox image containerd's CRI plugin uses (sandbox_image in containerd.toml). It is not
# registry.k8s.io/pause: nothing may suggest it came from a registry.
PAUSE_IMAGE="${HODEI_CLUSTER_PAUSE_IMAGE:-localhost/hodei/pause:local}"
# A from-scratch busybox image for the smoke test, usable before the worker image exists.
BUSYBOX_IMAGE="${HODEI_CLUSTER_BUSYBOX_IMAGE:-localhost/hodei/busybox:local}"
IMAGE_DIR="${CACHE_DIR}/${KUBERNETES_VERSION}/images"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# oci_archive NAME ROOTFS ENTRYPOINT_JSON OUTPUT
# Packs the directory ROOTFS as the single uncompressed layer of an OCI image named NAME and
# writes an OCI image-layout tarball that `ctr images import` accepts. The layer is
# reproducible (sorted, owned by root, mtime 0), so the same inputs give the same digest.
oci_archive() {
  local name=$1 rootfs=$2 entrypoint=$3 output=$4
  local work arch layer config manifest
  work="$(mktemp -d)"
  arch="$(go env GOARCH 2>/dev/null || dpkg --print-architecture)"
  mkdir -p "${work}/blobs/sha256"

  (cd "${rootfs}" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -cf "${work}/layer.tar" -- *)
  layer="$(sha256_of "${work}/layer.tar")"
  mv "${work}/layer.tar" "${work}/blobs/sha256/${layer}"

  printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"hodei setup-local-cluster.sh"}]}' \
    "${arch}" "${entrypoint}" "${layer}" >"${work}/config.json"
  config="$(sha256_of "${work}/config.json")"
  local config_size layer_size
  config_size="$(size_of "${work}/config.json")"
  layer_size="$(size_of "${work}/blobs/sha256/${layer}")"
  mv "${work}/config.json" "${work}/blobs/sha256/${config}"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "${config}" "${config_size}" "${layer}" "${layer_size}" >"${work}/manifest.json"
  manifest="$(sha256_of "${work}/manifest.json")"
  local manifest_size
  manifest_size="$(size_of "${work}/manifest.json")"
  mv "${work}/manifest.json" "${work}/blobs/sha256/${manifest}"

  # io.containerd.image.name names the image on import (the OCI ref.name alone is only a tag).
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${manifest}" "${manifest_size}" "${arch}" "${name}" "${name##*:}" >"${work}/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"${work}/oci-layout"

  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "${work}" \
    -cf "${output}.tmp" oci-layout index.json blobs
  mv -f "${output}.tmp" "${output}"
  rm -rf "${work}"
}

# Builds (once, cached) the pause image archive from deploy/local-cluster/pause.c.
build_pause_image() {
  local archive="${IMAGE_DIR}/pause.tar" source="${REPO_ROOT}/deploy/local-cluster/pause.c"
  local stamp
  stamp="$(sha256_of "${source}") ${PAUSE_IMAGE}"
  if [[ -f "${archive}" && "$(cat "${archive}.stamp" 2>/dev/null)" == "${stamp}" ]]; then
    info "pause image archive is cached: ${archive}"
    return
  fi
  require_commands gcc
  local rootfs
  rootfs="$(mktemp -d)"
  gcc -static -Os -Wall -Wextra -Werror -o "${rootfs}/pause" "${source}" ||
    die "compiling ${source} failed (needs gcc and the static C library, package libc6-dev)"
  strip "${rootfs}/pause"
  mkdir -p "${IMAGE_DIR}"
  oci_archive "${PAUSE_IMAGE}" "${rootfs}" '["/pause"]' "${archive}"
  rm -rf "${rootfs}"
  echo "${stamp}" >"${archive}.stamp"
  info "built ${PAUSE_IMAGE} from ${source}"
}

# Builds (once, cached) a busybox image from the host's static busybox binary.
build_busybox_image() {
  local archive="${IMAGE_DIR}/busybox.tar" busybox
  busybox="$(command -v busybox || true)"
  [[ -n "${busybox}" ]] || die "busybox not found (install busybox-static)"
  local linkage
  linkage="$(ldd "${busybox}" 2>&1 || true)"
  grep -qE 'not a dynamic executable|statically linked' <<<"${linkage}" ||
    die "${busybox} is not statically linked (install busybox-static)"
  local stamp
  stamp="$(sha256_of "${busybox}") ${BUSYBOX_IMAGE}"
  if [[ -f "${archive}" && "$(cat "${archive}.stamp" 2>/dev/null)" == "${stamp}" ]]; then
    return
  fi
  local rootfs applet
  rootfs="$(mktemp -d)"
  mkdir -p "${rootfs}/bin" "${rootfs}/tmp"
  chmod 1777 "${rootfs}/tmp"
  cp "${busybox}" "${rootfs}/bin/busybox"
  for applet in sh echo sleep wget cat ls nc; do
    ln -s busybox "${rootfs}/bin/${applet}"
  done
  mkdir -p "${IMAGE_DIR}"
  oci_archive "${BUSYBOX_IMAGE}" "${rootfs}" '["/bin/sh"]' "${archive}"
  rm -rf "${rootfs}"
  echo "${stamp}" >"${archive}.stamp"
  info "built ${BUSYBOX_IMAGE} from ${busybox}"
}

import_archive() {
  local archive=$1
  ctr_k8s images import "${archive}" >/dev/null ||
    die "importing ${archive} into containerd failed (see ${LOG_DIR}/containerd.log)"
}

# Output is captured first: `grep -q` may exit before ctr finishes writing, and the SIGPIPE
# would fail the pipeline under pipefail.
image_in_containerd() {
  local images
  images="$(ctr_k8s images ls -q)" || return 1
  grep -qxF -- "$1" <<<"${images}"
}

# Docker names an image `name:tag`; containerd stores it fully qualified.
qualified_image_name() {
  local name=$1 first="${1%%/*}"
  if [[ "${name}" != */* ]]; then
    name="docker.io/library/${name}"
  elif [[ "${first}" != *.* && "${first}" != *:* && "${first}" != localhost ]]; then
    name="docker.io/${name}"
  fi
  [[ "${name##*/}" == *:* || "${name}" == *@* ]] || name="${name}:latest"
  echo "${name}"
}

# Copies a Docker engine image into containerd (Pods use imagePullPolicy IfNotPresent), when the
# image exists in Docker and its id differs from what containerd already has.
import_docker_image() {
  local image=$1 qualified id
  qualified="$(qualified_image_name "${image}")"
  if ! command -v docker >/dev/null 2>&1 || ! docker image inspect "${image}" >/dev/null 2>&1; then
    warn "${image} is not in the Docker engine; build it (scripts/build-worker-image.sh) and re-run this script to import it"
    return 0
  fi
  id="$(docker image inspect --format '{{.Id}}' "${image}")"
  if [[ -f "${RUN_DIR}/imported/${image//\//_}" && "$(<"${RUN_DIR}/imported/${image//\//_}")" == "${id}" ]] &&
    image_in_containerd "${qualified}"; then
    info "${image} (${id:0:19}) is already in containerd as ${qualified}"
    return 0
  fi
  info "importing ${image} (${id:0:19}) from Docker into containerd as ${qualified}"
  docker save "${image}" | ctr_k8s images import - >/dev/null ||
    die "importing ${image} from Docker into containerd failed"
  mkdir -p "${RUN_DIR}/imported"
  echo "${id}" >"${RUN_DIR}/imported/${image//\//_}"
}
