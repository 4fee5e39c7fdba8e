//! How the Docker provider reaches the engine and what it asks of it.

use std::time::Duration;

use crate::WorkerDefaults;

/// The worker image used when neither the configuration nor `HODEI_WORKER_IMAGE` names one.
/// Built locally by `scripts/build-worker-image.sh`; never `:latest`, so tests cannot silently
/// run a stale image.
pub const DEFAULT_WORKER_IMAGE: &str = "hodei-worker:e2e-test";
/// Environment variable naming the worker image.
pub const WORKER_IMAGE_ENV: &str = "HODEI_WORKER_IMAGE";
/// The engine's socket when neither the configuration nor `DOCKER_HOST` names one.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

#[derive(Debug, Clone)]
pub struct DockerProviderConfig {
    /// The worker image. It must already be on the engine: the provider never pulls.
    pub image: String,
    /// Network the containers join (`--network`); None: the engine's default bridge.
    pub network: Option<String>,
    /// `host:ip` entries added to the containers' `/etc/hosts` (`--add-host`), e.g.
    /// `host.docker.internal:host-gateway` so workers can reach a server on the host.
    pub extra_hosts: Vec<String>,
    /// Engine address: `unix:///path` or `tcp://host:port`. None: `DOCKER_HOST`, else
    /// [`DEFAULT_DOCKER_HOST`].
    pub docker_host: Option<String>,
    /// How long a worker gets between SIGTERM and SIGKILL when destroyed.
    pub stop_grace: Duration,
    /// How long `destroy_worker` waits for the container to disappear after removing it.
    pub destroy_timeout: Duration,
    /// How long `connect` waits for the engine to answer.
    pub connect_timeout: Duration,
    /// Upper bound on every other engine request (except `stop`, which adds `stop_grace`).
    pub request_timeout: Duration,
    /// Run the engine's init (tini) as PID 1, so the worker gets SIGTERM forwarded and
    /// orphaned job processes are reaped even though the worker is not written to be PID 1.
    pub init: bool,
    /// Limits of jobs that set none, the PID limit, and the image's home directory (a tmpfs,
    /// as `/tmp` is, under the read-only root file system).
    pub defaults: WorkerDefaults,
}

impl DockerProviderConfig {
    /// Defaults with the given image.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            network: None,
            extra_hosts: Vec::new(),
            docker_host: None,
            stop_grace: Duration::from_secs(10),
            destroy_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            init: true,
            defaults: WorkerDefaults::default(),
        }
    }

    /// The engine address this configuration resolves to.
    pub fn resolved_docker_host(&self) -> String {
        resolve_host(
            self.docker_host.as_deref(),
            std::env::var("DOCKER_HOST").ok().as_deref(),
        )
    }
}

impl Default for DockerProviderConfig {
    /// The image comes from `HODEI_WORKER_IMAGE`, else [`DEFAULT_WORKER_IMAGE`].
    fn default() -> Self {
        let image = std::env::var(WORKER_IMAGE_ENV)
            .ok()
            .filter(|image| !image.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_WORKER_IMAGE.to_string());
        Self::new(image)
    }
}

fn resolve_host(configured: Option<&str>, from_env: Option<&str>) -> String {
    configured
        .or(from_env)
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .unwrap_or(DEFAULT_DOCKER_HOST)
        .to_string()
}

/// Which transport an engine address needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Endpoint<'a> {
    /// A socket path (with or without `unix://`).
    Unix(&'a str),
    /// `tcp://host:port` or `http://host:port`.
    Http(&'a str),
}

pub(super) fn endpoint(host: &str) -> Result<Endpoint<'_>, String> {
    if let Some(path) = host.strip_prefix("unix://") {
        Ok(Endpoint::Unix(path))
    } else if host.starts_with('/') {
        Ok(Endpoint::Unix(host))
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Ok(Endpoint::Http(host))
    } else {
        Err(format!(
            "unsupported Docker host {host:?}: expected unix:///path/to/docker.sock or tcp://host:port"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_host_wins_over_docker_host_which_wins_over_the_default() {
        assert_eq!(
            resolve_host(Some("tcp://a:2375"), Some("unix:///b.sock")),
            "tcp://a:2375"
        );
        assert_eq!(resolve_host(None, Some("unix:///b.sock")), "unix:///b.sock");
        assert_eq!(resolve_host(None, Some("  ")), DEFAULT_DOCKER_HOST);
        assert_eq!(resolve_host(None, None), DEFAULT_DOCKER_HOST);
    }

    #[test]
    fn unix_and_tcp_hosts_are_understood_and_others_refused() {
        assert_eq!(
            endpoint("unix:///var/run/docker.sock"),
            Ok(Endpoint::Unix("/var/run/docker.sock"))
        );
        assert_eq!(endpoint("/run/d.sock"), Ok(Endpoint::Unix("/run/d.sock")));
        assert_eq!(
            endpoint("tcp://10.0.0.1:2375"),
            Ok(Endpoint::Http("tcp://10.0.0.1:2375"))
        );
        let err = endpoint("ssh://me@host").unwrap_err();
        assert!(err.contains("unsupported Docker host"), "{err}");
    }
}
