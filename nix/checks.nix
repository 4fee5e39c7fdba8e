# `nix flake check`: formatting, lints, the default test suite and the scripts' lint, all in the
# build sandbox (no network, no Docker socket). The E2E suites need a Docker engine or a cluster
# and are not here: they run through the apps (`nix run .#e2e-k8s`).
#
# crane functions used (ipetkov/crane v0.23.4): cargoFmt, cargoClippy, cargoNextest.
{
  pkgs,
  rust,
  appDrvs,
}:
let
  inherit (pkgs) lib;
  inherit (rust) craneLib commonArgs cargoArtifacts;
in
{
  fmt = craneLib.cargoFmt commonArgs;

  # Every shell script of the repository, as .ci/run lints them: *.sh (sourced libraries
  # included) and every file with a sh or bash shebang; -x follows `source`d files.
  shellcheck =
    pkgs.runCommand "hodei-shellcheck"
      {
        nativeBuildInputs = [ pkgs.shellcheck ];
        src = lib.fileset.toSource {
          root = ../.;
          fileset = lib.fileset.unions [
            ../scripts
            ../deploy/kind-node
            ../nix/apps
            (lib.fileset.maybeMissing ../.ci/run)
          ];
        };
      }
      ''
        cd "$src"
        mapfile -t scripts < <(
          find . -type f -name '*.sh'
          find . -type f ! -name '*.sh' -exec awk 'FNR == 1 && /^#!(\/usr)?\/bin\/(env +)?(ba)?sh( |$)/ { print FILENAME } { nextfile }' {} +
        )
        mapfile -t scripts < <(printf '%s\n' "''${scripts[@]}" | sort -u)
        echo "shellcheck: ''${scripts[*]}"
        shellcheck --external-sources --source-path=SCRIPTDIR "''${scripts[@]}"
        touch "$out"
      '';

  # Building an app runs shellcheck on its script (writeShellApplication's checkPhase).
  apps = pkgs.linkFarmFromDrvs "hodei-apps" (lib.attrValues appDrvs);
}
# The workspace compiles for Linux only as far as its tests go: crates/testkit calls prctl
# (PR_SET_PDEATHSIG) and the tests read /proc. Clippy with --all-targets and the test suite
# therefore run on Linux systems only.
// lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
    }
  );

  # The default suite: everything not #[ignore]d. The harness starts a throw-away PostgreSQL from
  # HODEI_PG_BIN in a temporary directory (Unix socket, no TCP port), which the sandbox allows.
  # HODEI_WORKER_BINARY hands the end-to-end tests the worker built by Nix, so the testkit does
  # not try to run cargo build from inside a test. The `ci` profile of .config/nextest.toml, when
  # that file exists, writes JUnit, copied to $out.
  nextest = craneLib.cargoNextest (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoExtraArgs = "--locked --workspace";
      cargoNextestExtraArgs = lib.optionalString (builtins.pathExists ../.config/nextest.toml) "--profile ci";
      nativeCheckInputs = [ pkgs.postgresql ];
      HODEI_PG_BIN = "${lib.getBin pkgs.postgresql}/bin";
      HODEI_WORKER_BINARY = lib.getExe rust.hodei-worker;
      doInstallCargoArtifacts = false;
      postCheck = ''
        junit="''${CARGO_TARGET_DIR:-target}/nextest/ci/junit.xml"
        if [[ -f "$junit" ]]; then
          cp "$junit" "$out/junit.xml"
        fi
      '';
    }
  );
}
