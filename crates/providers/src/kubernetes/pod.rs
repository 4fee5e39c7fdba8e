//! The objects one worker consists of: a Secret holding its token and the Pod that runs it.
//!
//! The token reaches the agent through `env.valueFrom.secretKeyRef`, so it never appears in the
//! Pod spec (which anyone with `get pods` can read). After the Pod exists, the Secret gets the
//! Pod as its owner ([`owner_reference_patch`]), so Kubernetes' garbage collector deletes the
//! Secret with the Pod even if Hodei never gets to.

use std::collections::BTreeMap;

use hodei_contract::env;
use hodei_domain::WorkerId;
use k8s_openapi::{
    ByteString,
    api::core::v1::{
        Capabilities, Container, EnvVar, EnvVarSource, Pod, PodSecurityContext, PodSpec,
        ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

use super::config::KubernetesProviderConfig;
use crate::{WorkerSpec, labels};

/// Name of the worker's only container.
pub const CONTAINER_NAME: &str = "worker";
/// Key of the token in the worker's Secret.
pub const TOKEN_KEY: &str = "token";
/// Environment variables the provider sets itself; `extra_env` cannot replace them. A token
/// file would compete with the Secret's token (the worker refuses both together), so it is
/// reserved too.
const RESERVED_ENV: [&str; 4] = [env::SERVER, env::WORKER_ID, env::TOKEN, env::TOKEN_FILE];

/// `hodei-worker-<id>`: 49 characters, within the 63 a Pod name (a DNS label) may have.
pub fn pod_name(worker_id: &WorkerId) -> String {
    format!("hodei-worker-{worker_id}")
}

/// `hodei-worker-<id>-token`.
pub fn secret_name(worker_id: &WorkerId) -> String {
    format!("{}-token", pod_name(worker_id))
}

/// The labels of [`crate::labels`], identical on the Pod and its Secret.
pub fn worker_labels(spec: &WorkerSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), labels::NAME_VALUE.to_string()),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::WORKER_ID.to_string(), spec.worker_id.to_string()),
        (labels::INSTANCE.to_string(), spec.instance.clone()),
    ])
}

/// The Secret holding the worker's one-time token. Immutable: nothing ever needs to change it,
/// and the kubelet does not have to watch it.
pub fn build_secret(spec: &WorkerSpec) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&spec.worker_id)),
            labels: Some(worker_labels(spec)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(spec.token.expose().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The worker Pod.
pub fn build_pod(spec: &WorkerSpec, config: &KubernetesProviderConfig) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&spec.worker_id)),
            labels: Some(worker_labels(spec)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container(spec, config)],
            restart_policy: Some(config.restart_policy.as_str().into()),
            active_deadline_seconds: spec
                .lifetime
                .map(|lifetime| whole_seconds_at_least_one(lifetime.as_secs_f64())),
            termination_grace_period_seconds: Some(
                i64::try_from(config.termination_grace.as_secs()).unwrap_or(i64::MAX),
            ),
            // The agent never talks to the Kubernetes API; a mounted token would only be a
            // credential for the job's code to misuse.
            automount_service_account_token: Some(false),
            service_account_name: config.service_account.clone(),
            // Service links put one variable per Service of the namespace into the job's
            // environment: noise at best, a leak of the namespace's layout at worst.
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(config.run_as_user),
                run_as_group: Some(config.run_as_user),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn container(spec: &WorkerSpec, config: &KubernetesProviderConfig) -> Container {
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(config.image.clone()),
        // Images loaded with `kind load` exist only on the nodes; `Always` would try a registry.
        image_pull_policy: Some("IfNotPresent".into()),
        env: Some(environment(spec)),
        resources: resources(spec),
        // When the agent exits with an error and wrote no termination message, the kubelet
        // keeps the tail of its log as the message: status can then say why it failed
        // without `pods/log` access.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            // Jobs write to /tmp and their working directory.
            read_only_root_filesystem: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn environment(spec: &WorkerSpec) -> Vec<EnvVar> {
    let mut vars = vec![
        plain_var(env::SERVER, &spec.server_address),
        plain_var(env::WORKER_ID, &spec.worker_id.to_string()),
        EnvVar {
            name: env::TOKEN.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret_name(&spec.worker_id),
                    key: TOKEN_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    for (name, value) in &spec.extra_env {
        if RESERVED_ENV.contains(&name.as_str()) {
            tracing::warn!(
                worker_id = %spec.worker_id,
                variable = %name,
                "ignoring extra environment variable that would replace one the provider sets"
            );
            continue;
        }
        vars.push(plain_var(name, value));
    }
    vars
}

fn plain_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Requests equal to limits (Guaranteed QoS when both are set): a worker gets exactly what its
/// job asked for. A zero means "not specified" and is left out.
fn resources(spec: &WorkerSpec) -> Option<ResourceRequirements> {
    let mut quantities = BTreeMap::new();
    if spec.resources.cpu_millis > 0 {
        quantities.insert(
            "cpu".to_string(),
            Quantity(format!("{}m", spec.resources.cpu_millis)),
        );
    }
    if spec.resources.memory_bytes > 0 {
        quantities.insert(
            "memory".to_string(),
            Quantity(spec.resources.memory_bytes.to_string()),
        );
    }
    (!quantities.is_empty()).then(|| ResourceRequirements {
        requests: Some(quantities.clone()),
        limits: Some(quantities),
        ..ResourceRequirements::default()
    })
}

/// `activeDeadlineSeconds` must be a positive integer; round a fractional lifetime up so the
/// worker never gets less than asked.
fn whole_seconds_at_least_one(seconds: f64) -> i64 {
    let rounded = seconds.ceil();
    if rounded >= i64::MAX as f64 {
        i64::MAX
    } else {
        (rounded as i64).max(1)
    }
}

/// JSON merge patch making the Pod (`pod_name`, `pod_uid`) the controller owner of its Secret.
///
/// `blockOwnerDeletion` stays false: the Pod is deleted in the background, so nothing waits
/// for the Secret, and setting it true would need `update` on `pods/finalizers` in clusters that
/// enable the OwnerReferencesPermissionEnforcement admission plugin.
pub fn owner_reference_patch(pod_name: &str, pod_uid: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod_name,
                "uid": pod_uid,
                "controller": true,
                "blockOwnerDeletion": false,
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hodei_domain::{OneTimeToken, Resources};

    use super::*;
    use crate::kubernetes::config::RestartPolicy;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            worker_id: WorkerId::new(),
            token: OneTimeToken::generate(),
            server_address: "http://172.18.0.1:50051".into(),
            instance: "ci-1".into(),
            resources: Resources {
                cpu_millis: 250,
                memory_bytes: 256 * 1024 * 1024,
            },
            lifetime: Some(Duration::from_millis(90_500)),
            extra_env: BTreeMap::from([
                ("HODEI_TLS_CA_PEM".to_string(), "pem".to_string()),
                (env::TOKEN.to_string(), "smuggled".to_string()),
                (env::TOKEN_FILE.to_string(), "/smuggled-file".to_string()),
            ]),
        }
    }

    fn config() -> KubernetesProviderConfig {
        KubernetesProviderConfig::new("hodei-e2e", "hodei-worker:e2e-test")
    }

    #[test]
    fn names_fit_in_a_dns_label() {
        let id = WorkerId::new();
        assert!(pod_name(&id).len() <= 63);
        assert!(secret_name(&id).len() <= 253);
        assert_eq!(secret_name(&id), format!("hodei-worker-{id}-token"));
    }

    #[test]
    fn the_token_is_in_the_secret_and_only_referenced_by_the_pod() {
        let spec = spec();
        let secret = build_secret(&spec);
        assert_eq!(
            secret.data.as_ref().unwrap()[TOKEN_KEY].0,
            spec.token.expose().as_bytes()
        );
        assert_eq!(secret.immutable, Some(true));

        let pod = serde_json::to_string(&build_pod(&spec, &config())).unwrap();
        assert!(
            !pod.contains(spec.token.expose()),
            "token leaked into the Pod"
        );
        assert!(
            !pod.contains("smuggled"),
            "extra_env replaced HODEI_TOKEN or added HODEI_TOKEN_FILE"
        );
        assert!(pod.contains(&format!(
            r#""secretKeyRef":{{"key":"token","name":"{}","optional":false}}"#,
            secret_name(&spec.worker_id)
        )));
    }

    #[test]
    fn pod_carries_labels_limits_deadline_and_hardening() {
        let spec = spec();
        let mut config = config();
        config.restart_policy = RestartPolicy::OnFailure;
        config.service_account = Some("hodei-worker".into());
        let pod = build_pod(&spec, &config);
        assert_eq!(pod.metadata.labels.as_ref(), Some(&worker_labels(&spec)));

        let pod_spec = pod.spec.unwrap();
        assert_eq!(pod_spec.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(pod_spec.active_deadline_seconds, Some(91));
        assert_eq!(pod_spec.termination_grace_period_seconds, Some(10));
        assert_eq!(pod_spec.automount_service_account_token, Some(false));
        assert_eq!(
            pod_spec.service_account_name.as_deref(),
            Some("hodei-worker")
        );
        let container = &pod_spec.containers[0];
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let resources = container.resources.as_ref().unwrap();
        let expected = BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".into())),
            ("memory".to_string(), Quantity("268435456".into())),
        ]);
        assert_eq!(resources.requests.as_ref(), Some(&expected));
        assert_eq!(resources.limits.as_ref(), Some(&expected));
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        let names: Vec<_> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|var| var.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "HODEI_SERVER",
                "HODEI_WORKER_ID",
                "HODEI_TOKEN",
                "HODEI_TLS_CA_PEM"
            ]
        );
    }

    #[test]
    fn unspecified_resources_and_lifetime_are_left_out() {
        let mut spec = spec();
        spec.resources = Resources::default();
        spec.lifetime = None;
        let pod_spec = build_pod(&spec, &config()).spec.unwrap();
        assert_eq!(pod_spec.active_deadline_seconds, None);
        assert_eq!(pod_spec.containers[0].resources, None);

        spec.resources.memory_bytes = 1024;
        let resources = build_pod(&spec, &config()).spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(
            resources.limits.unwrap().keys().collect::<Vec<_>>(),
            ["memory"]
        );
    }

    #[test]
    fn a_sub_second_lifetime_still_gives_a_valid_deadline() {
        assert_eq!(whole_seconds_at_least_one(0.2), 1);
        assert_eq!(whole_seconds_at_least_one(0.0), 1);
        assert_eq!(whole_seconds_at_least_one(1e30), i64::MAX);
    }
}
