# The kubectl of the apps and the dev shell: within Kubernetes' version skew policy for kubectl
# (one minor older or newer than the API server, https://kubernetes.io/releases/version-skew-policy/)
# of the Kind node (constants.kubernetesMinor).
#
# The pinned nixpkgs (26.05) may ship a newer kubectl than that; then the one of the
# `nixpkgs-kubectl` input (nixos-25.11, whose Kubernetes is 1.34) is used. The choice is made at
# evaluation time from the packages' `version` attributes (nixpkgs pkgs/by-name/ku/kubectl), in
# this order, and evaluation stops with a message if neither fits, instead of handing the
# scripts a kubectl the node does not support. The scripts check the same at run time
# (scripts/e2e/lib/kind.sh, resolve_kind_tools).
{
  lib,
  constants,
  candidates,
}:
let
  minorOf = version: lib.toInt (builtins.elemAt (lib.splitVersion version) 1);
  node = minorOf "${constants.kubernetesMinor}.0";
  fits = drv: (minorOf drv.version) >= node - 1 && (minorOf drv.version) <= node + 1;
  chosen = lib.findFirst fits null candidates;
in
if chosen != null then
  chosen
else
  throw ''
    No kubectl within one minor of the Kind node's Kubernetes ${constants.kubernetesMinor}: the
    candidates are ${lib.concatMapStringsSep ", " (drv: drv.version) candidates}.
    Point the nixpkgs-kubectl input of flake.nix at a nixpkgs whose kubectl is
    1.${toString (node - 1)} to 1.${toString (node + 1)}, or move the node images in
    nix/constants.nix to a newer Kubernetes.
  ''
