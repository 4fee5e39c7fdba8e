//! Workers as Docker containers, through the engine's API (bollard).
//!
//! One container per worker, named [`container_name`] and labelled with [`crate::labels`].
//! The provider never pulls: the worker image must already be on the engine (see
//! `scripts/build-worker-image.sh`), and a missing image is reported at once as a
//! [`WorkerFailure::ImageNotFound`](hodei_domain::WorkerFailure::ImageNotFound), a permanent failure.
//! Containers are not auto-removed, so an early exit keeps its code, its OOM flag and its log
//! until [`WorkerProvider::destroy_worker`] removes it.
//!
//! The token is not in the container's configuration, which anyone who can `docker inspect` the
//! container reads: between creating and starting the container, the provider uploads it as a
//! file only the container's user can read ([`TOKEN_PATH`]); the worker reads the file and
//! removes it. The provider never logs it; do not enable `bollard=trace`, which logs request
//! bodies.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hodei_providers::ProviderError> {
//! use hodei_providers::docker::{DockerProvider, DockerProviderConfig};
//!
//! let mut config = DockerProviderConfig::default(); // image from HODEI_WORKER_IMAGE
//! config.extra_hosts = vec!["host.docker.internal:host-gateway".into()];
//! let provider = DockerProvider::connect(config).await?;
//! # Ok(()) }
//! ```

mod config;
mod container;
mod errors;
mod status;
mod token_archive;

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use bollard::{
    API_DEFAULT_VERSION, Docker, body_full,
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
        UploadToContainerOptionsBuilder,
    },
};
use futures::TryStreamExt;
use hodei_domain::WorkerId;

use self::{
    config::Endpoint,
    status::{Observed, observe},
};
pub use self::{
    config::{DEFAULT_DOCKER_HOST, DEFAULT_WORKER_IMAGE, DockerProviderConfig, WORKER_IMAGE_ENV},
    container::container_name,
    errors::IMAGE_NOT_PRESENT,
    token_archive::TOKEN_PATH,
};
use crate::{
    ManagedWorker, ProviderError, WorkerHandle, WorkerProvider, WorkerSpec, WorkerStatus, labels,
};

const PROVIDER: &str = "docker";
/// Lines of a container's log kept to explain an early exit.
const LOG_TAIL_LINES: usize = 20;
/// Bound on that explanation, so a worker printing huge lines cannot bloat the database.
const LOG_TAIL_MAX_BYTES: usize = 4096;
/// Time the engine gets, beyond the stop grace, to answer a stop request.
const STOP_SLACK: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Starts workers as containers on one Docker engine.
pub struct DockerProvider {
    docker: Docker,
    config: DockerProviderConfig,
    host: String,
}

impl DockerProvider {
    /// Connects to the engine and agrees on an API version it supports (an engine older than
    /// bollard's default, e.g. Docker 20.10 = API 1.41, refuses newer versions outright).
    ///
    /// Fails with [`ProviderError::Unavailable`] when no engine answers within
    /// `connect_timeout` or the configured network does not exist. A missing image is only a
    /// warning here, since it can be built after the server started.
    pub async fn connect(config: DockerProviderConfig) -> Result<Self, ProviderError> {
        let host = config.resolved_docker_host();
        let docker = client(&host, config.request_timeout)?;
        let docker =
            match tokio::time::timeout(config.connect_timeout, docker.negotiate_version()).await {
                Ok(Ok(docker)) => docker,
                Ok(Err(e)) => return Err(errors::unreachable(&host, e)),
                Err(_) => {
                    return Err(errors::unreachable(
                        &host,
                        format!("no answer within {:?}", config.connect_timeout),
                    ));
                }
            };

        if let Some(network) = &config.network
            && let Err(e) = docker.inspect_network(network, None).await
        {
            let detail = if errors::is_not_found(&e) {
                format!(
                    "Docker network {network:?} does not exist; create it with \
                     `docker network create {network}` or unset the network"
                )
            } else {
                format!("cannot inspect Docker network {network:?}: {e}")
            };
            return Err(ProviderError::Unavailable {
                provider: PROVIDER,
                detail,
            });
        }
        match docker.inspect_image(&config.image).await {
            Ok(_) => {}
            Err(e) if errors::is_not_found(&e) => tracing::warn!(
                image = %config.image,
                "worker image not present on the Docker engine; workers will fail until it is \
                 built with scripts/build-worker-image.sh"
            ),
            Err(e) => {
                tracing::warn!(image = %config.image, error = %e, "cannot inspect worker image")
            }
        }

        let api = docker.client_version();
        tracing::info!(
            %host,
            api_version = %format!("{}.{}", api.major_version, api.minor_version),
            image = %config.image,
            network = config.network.as_deref().unwrap_or("default"),
            "connected to Docker engine"
        );
        Ok(Self {
            docker,
            config,
            host,
        })
    }

    pub fn config(&self) -> &DockerProviderConfig {
        &self.config
    }

    /// The engine address in use.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The engine client, with the negotiated API version (for tests and diagnostics).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn failed(&self, what: &str, error: bollard::errors::Error) -> ProviderError {
        errors::request_failed(what, error, self.config.request_timeout)
    }

    /// Force-removes `name`; a container that is already gone counts as removed.
    async fn force_remove(&self, name: &str) -> Result<(), ProviderError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if errors::is_not_found(&e) => Ok(()),
            // Someone else (another destroy, the reaper) is already removing it.
            Err(e)
                if errors::status_of(&e) == Some(409)
                    && errors::message_of(&e).contains("already in progress") =>
            {
                Ok(())
            }
            Err(e) => Err(self.failed(&format!("removing container {name}"), e)),
        }
    }

    /// Stops `container` (a name or an id) within the stop grace, removes it, and waits until
    /// it is gone; a container already gone is done.
    async fn stop_and_remove(&self, container: &str) -> Result<(), ProviderError> {
        let grace = i32::try_from(self.config.stop_grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(grace).build();
        // A stop may legitimately take the whole grace; the usual request timeout is shorter.
        let stopper = self
            .docker
            .clone()
            .with_timeout(self.config.stop_grace + STOP_SLACK);
        // 304 (not running: created or exited) arrives as Ok.
        match stopper.stop_container(container, Some(options)).await {
            Ok(()) => {}
            Err(e) if errors::is_not_found(&e) => return Ok(()),
            Err(e) => {
                tracing::warn!(container, error = %e, "stopping worker container failed; removing it by force")
            }
        }
        self.force_remove(container).await?;
        self.wait_until_gone(container).await
    }

    /// Polls until the engine no longer knows `name`, or `destroy_timeout` passes.
    async fn wait_until_gone(&self, name: &str) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + self.config.destroy_timeout;
        loop {
            match self.docker.inspect_container(name, None).await {
                Err(e) if errors::is_not_found(&e) => return Ok(()),
                Err(e) => return Err(self.failed(&format!("inspecting container {name}"), e)),
                Ok(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ProviderError::Timeout {
                        provider: PROVIDER,
                        what: format!("container {name} to be removed"),
                        after: self.config.destroy_timeout,
                    });
                }
                Ok(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// The image's user as numbers, for the owner of the writable mounts. None when the image
    /// names a user (only its passwd file resolves it) or cannot be inspected: a missing image
    /// is reported by the create that follows, classified.
    async fn image_owner(&self) -> Option<token_archive::Owner> {
        match self.docker.inspect_image(&self.config.image).await {
            Ok(image) => {
                let user = image.config.and_then(|c| c.user).unwrap_or_default();
                token_archive::Owner::of_user(&user)
            }
            Err(e) => {
                tracing::debug!(image = %self.config.image, error = %e, "cannot inspect the worker image");
                None
            }
        }
    }

    /// Uploads the token into the created container, owned by the container's user, where the
    /// worker reads it ([`TOKEN_PATH`]).
    async fn hand_over_token(&self, name: &str, spec: &WorkerSpec) -> Result<(), ProviderError> {
        let user = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| self.failed(&format!("inspecting container {name}"), e))?
            .config
            .and_then(|config| config.user)
            .unwrap_or_default();
        let owner = token_archive::Owner::of_user(&user);
        // A named user only the container's passwd knows: the engine resolves it. Numeric ids
        // go in the archive instead, as some engines (20.10) fail to resolve `uid:gid`.
        let copy_uidgid = if owner.is_some() { "false" } else { "true" };
        let options = UploadToContainerOptionsBuilder::default()
            .path(token_archive::EXTRACT_AT)
            .copy_uidgid(copy_uidgid)
            .build();
        let archive = token_archive::token_archive(spec.token.expose(), owner.unwrap_or_default());
        self.docker
            .upload_to_container(name, Some(options), body_full(archive.into()))
            .await
            .map_err(|e| self.failed(&format!("uploading the token into container {name}"), e))
    }

    /// The last lines the container printed, to explain why it exited.
    async fn log_tail(&self, name: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&LOG_TAIL_LINES.to_string())
            .build();
        let chunks = self
            .docker
            .logs(name, Some(options))
            .map_ok(|chunk| chunk.to_string())
            .try_collect::<Vec<_>>();
        match tokio::time::timeout(self.config.request_timeout, chunks).await {
            Ok(Ok(chunks)) => last_bytes(chunks.concat().trim_end(), LOG_TAIL_MAX_BYTES),
            Ok(Err(e)) => format!("(container log unavailable: {})", errors::message_of(&e)),
            Err(_) => "(container log unavailable: the engine did not answer)".into(),
        }
    }
}

#[async_trait]
impl WorkerProvider for DockerProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn create_worker(&self, spec: &WorkerSpec) -> Result<WorkerHandle, ProviderError> {
        let name = container_name(&spec.worker_id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = container::create_body(&self.config, spec, self.image_owner().await);
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                errors::create_failed(&self.config.image, &name, e, self.config.request_timeout)
            })?;
        for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
            tracing::warn!(worker_id = %spec.worker_id, container = %name, "Docker: {warning}");
        }

        let started = match self.hand_over_token(&name, spec).await {
            Ok(()) => self
                .docker
                .start_container(&name, None)
                .await
                .map_err(|e| self.failed(&format!("starting container {name}"), e)),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            // A container that never started would only wait for the reaper.
            if let Err(remove) = self.force_remove(&name).await {
                tracing::warn!(container = %name, error = %remove, "cannot remove container that failed to start");
            }
            return Err(e);
        }
        tracing::debug!(worker_id = %spec.worker_id, container = %name, image = %self.config.image, "started worker container");
        Ok(WorkerHandle {
            worker_id: spec.worker_id,
            resource: name,
        })
    }

    async fn worker_status(&self, worker_id: &WorkerId) -> Result<WorkerStatus, ProviderError> {
        let name = container_name(worker_id);
        let container = match self.docker.inspect_container(&name, None).await {
            Ok(container) => container,
            Err(e) if errors::is_not_found(&e) => return Ok(WorkerStatus::NotFound),
            Err(e) => return Err(self.failed(&format!("inspecting container {name}"), e)),
        };
        Ok(match observe(&container) {
            Observed::Status(status) => status,
            Observed::Exited {
                exit_code,
                engine_error,
            } => {
                let log = self.log_tail(&name).await;
                let detail = match engine_error {
                    Some(error) if log.is_empty() => error,
                    Some(error) => format!("{error}\n{log}"),
                    None if log.is_empty() => "(the container printed nothing)".into(),
                    None => log,
                };
                WorkerStatus::Exited { exit_code, detail }
            }
        })
    }

    async fn destroy_worker(&self, worker_id: &WorkerId) -> Result<(), ProviderError> {
        let name = container_name(worker_id);
        self.stop_and_remove(&name).await?;
        tracing::debug!(%worker_id, container = %name, "destroyed worker container");
        Ok(())
    }

    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedWorker>, ProviderError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={instance}", labels::INSTANCE),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.failed("listing worker containers", e))?;
        Ok(containers
            .into_iter()
            .map(|container| {
                let worker_id = container
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(labels::WORKER_ID))
                    .and_then(|id| id.parse().ok());
                let id = container.id.unwrap_or_default();
                // Names come with a leading slash; fall back to the id for a nameless one.
                let resource = container
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_string())
                    .unwrap_or_else(|| id.clone());
                ManagedWorker {
                    worker_id,
                    resource,
                    uid: id,
                }
            })
            .collect())
    }

    /// By the container id listed: ids are never reused, so a container created since under
    /// the same name is not hit, and one someone else named is removed too.
    async fn remove_managed(&self, found: &ManagedWorker) -> Result<(), ProviderError> {
        if found.uid.is_empty() {
            return Err(ProviderError::Rejected {
                provider: PROVIDER,
                detail: format!("cannot remove {found:?}: the listing gave no container id"),
            });
        }
        self.stop_and_remove(&found.uid).await?;
        tracing::debug!(worker_id = ?found.worker_id, container = %found.resource, id = %found.uid, "removed listed container");
        Ok(())
    }
}

/// A client for `host`, not yet connected: bollard connects per request.
fn client(host: &str, request_timeout: Duration) -> Result<Docker, ProviderError> {
    let timeout = request_timeout.as_secs().max(1);
    let endpoint = config::endpoint(host).map_err(|e| ProviderError::Unavailable {
        provider: PROVIDER,
        detail: e,
    })?;
    let docker = match endpoint {
        Endpoint::Unix(path) => Docker::connect_with_unix(path, timeout, API_DEFAULT_VERSION),
        Endpoint::Http(address) => Docker::connect_with_http(address, timeout, API_DEFAULT_VERSION),
    };
    docker.map_err(|e| errors::unreachable(host, e))
}

/// The end of `text`, at most `max` bytes, cut at a character boundary.
fn last_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_tail_keeps_its_end() {
        assert_eq!(last_bytes("short", 10), "short");
        assert_eq!(last_bytes("0123456789abc", 3), "…abc");
        // Never splits a multi-byte character.
        assert_eq!(last_bytes("ééé", 3), "…é");
    }
}
