# The three binaries, built with crane: one derivation compiles every dependency of the
# workspace (buildDepsOnly) and each binary reuses it, so editing our code never rebuilds
# tonic, sqlx, kube or bollard.
#
# crane functions used (ipetkov/crane v0.23.4, lib/default.nix): mkLib (flake.nix),
# overrideToolchain, fileset.commonCargoSources, buildDepsOnly, buildPackage.
{
  pkgs,
  crane,
  toolchainFor,
}:
let
  inherit (pkgs) lib;

  craneLib = (crane.mkLib pkgs).overrideToolchain toolchainFor;

  root = ../.;

  # Cargo files and Rust sources, plus what the build reads besides them: the .proto files that
  # crates/proto/build.rs compiles with protox (pure Rust: no protoc) and the SQL migrations that
  # sqlx::migrate! embeds. Anything else (docs, scripts, deploy/) stays out, so editing it does
  # not rebuild anything. `.config/nextest.toml` is kept by commonCargoSources (all *.toml).
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (lib.fileset.fileFilter (file: file.hasExt "proto") ../crates)
      (lib.fileset.fileFilter (file: file.hasExt "sql") ../crates)
    ];
  };

  workspace = (lib.importTOML ../Cargo.toml).workspace.package;

  # TLS is rustls + ring and protobuf is compiled by protox, so no OpenSSL, pkg-config or protoc;
  # ring's C and assembly need only stdenv's compiler. Darwin's linker wants libiconv for std.
  commonArgs = {
    inherit src;
    pname = "hodei";
    inherit (workspace) version;
    strictDeps = true;
    buildInputs = lib.optionals pkgs.stdenv.hostPlatform.isDarwin [ pkgs.libiconv ];
  };

  # Release profile (crane's default CARGO_PROFILE); checks reuse the same artifacts.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  mkBinary =
    {
      package,
      bin,
      description,
    }:
    craneLib.buildPackage (
      commonArgs
      // {
        inherit cargoArtifacts;
        pname = bin;
        cargoExtraArgs = "--locked --package ${package} --bin ${bin}";
        # The tests need PostgreSQL and run once for the whole workspace in checks.nextest.
        doCheck = false;
        meta = {
          inherit description;
          mainProgram = bin;
          license = lib.licenses.asl20;
        };
      }
    );
in
{
  inherit
    craneLib
    commonArgs
    cargoArtifacts
    src
    ;

  hodei-server = mkBinary {
    package = "hodei-server";
    bin = "hodei-server";
    description = "Hodei Jobs server: gRPC API, dispatcher, worker providers";
  };

  hodei-worker = mkBinary {
    package = "hodei-worker";
    bin = "hodei-worker";
    description = "Hodei Jobs worker agent: registers with the server and runs one job";
  };

  hodei = mkBinary {
    package = "hodei-cli";
    bin = "hodei";
    description = "Hodei Jobs command-line client";
  };
}
