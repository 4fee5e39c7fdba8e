# shellcheck shell=bash
# One-layer OCI images of locally built binaries, for the node's containerd: the control plane,
# kube-proxy, etcd, CoreDNS and the sandbox ("pause") image, under the names kubeadm asks for.
# Sourced by build-kind-node-image.sh after common.sh.

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# oci_archive NAME ROOTFS CONFIG_JSON OUTPUT
# Packs the directory ROOTFS as the single uncompressed layer of an OCI image named NAME, with
# CONFIG_JSON as its runtime configuration (Entrypoint, Env, ...), and writes an OCI
# image-layout tarball that `ctr images import` accepts. The layer is reproducible (sorted,
# owned by root, mtime 0), so the same inputs give the same digest.
oci_archive() {
  local name=$1 rootfs=$2 runtime_config=$3 output=$4
  local work arch layer config manifest
  work="$(mktemp -d)"
  arch="$(dpkg --print-architecture 2>/dev/null || go env GOARCH)"
  mkdir -p "${work}/blobs/sha256"

  (cd "${rootfs}" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -cf "${work}/layer.tar" -- *)
  layer="$(sha256_of "${work}/layer.tar")"
  mv "${work}/layer.tar" "${work}/blobs/sha256/${layer}"

  printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"hodei scripts/e2e/build-kind-node-image.sh"}]}' \
    "${arch}" "${runtime_config}" "${layer}" >"${work}/config.json"
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

# A runtime configuration: ENTRYPOINT_JSON (a JSON array, or null) and PATH.
runtime_config() {
  printf '{"Entrypoint":%s,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"}' "$1"
}

# new_image_rootfs DIR: the directories every image gets (a writable /tmp).
new_image_rootfs() {
  mkdir -p "$1/tmp" "$1/usr/local/bin"
  chmod 1777 "$1/tmp"
}

# binary_image NAME BINARY OUTPUT: BINARY at /usr/local/bin, also the entrypoint. kubeadm's
# static Pods and DaemonSets name the command (`kube-apiserver`, `etcd`, ...); PATH finds it.
binary_image() {
  local name=$1 binary=$2 output=$3 rootfs
  rootfs="$(mktemp -d)"
  new_image_rootfs "${rootfs}"
  install -m 0755 "${binary}" "${rootfs}/usr/local/bin/"
  oci_archive "${name}" "${rootfs}" "$(runtime_config "[\"/usr/local/bin/${binary##*/}\"]")" "${output}"
  rm -rf "${rootfs}"
}

# coredns_image NAME BINARY OUTPUT: like the upstream image, /coredns is the entrypoint (the
# kubeadm Deployment passes only arguments).
coredns_image() {
  local name=$1 binary=$2 output=$3 rootfs
  rootfs="$(mktemp -d)"
  new_image_rootfs "${rootfs}"
  install -m 0755 "${binary}" "${rootfs}/coredns"
  oci_archive "${name}" "${rootfs}" "$(runtime_config '["/coredns"]')" "${output}"
  rm -rf "${rootfs}"
}

# pause_image NAME SOURCE OUTPUT: the sandbox image, compiled from deploy/kind-node/pause.c.
pause_image() {
  local name=$1 source=$2 output=$3 rootfs
  rootfs="$(mktemp -d)"
  gcc -static -Os -Wall -Wextra -Werror -o "${rootfs}/pause" "${source}" ||
    die "compiling ${source} failed (needs gcc and the static C library, package libc6-dev)"
  strip "${rootfs}/pause"
  oci_archive "${name}" "${rootfs}" "$(runtime_config '["/pause"]')" "${output}"
  rm -rf "${rootfs}"
}

# copy_with_libraries ROOTFS DEST FILE...: copies FILEs of the Debian root file system ROOTFS to
# the same paths under DEST, with every shared library they load (resolved by ROOTFS's own ldd,
# so the libraries match the binaries).
copy_with_libraries() {
  local rootfs=$1 dest=$2 file library
  shift 2
  for file in "$@"; do
    mkdir -p "${dest}$(dirname "${file}")"
    cp -L "${rootfs}${file}" "${dest}${file}"
    while read -r library; do
      [[ -n "${library}" && ! -e "${dest}${library}" ]] || continue
      mkdir -p "${dest}$(dirname "${library}")"
      cp -L "${rootfs}${library}" "${dest}${library}"
    done < <(chroot "${rootfs}" ldd "${file}" 2>/dev/null |
      awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
  done
}

# kube_proxy_image NAME BINARY ROOTFS WRAPPER OUTPUT: kube-proxy with what its iptables mode
# runs: iptables/ip6tables (+ -save, -restore) in both the nft and the legacy flavour with their
# extensions, conntrack, their libraries from the node's root file system, and WRAPPER, which on first use points the
# iptables names at the flavour the node uses (as the node's entrypoint chose it).
kube_proxy_image() {
  local name=$1 binary=$2 rootfs=$3 wrapper=$4 output=$5 image busybox
  image="$(mktemp -d)"
  new_image_rootfs "${image}"
  install -m 0755 "${binary}" "${image}/usr/local/bin/kube-proxy"
  copy_with_libraries "${rootfs}" "${image}" /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi \
    /usr/sbin/conntrack
  # iptables loads its match and target extensions (libxt_*.so, ...) with dlopen: ldd does not
  # list them ("Error: match extension not found" without them).
  local extensions
  mapfile -t extensions < <(cd "${rootfs}" && find usr/lib -path '*/xtables/*.so' \( -type f -o -type l \) | sed 's|^|/|')
  ((${#extensions[@]})) || die "no iptables extensions (usr/lib/*/xtables) in the node's root file system"
  copy_with_libraries "${rootfs}" "${image}" "${extensions[@]}"
  local flavour tool
  for flavour in nft legacy; do
    for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
      ln -s "xtables-${flavour}-multi" "${image}/usr/sbin/${tool%%-*}-${flavour}${tool#"${tool%%-*}"}"
    done
  done
  for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s iptables-wrapper "${image}/usr/sbin/${tool}"
  done
  install -m 0755 "${wrapper}" "${image}/usr/sbin/iptables-wrapper"
  # The wrapper's shell and tools: Debian's static busybox, as in the worker image.
  busybox="$(command -v busybox)"
  mkdir -p "${image}/bin"
  install -m 0755 "${busybox}" "${image}/bin/busybox"
  ln -s busybox "${image}/bin/sh"
  oci_archive "${name}" "${image}" "$(runtime_config '["/usr/local/bin/kube-proxy"]')" "${output}"
  rm -rf "${image}"
}
