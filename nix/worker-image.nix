# The worker image, built by Nix without Docker and without pulling a base image. Same layout
# and contract as scripts/build-worker-image.sh (the non-Nix way): ENTRYPOINT
# /usr/local/bin/hodei-worker, a shell and core tools for jobs (busybox), CA certificates with
# SSL_CERT_FILE, a writable /tmp, and user `hodei` (uid 65532) with its home directory.
#
# streamLayeredImage (nixpkgs pkgs/build-support/docker/default.nix) builds a script that writes
# the image tarball to stdout, so the store keeps no multi-megabyte tarball; use it as
#   "$(nix build .#worker-image --print-out-paths)" > worker-image.tar   (kind load image-archive)
#   "$(nix build .#worker-image --print-out-paths)" | docker load
# Its arguments used here: name, tag, contents, extraCommands, fakeRootCommands, config.
# Linux only (flake.nix guards it): the image holds Linux binaries of the host's architecture.
{
  pkgs,
  hodei-worker,
  constants,
  revision,
}:
let
  inherit (pkgs) lib;
  inherit (constants.workerImage)
    name
    tag
    uid
    user
    ;
  id = toString uid;
  home = "/home/${user}";

  # /etc/passwd, /etc/group and /etc/nsswitch.conf with root, nobody and the worker user
  # (nixpkgs pkgs/by-name/fa/fakeNss/package.nix, arguments extraPasswdLines/extraGroupLines).
  nss = pkgs.dockerTools.fakeNss.override {
    extraPasswdLines = [ "${user}:x:${id}:${id}:hodei worker:${home}:/bin/sh" ];
    extraGroupLines = [ "${user}:x:${id}:" ];
  };
in
pkgs.dockerTools.streamLayeredImage {
  inherit name tag;

  contents = [
    # /bin/sh and the usual applets (ls, cat, env, sleep, ...) that job commands expect.
    pkgs.busybox
    # /etc/ssl/certs/ca-certificates.crt (and the other common paths), from nixpkgs' cacert.
    pkgs.dockerTools.caCertificates
    nss
  ];

  # Runs unprivileged in the image root; mode bits survive into the layer.
  extraCommands = ''
    mkdir -p usr/local/bin tmp
    ln -s ${lib.getExe hodei-worker} usr/local/bin/hodei-worker
    chmod 1777 tmp
  '';

  # Runs under fakeroot, so the ownership is recorded in the layer.
  fakeRootCommands = ''
    mkdir -p .${home}
    chown ${id}:${id} .${home}
  '';

  config = {
    Entrypoint = [ "/usr/local/bin/hodei-worker" ];
    User = "${id}:${id}";
    WorkingDir = home;
    Env = [
      "PATH=/usr/local/bin:/bin"
      "HOME=${home}"
      "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
    ];
    Labels = {
      "org.opencontainers.image.title" = "hodei-worker";
      "org.opencontainers.image.description" = "Hodei Jobs worker agent (built with Nix)";
      "org.opencontainers.image.revision" = revision;
    };
  };

  meta.description = "Hodei worker image ${name}:${tag}; run the result to stream the tarball";
}
