# shellcheck shell=bash
# Builds the pinned components of the Kind node image from the Go module proxy into BIN_DIR:
# Kubernetes (control plane, kubelet, kubeadm, kube-proxy, kubectl), etcd, crictl, CoreDNS and
# kind itself. One build and one cache (CACHE_DIR) for everything the Kind path runs.
# Sourced by build-kind-node-image.sh after common.sh.
#
# `go install k8s.io/kubernetes/cmd/kubelet@vX` is refused because k8s.io/kubernetes replaces its
# staging modules (k8s.io/api, client-go, ...) with local directories, and etcd's server module
# does the same for its sibling modules. A throw-away wrapper module per project requires the
# pinned version and replaces each such module with its published version instead.

KUBERNETES_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)

# Every binary build_all produces, with the version its stamp must name.
all_binaries() {
  local cmd
  for cmd in "${KUBERNETES_COMMANDS[@]}"; do echo "${cmd} ${KUBERNETES_VERSION}"; done
  echo "etcd ${ETCD_VERSION}"
  echo "crictl ${CRICTL_VERSION}"
  echo "coredns ${COREDNS_VERSION}"
  echo "kind ${KIND_VERSION}"
}

# Go settings shared by every build: module and build caches under CACHE_DIR so a second run
# (or a CI cache of CACHE_DIR) compiles nothing; no cgo, as upstream builds these statically.
# -modcacherw leaves the module cache deletable with a plain rm -rf.
go_env() {
  export GOMODCACHE="${CACHE_DIR}/go/mod"
  export GOCACHE="${CACHE_DIR}/go/build"
  export GOTOOLCHAIN=local
  export GOFLAGS="-mod=mod -buildvcs=false -modcacherw"
  export CGO_ENABLED=0
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
}

# Compiles at a lower priority: the builds take minutes on 2 cores, beside other work.
go_nice() { nice -n "${HODEI_BUILD_NICE:-10}" go "$@"; }

# go install MODULE@VERSION for modules without replace directives (which refuse -mod=mod).
# go_install_module NAME VERSION PACKAGE@VERSION [LDFLAGS]
go_install_module() {
  local name=$1 version=$2 package=$3 ldflags="-s -w ${4:-}"
  if binary_is_current "${name}" "${version}"; then
    info "${name} ${version} is cached in ${BIN_DIR}"
    return
  fi
  info "building ${name} ${version} (go install ${package})"
  local out="${BIN_DIR}/.build-${name}" start=${SECONDS}
  rm -rf "${out}" && mkdir -p "${out}"
  GOBIN="${out}" GOFLAGS="-buildvcs=false -modcacherw" go_nice install -trimpath \
    -ldflags "${ldflags}" "${package}" ||
    die "building ${name} ${version} failed (see the go output above)"
  mv -f "${out}/${name}" "${BIN_DIR}/${name}"
  rmdir "${out}"
  echo "${version}" >"${BIN_DIR}/.${name}.version"
  info "built ${name} ${version} in $((SECONDS - start))s"
}

# A binary counts as built when it exists and its stamp names the pinned version.
binary_is_current() {
  local name=$1 version=$2
  [[ -x "${BIN_DIR}/${name}" && -f "${BIN_DIR}/.${name}.version" ]] &&
    [[ "$(<"${BIN_DIR}/.${name}.version")" == "${version}" ]]
}

# Prints the directory of a downloaded module (downloading it when needed).
module_dir() {
  local module=$1 dir
  dir="$(cd "${CACHE_DIR}" && go mod download -json "${module}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "${dir}" && -d "${dir}" ]] || die "could not download ${module} from ${GOPROXY}"
  echo "${dir}"
}

# Prints the `go` and `godebug` directives of a go.mod, so the wrapper module builds with the
# language version and GODEBUG defaults upstream chose.
go_directives() {
  grep -E '^(go|godebug) ' "$1"
}

build_kubernetes() {
  local missing=() cmd
  for cmd in "${KUBERNETES_COMMANDS[@]}"; do
    binary_is_current "${cmd}" "${KUBERNETES_VERSION}" || missing+=("${cmd}")
  done
  if ((${#missing[@]} == 0)); then
    info "Kubernetes ${KUBERNETES_VERSION} binaries are cached in ${BIN_DIR}"
    return
  fi
  info "building ${missing[*]} ${KUBERNETES_VERSION} (cold: tens of minutes on 2 cores)"

  local src wrapper="${CACHE_DIR}/src/kubernetes-${KUBERNETES_VERSION}"
  src="$(module_dir "k8s.io/kubernetes@${KUBERNETES_VERSION}")"
  mkdir -p "${wrapper}"
  {
    echo "module hodei.local/kubernetes-build"
    echo
    go_directives "${src}/go.mod"
    echo
    echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
    echo
    echo "replace ("
    # Every staging module k8s.io/kubernetes itself requires; its replace block lists them.
    local module
    while read -r module; do
      if grep -qE "^[[:space:]]+${module//./\\.} v" "${src}/go.mod"; then
        echo "	${module} => ${module} ${KUBERNETES_STAGING_VERSION}"
      fi
    done < <(sed -n '/^replace (/,/^)/s#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "${src}/go.mod")
    echo ")"
  } >"${wrapper}/go.mod.new"
  # Keep go.sum when go.mod did not change, so a rebuild needs no network.
  if ! cmp -s "${wrapper}/go.mod.new" "${wrapper}/go.mod.in" 2>/dev/null; then
    cp "${wrapper}/go.mod.new" "${wrapper}/go.mod.in"
    cp "${wrapper}/go.mod.new" "${wrapper}/go.mod"
    rm -f "${wrapper}/go.sum"
  fi
  rm -f "${wrapper}/go.mod.new"

  # The same version variables hack/lib/version.sh sets, so `--version` and the node's
  # kubeletVersion report the pinned release. The build date is the release's publication time.
  local build_date major minor ldflags="-s -w" pkg
  build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${GOMODCACHE}/cache/download/k8s.io/kubernetes/@v/${KUBERNETES_VERSION}.info")"
  major="${KUBERNETES_VERSION#v}"
  major="${major%%.*}"
  minor="${KUBERNETES_VERSION#v*.}"
  minor="${minor%%.*}"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=${major}"
    ldflags+=" -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=archive -X ${pkg}.buildDate=${build_date}"
  done

  local out="${BIN_DIR}/.build-kubernetes" pkgs=()
  for cmd in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${cmd}"); done
  rm -rf "${out}" && mkdir -p "${out}"
  local start=${SECONDS}
  (cd "${wrapper}" && go_nice build -trimpath -ldflags "${ldflags}" -o "${out}/" "${pkgs[@]}") ||
    die "building Kubernetes ${KUBERNETES_VERSION} failed (see the go output above)"
  for cmd in "${missing[@]}"; do
    mv -f "${out}/${cmd}" "${BIN_DIR}/${cmd}"
    echo "${KUBERNETES_VERSION}" >"${BIN_DIR}/.${cmd}.version"
  done
  rmdir "${out}"
  info "built ${missing[*]} in $((SECONDS - start))s"
}

build_etcd() {
  if binary_is_current etcd "${ETCD_VERSION}"; then
    info "etcd ${ETCD_VERSION} is cached in ${BIN_DIR}"
    return
  fi
  info "building etcd ${ETCD_VERSION}"
  local src wrapper="${CACHE_DIR}/src/etcd-${ETCD_VERSION}"
  src="$(module_dir "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")"
  mkdir -p "${wrapper}"
  if [[ ! -f "${wrapper}/go.mod" ]]; then
    # The server module's `main` package is the etcd binary; its siblings are replaced by
    # relative paths upstream, so pin them to the same release here.
    {
      echo "module hodei.local/etcd-build"
      echo
      go_directives "${src}/go.mod"
      echo
      echo "require ("
      local module
      for module in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do
        echo "	go.etcd.io/etcd/${module} ${ETCD_VERSION}"
      done
      echo ")"
    } >"${wrapper}/go.mod"
  fi
  rm -f "${BIN_DIR}/.build-etcd"
  local start=${SECONDS}
  (cd "${wrapper}" && go_nice build -trimpath -ldflags "-s -w" -o "${BIN_DIR}/.build-etcd" go.etcd.io/etcd/server/v3) ||
    die "building etcd ${ETCD_VERSION} failed (see the go output above)"
  mv -f "${BIN_DIR}/.build-etcd" "${BIN_DIR}/etcd"
  echo "${ETCD_VERSION}" >"${BIN_DIR}/.etcd.version"
  info "built etcd ${ETCD_VERSION} in $((SECONDS - start))s"
}

# cri-tools, CoreDNS and kind have no replace directives: `go install module@version` works.
build_crictl() {
  go_install_module crictl "${CRICTL_VERSION}" "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}"
}

build_coredns() {
  go_install_module coredns "${COREDNS_VERSION}" "github.com/coredns/coredns@${COREDNS_VERSION}"
}

build_kind() {
  go_install_module kind "${KIND_VERSION}" "sigs.k8s.io/kind@${KIND_VERSION}"
}

# 0 when every binary is built at its pinned version (nothing for build_all to do).
all_binaries_current() {
  local name version
  while read -r name version; do
    binary_is_current "${name}" "${version}" || return 1
  done < <(all_binaries)
}

build_all() {
  mkdir -p "${BIN_DIR}"
  if all_binaries_current; then
    info "all components are cached in ${BIN_DIR}: $(all_binaries | awk '{print $1}' | tr '\n' ' ')"
    return
  fi
  require_commands go
  go_env
  info "Go: $(go version); module cache ${GOMODCACHE}; build cache ${GOCACHE}"
  build_kind
  build_etcd
  build_crictl
  build_coredns
  build_kubernetes
}
