# `nix run .#<app>`: thin wrappers that pin tools and versions around the repository's scripts
# (scripts/e2e/*.sh, scripts/demo.sh), which CI and non-Nix users run directly. No test or
# cluster logic lives here.
#
# Each app is a writeShellApplication (nixpkgs pkgs/build-support/trivial-builders/default.nix:
# name, text, runtimeInputs, runtimeEnv, meta); its build runs shellcheck on the script, and
# checks.apps builds them all. The shell is in nix/apps/*.sh, so it can be read and linted
# as shell.
#
# Apps that use the worker or server image exist on Linux only, like the images.
#
# Each app gets only the settings it reads (runtimeEnv), so an app that needs neither the images
# nor the node image neither builds nor evaluates them: `nix run .#kind-down`, CI's
# always-run cleanup, builds nothing of the workspace, and an evaluation error in the image
# cannot break it.
{
  pkgs,
  self,
  toolchain,
  constants,
  kindNodeImage,
  kubectl,
  workerImage ? null,
  serverImage ? null,
}:
let
  inherit (pkgs) lib;
  inherit (pkgs.stdenv.hostPlatform) isLinux isDarwin;

  # What the scripts call besides the cluster and Rust tools: coreutils & co., git (also to find
  # the checkout), curl and jq for HTTP probes and JSON. The host's PATH stays behind these, so a
  # tool missing here is still found on the host, unpinned.
  baseInputs = [
    pkgs.bash
    pkgs.coreutils
    pkgs.findutils
    pkgs.gnugrep
    pkgs.gnused
    pkgs.gawk
    pkgs.gnutar
    pkgs.gzip
    pkgs.git
    pkgs.curl
    pkgs.jq
    pkgs.procps
  ]
  ++ lib.optionals isLinux [
    pkgs.util-linux
    pkgs.iproute2
  ];

  # cargo builds and runs the suites from the checkout: the toolchain, a C compiler and linker
  # (ring builds C and assembly; rustc links with `cc`), nextest, and PostgreSQL for the test
  # harness's private database.
  rustInputs = [
    toolchain
    pkgs.stdenv.cc
    pkgs.cargo-nextest
    pkgs.postgresql
  ];

  # kubectl within one minor of the node's Kubernetes (nix/kubectl.nix chooses it).
  clusterInputs = [
    pkgs.kind
    kubectl
    pkgs.docker-client
  ];

  # What every app reads: the flake's source (for runs outside a checkout).
  commonEnv = {
    HODEI_NIX_FLAKE_SOURCE = "${self}";
  }
  # Rust's std links libiconv on macOS; outside a Nix build no setup hook passes its -L flag, and
  # clang reads LIBRARY_PATH.
  // lib.optionalAttrs isDarwin {
    LIBRARY_PATH = "${lib.getLib pkgs.libiconv}/lib";
  };

  # The settings, grouped by what needs them.
  postgresEnv = {
    HODEI_NIX_PG_BIN = "${lib.getBin pkgs.postgresql}/bin";
  };
  clusterEnv = {
    HODEI_NIX_KIND_CLUSTER_NAME = constants.kindClusterName;
  };
  nodeImageEnv = {
    HODEI_NIX_KIND_NODE_IMAGE = kindNodeImage;
  };
  workerImageEnv = {
    HODEI_NIX_WORKER_IMAGE = "${constants.workerImage.name}:${constants.workerImage.tag}";
    HODEI_NIX_WORKER_IMAGE_STREAM = "${workerImage}";
  };
  # The Kubernetes suite deploys deploy/kubernetes/server with this image (nix/server-image.nix).
  serverImageEnv = {
    HODEI_NIX_SERVER_IMAGE = "${constants.serverImage.name}:${constants.serverImage.tag}";
    HODEI_NIX_SERVER_IMAGE_STREAM = "${serverImage}";
  };

  mkApp =
    {
      name,
      description,
      runtimeInputs,
      env ? { },
    }:
    pkgs.writeShellApplication {
      inherit name runtimeInputs;
      runtimeEnv = commonEnv // env;
      text = builtins.readFile ./apps/common.sh + "\n" + builtins.readFile (./apps + "/${name}.sh");
      meta = {
        inherit description;
        mainProgram = name;
      };
    };

  drvs = {
    kind-down = mkApp {
      name = "kind-down";
      description = "Delete the E2E Kind cluster (scripts/e2e/cleanup-kind.sh)";
      runtimeInputs = baseInputs ++ clusterInputs;
      env = clusterEnv;
    };
    demo = mkApp {
      name = "demo";
      description = "Start a private PostgreSQL and the server, run one job, tear down (scripts/demo.sh)";
      runtimeInputs = baseInputs ++ rustInputs;
      env = postgresEnv;
    };
  }
  // lib.optionalAttrs isLinux {
    e2e-k8s = mkApp {
      name = "e2e-k8s";
      description = "Run the Kubernetes E2E suite on a pinned Kind cluster with the Nix-built worker and server images";
      runtimeInputs = baseInputs ++ rustInputs ++ clusterInputs;
      env = postgresEnv // clusterEnv // nodeImageEnv // workerImageEnv // serverImageEnv;
    };
    e2e-docker = mkApp {
      name = "e2e-docker";
      description = "Run the Docker provider's E2E suite with the Nix-built worker image";
      runtimeInputs = baseInputs ++ rustInputs ++ [ pkgs.docker-client ];
      env = postgresEnv // workerImageEnv;
    };
    kind-up = mkApp {
      name = "kind-up";
      description = "Create the E2E Kind cluster from the pinned node image and load the worker and server images";
      runtimeInputs = baseInputs ++ clusterInputs;
      env = clusterEnv // nodeImageEnv // workerImageEnv // serverImageEnv;
    };
  };
in
{
  inherit drvs;

  # The flake's `apps` schema: type, program, and meta.description (shown by `nix flake show`).
  apps = lib.mapAttrs (name: drv: {
    type = "app";
    program = "${drv}/bin/${name}";
    meta.description = drv.meta.description;
  }) drvs;
}
