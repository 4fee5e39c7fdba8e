# Hodei Jobs as a Nix flake: a reproducible environment for building and testing, including the
# end-to-end suites. Read docs/nix.md first. Table of contents:
#
#   nix/constants.nix     shared values: worker and server image name/tag, Kind cluster, node images
#   nix/kubectl.nix       kubectl within one minor of the node's Kubernetes
#   nix/toolchain.nix     Rust from rust-toolchain.toml (rust-overlay)
#   nix/packages.nix      hodei-server, hodei-worker, hodei (crane, dependencies cached apart)
#   nix/worker-image.nix  packages.worker-image (Linux): the worker image, no Docker needed
#   nix/server-image.nix  packages.server-image (Linux): the server image, no Docker needed
#   nix/shell.nix         devShells.default: `nix develop -c cargo nextest run`
#   nix/apps.nix          apps: e2e-k8s, e2e-docker, kind-up, kind-down, demo
#   nix/checks.nix        checks: fmt, clippy, nextest, shellcheck, apps
{
  description = "Hodei Jobs: job execution platform (server, worker, CLI) with reproducible E2E tests";

  inputs = {
    # A stable release: 26.05 is the last to support x86_64-darwin, and crane v0.23 needs at
    # least 25.11.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    # crane's flake has no inputs (it takes nixpkgs through mkLib), so nothing to follow.
    crane.url = "github:ipetkov/crane/v0.23.4";
    # Only for kubectl, when nixpkgs' own is more than one minor away from the node's Kubernetes
    # 1.34 (nix/kubectl.nix): 25.11 ships Kubernetes 1.34.
    nixpkgs-kubectl.url = "github:NixOS/nixpkgs/nixos-25.11";
  };

  outputs =
    {
      self,
      nixpkgs,
      rust-overlay,
      crane,
      nixpkgs-kubectl,
    }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      constants = import ./nix/constants.nix;

      perSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          inherit (pkgs.stdenv.hostPlatform) isLinux;

          toolchainFor = import ./nix/toolchain.nix { inherit rust-overlay; };
          toolchain = toolchainFor pkgs;

          rust = import ./nix/packages.nix { inherit pkgs crane toolchainFor; };

          kindNodeImage =
            constants.kindNodeImages.${pkgs.kind.version} or (throw ''
              No pinned Kubernetes 1.34 node image for kind ${pkgs.kind.version} (nixpkgs' version).
              Add the kindest/node:v1.34.x@sha256:... listed in that kind release's notes to
              kindNodeImages in nix/constants.nix.
            '');

          kubectl = import ./nix/kubectl.nix {
            inherit lib constants;
            candidates = [
              pkgs.kubectl
              nixpkgs-kubectl.legacyPackages.${system}.kubectl
            ];
          };

          workerImage =
            if isLinux then
              import ./nix/worker-image.nix {
                inherit pkgs constants;
                inherit (rust) hodei-worker;
                revision = self.rev or self.dirtyRev or "unknown";
              }
            else
              null;

          serverImage =
            if isLinux then
              import ./nix/server-image.nix {
                inherit pkgs constants;
                inherit (rust) hodei-server;
                revision = self.rev or self.dirtyRev or "unknown";
              }
            else
              null;

          apps = import ./nix/apps.nix {
            inherit
              pkgs
              self
              toolchain
              constants
              kindNodeImage
              kubectl
              workerImage
              serverImage
              ;
          };
        in
        {
          packages = {
            inherit (rust) hodei-server hodei-worker hodei;
            default = rust.hodei;
          }
          // lib.optionalAttrs isLinux {
            worker-image = workerImage;
            server-image = serverImage;
          };

          devShells.default = import ./nix/shell.nix {
            inherit
              pkgs
              toolchain
              constants
              kindNodeImage
              kubectl
              ;
          };

          inherit (apps) apps;

          checks = import ./nix/checks.nix {
            inherit pkgs rust;
            appDrvs = apps.drvs;
          };
        };

      bySystem = lib.genAttrs systems perSystem;
      output = name: lib.mapAttrs (_system: outputs: outputs.${name}) bySystem;
    in
    {
      packages = output "packages";
      devShells = output "devShells";
      apps = output "apps";
      checks = output "checks";
    };
}
