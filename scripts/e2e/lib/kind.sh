# shellcheck shell=bash
# What the Kind scripts share: which kind and kubectl to run, which node image to create the
# cluster from, and the cluster's Docker objects. Sourced after common.sh.
# shellcheck disable=SC2034  # KIND and KUBECTL are used by the scripts that source this file

KIND=(kind)
KUBECTL=(kubectl)

# The minor version of a "vX.Y.Z" string.
minor_of() {
  local version=${1#v}
  version=${version#*.}
  echo "${version%%.*}"
}

# The version a kind binary reports ("kind v0.33.0 go1.26.8 linux/amd64" -> v0.33.0).
kind_version_of() { "$1" version 2>/dev/null | awk '{print $2}'; }

# The client version of a kubectl binary (v1.34.4); empty if it does not answer.
kubectl_version_of() {
  "$1" version --client -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"\(v[^"]*\)".*/\1/p' | head -n 1
}

# Chooses kind and kubectl, in this order:
#   HODEI_KIND_BIN / HODEI_KUBECTL_BIN when set;
#   the one on PATH when its version fits: kind at the pinned KIND_VERSION, kubectl within
#   Kubernetes' version skew (one minor) of the node's KUBERNETES_VERSION;
#   the one built by build-kind-node-image.sh (BIN_DIR), which is exactly pinned;
#   the one on PATH anyway, with a warning; else an error saying how to install it.
resolve_kind_tools() {
  local path_kind path_kubectl version
  if [[ -n "${HODEI_KIND_BIN:-}" ]]; then
    KIND=("${HODEI_KIND_BIN}")
  else
    path_kind="$(command -v kind || true)"
    if [[ -n "${path_kind}" && "$(kind_version_of "${path_kind}")" == "${KIND_VERSION}" ]]; then
      KIND=("${path_kind}")
    elif [[ -x "${BIN_DIR}/kind" ]]; then
      KIND=("${BIN_DIR}/kind")
    elif [[ -n "${path_kind}" ]]; then
      KIND=("${path_kind}")
      warn "kind on PATH is $(kind_version_of "${path_kind}"), not the pinned ${KIND_VERSION} (scripts/e2e/versions.env); 'go install sigs.k8s.io/kind@${KIND_VERSION}' installs it"
    else
      die "kind is missing: 'go install sigs.k8s.io/kind@${KIND_VERSION}', a release binary (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), 'nix develop', or scripts/e2e/build-kind-node-image.sh (builds it into ${BIN_DIR})"
    fi
  fi

  if [[ -n "${HODEI_KUBECTL_BIN:-}" ]]; then
    KUBECTL=("${HODEI_KUBECTL_BIN}")
  else
    path_kubectl="$(command -v kubectl || true)"
    version="$( [[ -z "${path_kubectl}" ]] || kubectl_version_of "${path_kubectl}")"
    if [[ -n "${version}" ]] && kubectl_within_skew "${version}"; then
      KUBECTL=("${path_kubectl}")
    elif [[ -x "${BIN_DIR}/kubectl" ]]; then
      KUBECTL=("${BIN_DIR}/kubectl")
    elif [[ -n "${path_kubectl}" ]]; then
      KUBECTL=("${path_kubectl}")
      warn "kubectl on PATH is ${version:-of unknown version}, outside the one-minor skew Kubernetes supports against the ${KUBERNETES_VERSION} node; install kubectl 1.$(($(minor_of "${KUBERNETES_VERSION}") - 1))–1.$(($(minor_of "${KUBERNETES_VERSION}") + 1))"
    else
      die "kubectl is missing: https://kubernetes.io/docs/tasks/tools/, 'nix develop', or scripts/e2e/build-kind-node-image.sh (builds ${KUBERNETES_VERSION} into ${BIN_DIR})"
    fi
  fi
  info "kind: ${KIND[0]} ($(kind_version_of "${KIND[0]}")); kubectl: ${KUBECTL[0]} ($(kubectl_version_of "${KUBECTL[0]}"))"
}

kubectl_within_skew() {
  local client node
  client="$(minor_of "$1")"
  node="$(minor_of "${KUBERNETES_VERSION}")"
  ((client >= node - 1 && client <= node + 1))
}

# Docker Hub answers /v2/ with 401 to anyone who reaches it.
registry_reachable() {
  command -v curl >/dev/null 2>&1 &&
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 https://registry-1.docker.io/v2/ 2>/dev/null)" == 401 ]]
}

# Sets NODE_IMAGE and NODE_IMAGE_SOURCE, building the local node image when that is the choice:
#   KIND_NODE_IMAGE set         that image, as it is;
#   HODEI_KIND_NODE_SOURCE=registry  the pinned kindest/node (KIND_REGISTRY_NODE_IMAGE);
#   HODEI_KIND_NODE_SOURCE=local     the image build-kind-node-image.sh builds (no registry);
#   HODEI_KIND_NODE_SOURCE=auto (default)  registry if the engine already has the pinned image
#                               or Docker Hub answers, else local.
NODE_IMAGE=""
NODE_IMAGE_SOURCE=""
select_node_image() {
  if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
    NODE_IMAGE="${KIND_NODE_IMAGE}"
    NODE_IMAGE_SOURCE="KIND_NODE_IMAGE"
    info "node image ${NODE_IMAGE} (from KIND_NODE_IMAGE)"
    return
  fi
  local source="${HODEI_KIND_NODE_SOURCE:-auto}"
  case "${source}" in
    registry | local) ;;
    auto)
      if docker image inspect "${KIND_REGISTRY_NODE_IMAGE}" >/dev/null 2>&1; then
        source=registry
        info "auto: the engine already has ${KIND_REGISTRY_NODE_IMAGE}"
      elif registry_reachable; then
        source=registry
        info "auto: Docker Hub answers (https://registry-1.docker.io/v2/)"
      else
        source=local
        info "auto: Docker Hub does not answer within 5 s: building the node image locally"
      fi
      ;;
    *) die "HODEI_KIND_NODE_SOURCE=${source}: expected auto, registry or local" ;;
  esac
  NODE_IMAGE_SOURCE="${source}"
  if [[ "${source}" == registry ]]; then
    NODE_IMAGE="${KIND_REGISTRY_NODE_IMAGE}"
    info "node image ${NODE_IMAGE} (pinned, from Docker Hub; HODEI_KIND_NODE_SOURCE=local builds one instead)"
  else
    NODE_IMAGE="${LOCAL_NODE_IMAGE}"
    if bash "${REPO_ROOT}/scripts/e2e/build-kind-node-image.sh" --check >/dev/null 2>&1; then
      info "node image ${NODE_IMAGE} (built locally, current)"
    else
      info "node image ${NODE_IMAGE} must be built: scripts/e2e/build-kind-node-image.sh"
      bash "${REPO_ROOT}/scripts/e2e/build-kind-node-image.sh" | indent
    fi
  fi
}

# Docker objects of a Kind cluster: its node containers (by kind's label) and their volumes.
cluster_containers() {
  docker ps -a --filter "label=io.x-k8s.kind.cluster=$1" --format '{{.Names}}' 2>/dev/null
}

container_volumes() {
  docker inspect --format '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' "$@" 2>/dev/null |
    tr ' ' '\n' | sed '/^$/d'
}

# The IPv4 gateway of the 'kind' Docker network: this machine, as Pods on Linux reach it.
kind_gateway() {
  docker network inspect kind --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n 1 || true
}
