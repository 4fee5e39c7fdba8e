# The server image, built by Nix without Docker and without pulling a base image. Same layout
# and contract as scripts/build-server-image.sh (the non-Nix way): ENTRYPOINT
# /usr/local/bin/hodei-server, CA certificates with SSL_CERT_FILE, /tmp, user `hodei` (uid
# 65532) that the image runs as, port 50051. No shell: the server never runs one.
#
# streamLayeredImage (nixpkgs pkgs/build-support/docker/default.nix) builds a script that writes
# the image tarball to stdout, so the store keeps no multi-megabyte tarball; use it as
#   "$(nix build .#server-image --print-out-paths)" > server-image.tar   (kind load image-archive)
#   "$(nix build .#server-image --print-out-paths)" | docker load
# Its arguments used here: name, tag, contents, extraCommands, config (the OCI image
# configuration: Entrypoint, User, Env, ExposedPorts, Labels). The binary's closure (glibc from
# the store) enters the image with it (includeStorePaths, true by default).
# Linux only (flake.nix guards it): the image holds Linux binaries of the host's architecture.
{
  pkgs,
  hodei-server,
  constants,
  revision,
}:
let
  inherit (pkgs) lib;
  inherit (constants.serverImage)
    name
    tag
    uid
    user
    port
    ;
  id = toString uid;

  # /etc/passwd, /etc/group and /etc/nsswitch.conf with root, nobody and the server's user
  # (nixpkgs pkgs/by-name/fa/fakeNss/package.nix, arguments extraPasswdLines/extraGroupLines).
  nss = pkgs.dockerTools.fakeNss.override {
    extraPasswdLines = [ "${user}:x:${id}:${id}:hodei server:/var/empty:/bin/false" ];
    extraGroupLines = [ "${user}:x:${id}:" ];
  };
in
pkgs.dockerTools.streamLayeredImage {
  inherit name tag;

  contents = [
    # /etc/ssl/certs/ca-certificates.crt (and the other common paths), from nixpkgs' cacert:
    # TLS to PostgreSQL and to the Kubernetes or Docker API.
    pkgs.dockerTools.caCertificates
    nss
  ];

  # Runs unprivileged in the image root; mode bits survive into the layer. /tmp is writable
  # only where something is mounted on it: the Deployment's root is read-only and mounts an
  # emptyDir there.
  extraCommands = ''
    mkdir -p usr/local/bin tmp
    ln -s ${lib.getExe hodei-server} usr/local/bin/hodei-server
    chmod 1777 tmp
  '';

  config = {
    Entrypoint = [ "/usr/local/bin/hodei-server" ];
    User = "${id}:${id}";
    Env = [
      "PATH=/usr/local/bin"
      "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
    ];
    ExposedPorts = {
      "${toString port}/tcp" = { };
    };
    Labels = {
      "org.opencontainers.image.title" = "hodei-server";
      "org.opencontainers.image.description" = "Hodei Jobs server (built with Nix)";
      "org.opencontainers.image.revision" = revision;
    };
  };

  meta.description = "Hodei server image ${name}:${tag}; run the result to stream the tarball";
}
