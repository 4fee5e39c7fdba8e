//! [`KubernetesProvider`]: the API calls behind each [`WorkerProvider`] operation.

use std::{future::Future, str::FromStr};

use async_trait::async_trait;
use hodei_domain::{WorkerFailure, WorkerId};
use k8s_openapi::{
    api::core::v1::{Event, Pod, Secret},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams, Preconditions, PropagationPolicy},
};

use super::{
    PROVIDER,
    config::KubernetesProviderConfig,
    errors::{self, Request},
    events,
    pod::{build_pod, build_secret, pod_name, secret_name},
    status::{Graces, classify, stop_cause},
};
use crate::{
    ManagedWorker, ProviderError, WorkerHandle, WorkerProvider, WorkerSpec, WorkerStatus, labels,
};

/// Starts workers as Pods in one namespace.
///
/// The API calls it makes are exactly those granted by `deploy/kubernetes/rbac-test.yaml`:
/// pods `create`, `get`, `list`, `delete`; secrets `create`, `delete` (never `get`, `list` or
/// `watch`, which return a Secret's data: another worker's token); events `list` (a Pod's
/// sandbox failures).
pub struct KubernetesProvider {
    config: KubernetesProviderConfig,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    events: Api<Event>,
    client: Client,
    /// How messages name the API: "the Kubernetes API at <url>" when the URL is known.
    api: String,
}

impl KubernetesProvider {
    /// Connects with the ambient configuration — `KUBECONFIG` (or `~/.kube/config`), else the
    /// in-cluster service account — and checks that the API answers and lets us list Pods
    /// ([`Self::check`]), so a misconfiguration shows at start-up.
    pub async fn connect(config: KubernetesProviderConfig) -> Result<Self, ProviderError> {
        let kube_config = kube::Config::infer()
            .await
            .map_err(|e| ProviderError::Unavailable {
                provider: PROVIDER,
                detail: format!(
                    "no Kubernetes configuration found ({}); set KUBECONFIG to a kubeconfig \
                         file or run the server inside a cluster",
                    errors::chain(&e)
                ),
            })?;
        let provider = Self::from_kube_config(kube_config, config)?;
        provider.check().await?;
        Ok(provider)
    }

    /// Uses an explicit kube-rs configuration, e.g. one authenticating with a ServiceAccount
    /// token. Does not contact the API. Must be called inside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(token: String) -> Result<(), Box<dyn std::error::Error>> {
    /// use hodei_providers::kubernetes::{KubernetesProvider, KubernetesProviderConfig};
    ///
    /// // Act as the ServiceAccount of deploy/kubernetes/rbac-test.yaml, with a token from the
    /// // TokenRequest API (`kubectl -n hodei-e2e create token hodei-e2e-provider`).
    /// let mut kube_config = kube::Config::infer().await?;
    /// kube_config.auth_info = kube::config::AuthInfo {
    ///     token: Some(token.into()),
    ///     ..Default::default()
    /// };
    /// let provider =
    ///     KubernetesProvider::from_kube_config(kube_config, KubernetesProviderConfig::for_tests())?;
    /// provider.check().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_kube_config(
        kube_config: kube::Config,
        config: KubernetesProviderConfig,
    ) -> Result<Self, ProviderError> {
        let api = format!("the Kubernetes API at {}", kube_config.cluster_url);
        let client = Client::try_from(kube_config).map_err(|e| ProviderError::Unavailable {
            provider: PROVIDER,
            detail: format!("cannot build a client for {api}: {}", errors::chain(&e)),
        })?;
        Ok(Self::build(client, config, api))
    }

    /// Uses a ready client (tests pass one backed by a mock service). Does not contact the API.
    /// The client's default namespace is ignored; `config.namespace` is used.
    pub fn with_client(client: Client, config: KubernetesProviderConfig) -> Self {
        Self::build(client, config, "the Kubernetes API".into())
    }

    fn build(client: Client, config: KubernetesProviderConfig, api: String) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &config.namespace),
            secrets: Api::namespaced(client.clone(), &config.namespace),
            events: Api::namespaced(client.clone(), &config.namespace),
            client,
            config,
            api,
        }
    }

    pub fn config(&self) -> &KubernetesProviderConfig {
        &self.config
    }

    /// Checks that the API answers (`GET /version`, allowed to every authenticated client)
    /// and that we may list Pods in the namespace.
    pub async fn check(&self) -> Result<(), ProviderError> {
        let version_request = Request {
            verb: "get",
            resource: "version",
            name: None,
            namespace: None,
        };
        let version = self
            .call(&version_request, self.client.apiserver_version())
            .await?;
        let list_request = self.request("list", "pods", None);
        self.call(
            &list_request,
            self.pods.list(&ListParams::default().limit(1)),
        )
        .await?;
        tracing::info!(
            api = %self.api,
            version = %version.git_version,
            namespace = %self.config.namespace,
            "Kubernetes API reachable"
        );
        Ok(())
    }

    fn request<'a>(
        &'a self,
        verb: &'static str,
        resource: &'static str,
        name: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            verb,
            resource,
            name,
            namespace: Some(&self.config.namespace),
        }
    }

    /// One API request, its error explained.
    async fn call<T>(
        &self,
        request: &Request<'_>,
        future: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ProviderError> {
        self.bounded(request, future)
            .await?
            .map_err(|e| errors::from_kube(e, request, &self.api))
    }

    /// Like [`Self::call`], with 404 Not Found as `Ok(None)`.
    async fn call_opt<T>(
        &self,
        request: &Request<'_>,
        future: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Option<T>, ProviderError> {
        match self.bounded(request, future).await? {
            Ok(value) => Ok(Some(value)),
            Err(e) if errors::is_not_found(&e) => Ok(None),
            Err(e) => Err(errors::from_kube(e, request, &self.api)),
        }
    }

    /// Bounds a request by `request_timeout`: kube-rs has no default read timeout.
    async fn bounded<T>(
        &self,
        request: &Request<'_>,
        future: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, ProviderError> {
        tokio::time::timeout(self.config.request_timeout, future)
            .await
            .map_err(|_| errors::timed_out(request, self.config.request_timeout))
    }

    /// Deletes, treating "already gone" as done. Returns whether it still existed.
    async fn delete_pod(&self, name: &str, grace_seconds: u32) -> Result<bool, ProviderError> {
        let params = DeleteParams {
            grace_period_seconds: Some(grace_seconds),
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        let request = self.request("delete", "pods", Some(name));
        Ok(self
            .call_opt(&request, self.pods.delete(name, &params))
            .await?
            .is_some())
    }

    /// Deletes the object of `kind` named `name` only while it is the one with `uid`: a 409
    /// (the precondition failed: another object took the name since it was listed) and a 404
    /// both mean the listed one is gone.
    async fn delete_listed<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        uid: &str,
        grace_seconds: Option<u32>,
    ) -> Result<(), ProviderError>
    where
        K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let params = DeleteParams {
            grace_period_seconds: grace_seconds,
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let request = self.request("delete", kind, Some(name));
        let deleted = self.bounded(&request, api.delete(name, &params)).await?;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if errors::is_not_found(&e) || errors::is_conflict(&e) => {
                tracing::debug!(kind, name, uid, "listed object already gone");
                Ok(())
            }
            Err(e) => Err(errors::from_kube(e, &request, &self.api)),
        }
    }

    async fn delete_secret(&self, name: &str) -> Result<(), ProviderError> {
        let request = self.request("delete", "secrets", Some(name));
        self.call_opt(
            &request,
            self.secrets.delete(name, &DeleteParams::default()),
        )
        .await?;
        Ok(())
    }

    /// Undoes a half-done `create_worker` by deleting its Pod; a Secret created for it (even
    /// by a request that timed out) is owned by the Pod and goes with it. Failures are logged,
    /// the original error matters; the orphan sweep lists a Pod left behind.
    async fn roll_back(&self, worker_id: &WorkerId, pod: &str) {
        if let Err(e) = self.delete_pod(pod, 0).await {
            tracing::warn!(%worker_id, error = %e, "rollback: could not delete the worker Pod");
        }
    }

    /// The sandbox failure the Pod's events report, if any. An error reading them (e.g. an
    /// older Role without `events list`) is logged and read as "none": the Pod's status still
    /// classifies everything else, and the provisioning deadline still ends the wait.
    async fn sandbox_failure(&self, pod: &Pod) -> Option<WorkerFailure> {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let uid = pod.metadata.uid.as_deref()?;
        let params = ListParams::default().fields(&events::sandbox_events_selector(uid));
        let request = self.request("list", "events", None);
        match self.call(&request, self.events.list(&params)).await {
            Ok(list) => events::sandbox_failure(&list.items),
            Err(e) => {
                tracing::warn!(pod = name, error = %e, "cannot read the worker Pod's events");
                None
            }
        }
    }

    async fn wait_until_pod_gone(&self, name: &str) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + self.config.destroy_timeout;
        let request = self.request("get", "pods", Some(name));
        loop {
            if self
                .call_opt(&request, self.pods.get(name))
                .await?
                .is_none()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::Timeout {
                    provider: PROVIDER,
                    what: format!(
                        "Pod {name} in namespace {} to disappear",
                        self.config.namespace
                    ),
                    after: self.config.destroy_timeout,
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

#[async_trait]
impl WorkerProvider for KubernetesProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    /// Creates the Pod, then the token Secret owned by it (the kubelet waits for the Secret).
    /// Any failure deletes the Pod, and with it anything created for it, so an error leaves
    /// nothing behind.
    async fn create_worker(&self, spec: &WorkerSpec) -> Result<WorkerHandle, ProviderError> {
        let worker_id = spec.worker_id;
        let pod_name = pod_name(&worker_id);
        let secret_name = secret_name(&worker_id);

        let request = self.request("create", "pods", Some(&pod_name));
        let created = self
            .call(
                &request,
                self.pods
                    .create(&PostParams::default(), &build_pod(spec, &self.config)),
            )
            .await?;
        let Some(uid) = created.metadata.uid.as_deref() else {
            self.roll_back(&worker_id, &pod_name).await;
            return Err(ProviderError::Unavailable {
                provider: PROVIDER,
                detail: format!("the API returned Pod {pod_name} without a uid"),
            });
        };

        let request = self.request("create", "secrets", Some(&secret_name));
        let secret = build_secret(spec, &pod_name, uid);
        if let Err(e) = self
            .call(
                &request,
                self.secrets.create(&PostParams::default(), &secret),
            )
            .await
        {
            self.roll_back(&worker_id, &pod_name).await;
            return Err(e);
        }

        tracing::debug!(
            %worker_id,
            pod = %pod_name,
            namespace = %self.config.namespace,
            image = %self.config.image,
            "created worker Pod"
        );
        Ok(WorkerHandle {
            worker_id,
            resource: pod_name,
        })
    }

    async fn worker_status(&self, worker_id: &WorkerId) -> Result<WorkerStatus, ProviderError> {
        let name = pod_name(worker_id);
        let request = self.request("get", "pods", Some(&name));
        let Some(pod) = self.call_opt(&request, self.pods.get(&name)).await? else {
            return Ok(WorkerStatus::NotFound);
        };
        let graces = Graces {
            image_pull: self.config.image_pull_grace,
            unschedulable: self.config.unschedulable_grace,
        };
        let status = classify(&pod, Timestamp::now(), &graces);
        if matches!(status, WorkerStatus::Pending { .. })
            && events::may_be_creating_sandbox(&pod)
            && let Some(failure) = self.sandbox_failure(&pod).await
        {
            return Ok(WorkerStatus::Failed(failure));
        }
        Ok(status)
    }

    /// Read from the Pod while it terminates. A Pod already gone was deleted (with no grace, or
    /// it ended before we asked); this server deletes a worker's Pod only after its session.
    async fn stop_cause(&self, worker_id: &WorkerId) -> Result<Option<String>, ProviderError> {
        let name = pod_name(worker_id);
        let request = self.request("get", "pods", Some(&name));
        match self.call_opt(&request, self.pods.get(&name)).await? {
            Some(pod) => Ok(stop_cause(&pod)),
            None => Ok(Some("Pod deleted".into())),
        }
    }

    /// Deletes the Pod (in the background, with the configured grace) and its Secret, then
    /// waits until the Pod is gone. Works in every Pod state; 404s mean "already done".
    async fn destroy_worker(&self, worker_id: &WorkerId) -> Result<(), ProviderError> {
        let pod_name = pod_name(worker_id);
        let grace = u32::try_from(self.config.termination_grace.as_secs()).unwrap_or(u32::MAX);
        let existed = self.delete_pod(&pod_name, grace).await?;
        // Explicitly, not only through the owner reference: the garbage collector may lag,
        // and the Secret is gone when this returns.
        self.delete_secret(&secret_name(worker_id)).await?;
        if existed {
            self.wait_until_pod_gone(&pod_name).await?;
        }
        tracing::debug!(%worker_id, pod = %pod_name, existed, "destroyed worker Pod");
        Ok(())
    }

    /// The instance's Pods. Their token Secrets are not listed (that would need `list` on
    /// Secrets, which returns their data): each is owned by its Pod and goes with it.
    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedWorker>, ProviderError> {
        let params = ListParams::default().labels(&labels::instance_selector(instance));
        let request = self.request("list", "pods", None);
        let pods = self.call(&request, self.pods.list(&params)).await?;
        Ok(pods
            .items
            .iter()
            .map(|pod| ManagedWorker {
                worker_id: worker_id_label(pod.metadata.labels.as_ref()),
                resource: pod.metadata.name.clone().unwrap_or_default(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes the Pod by the name listed, with a UID precondition. Its token Secret goes with
    /// it through its owner reference.
    async fn remove_managed(&self, found: &ManagedWorker) -> Result<(), ProviderError> {
        if found.resource.is_empty() || found.uid.is_empty() {
            // Every object the API lists has both; without them nothing can be deleted safely.
            return Err(ProviderError::Rejected {
                provider: PROVIDER,
                detail: format!("cannot remove {found:?}: the listing gave no name or uid"),
            });
        }
        let grace = u32::try_from(self.config.termination_grace.as_secs()).unwrap_or(u32::MAX);
        self.delete_listed(&self.pods, "pods", &found.resource, &found.uid, Some(grace))
            .await
    }
}

fn worker_id_label(
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<WorkerId> {
    labels?
        .get(labels::WORKER_ID)
        .and_then(|id| WorkerId::from_str(id).ok())
}
