# Evaluates the flake's outputs for all four systems against stand-ins for nixpkgs, crane and
# rust-overlay. Each stand-in accepts only the argument names the real function accepts (as read
# in its source: nixpkgs pkgs/build-support/docker/default.nix, trivial-builders, fakeNss; crane
# lib/*.nix) and checks the types the flake passes. It catches typos, misspelt arguments,
# missing attributes and wrong types without nixpkgs or network, e.g. with Debian's Nix 2.8:
#
#   nix-instantiate --eval --strict --json -E 'import ./nix/stub-eval.nix { }'
#
# It says nothing about whether the real derivations build: that needs `nix flake check`.
# When the flake starts using another function or argument, teach the stand-in here.
{
  kindVersion ? "0.31.0",
  # nixpkgs' kubectl; the nixpkgs-kubectl input's is 1.34.x. The default makes nix/kubectl.nix
  # fall back to the second; "1.35.1" exercises the first.
  kubectlVersion ? "1.36.2",
  repo ? ../.,
}:
let
  inherit (builtins)
    all
    attrNames
    elem
    filter
    fromTOML
    isAttrs
    isFunction
    isList
    isPath
    isString
    listToAttrs
    readFile
    removeAttrs
    seq
    toJSON
    ;

  checkArgs =
    what: allowed: args:
    let
      unknown = filter (name: !(elem name allowed)) (attrNames args);
    in
    if unknown == [ ] then args else throw "${what}: unknown arguments ${toJSON unknown}";

  mkDrv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      meta = { };
    }
    // extra;

  # What may be interpolated into a string or put on PATH.
  stringy = value: isString value || isPath value || (isAttrs value && value ? outPath);
  # A file set, or a path, which nixpkgs' lib.fileset coerces to one (lib/fileset/default.nix).
  isFileset = value: isPath value || (isAttrs value && value ? _fileset);

  lib = rec {
    genAttrs = names: f: listToAttrs (map (name: { inherit name; value = f name; }) names);
    # nixpkgs lib/strings.nix, lib/lists.nix (the flake uses them on version strings only).
    splitVersion = builtins.splitVersion;
    toInt =
      string:
      let
        parsed = builtins.fromJSON string;
      in
      if builtins.match "[0-9]+" string != null && builtins.isInt parsed then
        parsed
      else
        throw "toInt: ${string} is not an integer";
    findFirst =
      pred: default: list:
      let
        found = filter pred list;
      in
      if found == [ ] then default else builtins.head found;
    concatMapStringsSep = separator: f: list: builtins.concatStringsSep separator (map f list);
    inherit (builtins) mapAttrs attrValues;
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionals = cond: list: if cond then list else [ ];
    optionalString = cond: string: if cond then string else "";
    getExe =
      drv:
      if drv ? meta.mainProgram then
        "${drv}/bin/${drv.meta.mainProgram}"
      else
        throw "getExe: ${drv.name} has no meta.mainProgram";
    getBin = drv: drv;
    getLib = drv: drv;
    importTOML = path: fromTOML (readFile path);
    licenses.asl20 = { };
    fileset = {
      toSource =
        { root, fileset }:
        if isPath root && (isPath fileset || fileset ? _fileset) then mkDrv "source" { } else throw "toSource";
      unions = list: if all isFileset list then { _fileset = true; } else throw "unions: not filesets";
      fileFilter =
        predicate: path:
        let
          keep = predicate {
            name = "hodei.proto";
            type = "regular";
            hasExt = ext: ext == "proto";
          };
        in
        if builtins.isBool keep && isPath path then { _fileset = true; } else throw "fileFilter";
      maybeMissing = path: if isPath path then { _fileset = true; } else throw "maybeMissing";
    };
  };

  pkgsFor =
    system:
    let
      isLinux = builtins.match ".*-linux" system != null;
      plain = name: mkDrv name { };
    in
    lib.genAttrs [
      "bash"
      "busybox"
      "cargo-nextest"
      "coreutils"
      "curl"
      "docker-client"
      "findutils"
      "gawk"
      "git"
      "gnugrep"
      "gnused"
      "gnutar"
      "gzip"
      "iproute2"
      "jq"
      "libiconv"
      "postgresql"
      "procps"
      "shellcheck"
      "util-linux"
    ] plain
    // {
      inherit lib;
      stdenv.hostPlatform = {
        inherit isLinux;
        isDarwin = !isLinux;
      };
      stdenv.cc = plain "cc";
      kind = plain "kind" // {
        version = kindVersion;
      };
      kubectl = plain "kubectl" // {
        version = kubectlVersion;
      };
      dockerTools = {
        fakeNss = plain "fake-nss" // {
          override =
            args:
            seq (checkArgs "fakeNss" [ "extraPasswdLines" "extraGroupLines" ] args) (plain "fake-nss");
        };
        caCertificates = plain "ca-certificates";
        streamLayeredImage =
          raw:
          let
            args = checkArgs "streamLayeredImage" [
              "name"
              "tag"
              "fromImage"
              "contents"
              "config"
              "architecture"
              "variant"
              "created"
              "mtime"
              "uid"
              "gid"
              "uname"
              "gname"
              "maxLayers"
              "extraCommands"
              "fakeRootCommands"
              "enableFakechroot"
              "includeStorePaths"
              "includeNixDB"
              "passthru"
              "meta"
              "layeringPipeline"
              "debug"
            ] raw;
          in
          seq (toJSON args.config) (
            seq (all stringy args.contents && isString args.extraCommands) (
              mkDrv "stream-${args.name}" { inherit (args) meta; }
            )
          );
      };
      mkShell =
        args:
        seq (toJSON (removeAttrs args [ "packages" "buildInputs" ])) (
          seq (all stringy (args.packages ++ args.buildInputs or [ ])) (plain "nix-shell")
        );
      writeShellApplication =
        raw:
        let
          args = checkArgs "writeShellApplication" [
            "name"
            "text"
            "runtimeInputs"
            "runtimeEnv"
            "meta"
            "passthru"
            "checkPhase"
            "excludeShellChecks"
            "extraShellCheckFlags"
            "bashOptions"
            "derivationArgs"
            "inheritPath"
          ] raw;
        in
        seq (toJSON args.runtimeEnv) (
          seq (isString args.text && all stringy args.runtimeInputs) (
            mkDrv args.name { inherit (args) meta; }
          )
        );
      runCommand =
        name: env: script:
        seq (env.src or null) (
          seq (toJSON (removeAttrs env [ "src" "nativeBuildInputs" ])) (seq (isString script) (plain name))
        );
      linkFarmFromDrvs =
        name: drvs:
        if all (drv: drv.type or null == "derivation") drvs then plain name else throw "linkFarmFromDrvs";
    };

  craneArgs = [
    "src"
    "pname"
    "version"
    "strictDeps"
    "buildInputs"
    "nativeBuildInputs"
    "nativeCheckInputs"
    "cargoArtifacts"
    "cargoExtraArgs"
    "doCheck"
    "doInstallCargoArtifacts"
    "postCheck"
    "meta"
    # plain environment variables pass through to mkDerivation
    "HODEI_PG_BIN"
    "HODEI_WORKER_BINARY"
  ];
  withArtifacts = args: seq args.cargoArtifacts.name args;
  craneLib = {
    fileset.commonCargoSources =
      path: if isPath path then { _fileset = true; } else throw "commonCargoSources";
    buildDepsOnly = raw: mkDrv "${(checkArgs "buildDepsOnly" craneArgs raw).pname}-deps" { };
    buildPackage =
      raw:
      let
        args = withArtifacts (checkArgs "buildPackage" craneArgs raw);
      in
      mkDrv args.pname { inherit (args) meta; };
    cargoFmt = raw: mkDrv "${(checkArgs "cargoFmt" (craneArgs ++ [ "rustFmtExtraArgs" ]) raw).pname}-fmt" { };
    cargoClippy =
      raw:
      mkDrv "${
        (withArtifacts (checkArgs "cargoClippy" (craneArgs ++ [ "cargoClippyExtraArgs" ]) raw)).pname
      }-clippy" { };
    cargoNextest =
      raw:
      let
        args = withArtifacts (checkArgs "cargoNextest" (craneArgs ++ [ "cargoNextestExtraArgs" ]) raw);
      in
      seq (args.HODEI_WORKER_BINARY + args.HODEI_PG_BIN) (mkDrv "${args.pname}-nextest" { });
  };

  inputs = {
    self = {
      outPath = repo;
      dirtyRev = "0000000-dirty";
    };
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ] pkgsFor;
    };
    nixpkgs-kubectl.legacyPackages = lib.genAttrs [
      "x86_64-linux"
      "aarch64-linux"
      "x86_64-darwin"
      "aarch64-darwin"
    ] (_system: {
      kubectl = mkDrv "kubectl-1.34.3" { version = "1.34.3"; };
    });
    rust-overlay.lib.mkRustBin = _options: _pkgs: {
      fromRustupToolchainFile =
        path:
        let
          toolchain = (fromTOML (readFile path)).toolchain;
        in
        mkDrv "rust-${toolchain.channel}" { };
    };
    crane.mkLib = pkgs: {
      overrideToolchain =
        toolchainFor:
        if isFunction toolchainFor then
          seq (toolchainFor pkgs).name craneLib
        else
          throw "overrideToolchain: this flake passes a function of pkgs";
    };
  };

  # Derivations as their names, so the result prints as JSON and every attribute is forced.
  force =
    value:
    if isAttrs value && value.type or null == "derivation" then
      value.name
    else if isAttrs value then
      builtins.mapAttrs (_: force) value
    else if isList value then
      map force value
    else
      value;
in
force ((import (repo + "/flake.nix")).outputs inputs)
