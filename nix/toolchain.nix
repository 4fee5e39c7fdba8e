# The Rust toolchain, read from the same rust-toolchain.toml that rustup reads, so Nix and
# non-Nix builds use one pin (channel, components, profile).
#
# rust-overlay's `lib.mkRustBin { } pkgs` (flake.nix of oxalica/rust-overlay) builds the
# `rust-bin` set on an existing nixpkgs without re-importing it with an overlay;
# `fromRustupToolchainFile` is defined in its lib/rust-bin.nix. The toolchain for 1.95.0 is in
# the pinned revision (manifests/stable/1.95.0.nix).
#
# A function of `pkgs` because crane's `overrideToolchain` accepts one and then splices the
# toolchain correctly if the flake is ever cross-compiled (crane lib/default.nix).
{ rust-overlay }:
pkgs: (rust-overlay.lib.mkRustBin { } pkgs).fromRustupToolchainFile ../rust-toolchain.toml
