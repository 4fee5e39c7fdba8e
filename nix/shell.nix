# `nix develop`: everything `cargo nextest run` and the scripts in scripts/ need, pinned.
# Docker is the exception: the shell has the docker *client*; the daemon is the host's.
{
  pkgs,
  toolchain,
  constants,
  kindNodeImage,
  kubectl,
}:
let
  inherit (pkgs) lib;
in
pkgs.mkShell {
  packages = [
    toolchain
    pkgs.cargo-nextest
    pkgs.postgresql
    pkgs.kind
    # Within one minor of the node's Kubernetes (nix/kubectl.nix).
    kubectl
    pkgs.docker-client
    pkgs.shellcheck
    pkgs.git
    pkgs.jq
  ];

  # Rust's std links libiconv on macOS; as a build input its -L flag reaches the linker.
  buildInputs = lib.optionals pkgs.stdenv.hostPlatform.isDarwin [ pkgs.libiconv ];

  # The test harness (crates/testkit/src/postgres.rs) starts a private PostgreSQL from
  # HODEI_PG_BIN before looking at pg_config, /usr/lib/postgresql or PATH: point it at the
  # pinned server binaries so the host's PostgreSQL, if any, is not used.
  HODEI_PG_BIN = "${lib.getBin pkgs.postgresql}/bin";

  # The same registry node image the apps use, for scripts run by hand from this shell. Not
  # KIND_NODE_IMAGE, which would bypass HODEI_KIND_NODE_SOURCE: without access to Docker Hub the
  # scripts then build the node image locally (scripts/e2e/build-kind-node-image.sh).
  HODEI_KIND_REGISTRY_NODE_IMAGE = kindNodeImage;
  HODEI_WORKER_IMAGE = "${constants.workerImage.name}:${constants.workerImage.tag}";
}
