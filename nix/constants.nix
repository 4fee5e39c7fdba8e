# Values the pieces of the flake share, each written once. Plain data: no nixpkgs needed.
{
  # The worker image every E2E suite expects (HODEI_WORKER_IMAGE's default in the providers and
  # scripts/). Never `latest`: that tag makes Kubernetes pull instead of using `kind load`ed images.
  workerImage = {
    name = "hodei-worker";
    tag = "e2e-test";
    # The unprivileged uid of distroless images; scripts/build-worker-image.sh uses the same.
    uid = 65532;
    user = "hodei";
  };

  # The server image deploy/kubernetes/server names and the Kubernetes suite loads
  # (scripts/build-server-image.sh's default). Never `latest`, for the same reason.
  serverImage = {
    name = "hodei-server";
    tag = "e2e-test";
    # The uid deploy/kubernetes/server/deployment.yaml runs the server as.
    uid = 65532;
    user = "hodei";
    # The gRPC port (HODEI_LISTEN in the Deployment).
    port = 50051;
  };

  # scripts/e2e/setup-kind-cluster.sh's default, repeated so the apps and CI name the same cluster.
  kindClusterName = "hodei-e2e";

  # The Kubernetes minor of every node image (k8s-openapi feature v1_34; the locally built node
  # image of scripts/e2e/build-kind-node-image.sh is v1.34.x too). nix/kubectl.nix keeps kubectl
  # within one minor of it.
  kubernetesMinor = "1.34";

  # Kubernetes 1.34 everywhere.
  # Kind supports a node image only with the Kind release it was built for ("best effort" with
  # others: https://kind.sigs.k8s.io/docs/design/node-image), and newer node images can break
  # older Kind (kind v0.32.0 learned containerd's config version 4, which newer images use).
  # So the image is chosen by the version of the `kind` that nixpkgs ships; an unknown version
  # stops evaluation with a message instead of silently pairing mismatched versions.
  #   0.30.0: v1.34.0 is that release's default image, verified in kind's source at tag v0.30.0,
  #           pkg/apis/config/defaults/image.go.
  #   0.31.0: from the v0.31.0 release notes, as quoted by public projects pinning Kind v0.31.0
  #           (the release page itself could not be read from here).
  #   0.32.0: from the v0.32.0 release notes, as quoted by public projects pinning Kind v0.32.0
  #           (same caveat).
  #   0.33.0: the v0.32.0 image: v0.33.0's release notes could not be read from here, and kind
  #           supports images of earlier releases on a best-effort basis. scripts/e2e/versions.env
  #           pins the same image for machines without Nix (KIND_REGISTRY_NODE_IMAGE).
  kindNodeImages = {
    "0.30.0" =
      "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a";
    "0.31.0" =
      "kindest/node:v1.34.3@sha256:08497ee19eace7b4b5348db5c6a1591d7752b164530a36f855cb0f2bdcbadd48";
    "0.32.0" =
      "kindest/node:v1.34.8@sha256:02722c2dedddcfc00febf5d27fbeb9b7b2c14294c82109ff4a85d89ac9ba3256";
    "0.33.0" =
      "kindest/node:v1.34.8@sha256:02722c2dedddcfc00febf5d27fbeb9b7b2c14294c82109ff4a85d89ac9ba3256";
  };
}
