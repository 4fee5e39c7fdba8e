//! The objects one worker consists of: the Pod that runs it and a Secret holding its token.
//!
//! The token reaches the agent through `env.valueFrom.secretKeyRef`, so it never appears in the
//! Pod spec (which anyone with `get pods` can read). The Pod is created first; the Secret is
//! created already owned by it ([`owner_reference`]), so Kubernetes' garbage collector deletes
//! the Secret with the Pod even if Hodei never gets to, and no Secret can exist without its
//! Pod: the provider never needs to list Secrets, a permission that would return their data.
//! Until the Secret exists the kubelet holds the container back (`CreateContainerConfigError`,
//! a Pending state) and retries.

use std::collections::BTreeMap;

use hodei_contract::env;
use hodei_domain::WorkerId;
use k8s_openapi::{
    ByteString,
    api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod,
        PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, Secret,
        SecretKeySelector, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
    },
};

use super::config::KubernetesProviderConfig;
use crate::{WorkerDefaults, WorkerSpec, labels};

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

/// The Secret holding the worker's one-time token, owned by its Pod (`pod_name`, `pod_uid`).
/// Immutable: nothing ever needs to change it, and the kubelet does not have to watch it.
pub fn build_secret(spec: &WorkerSpec, pod_name: &str, pod_uid: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&spec.worker_id)),
            labels: Some(worker_labels(spec)),
            owner_references: Some(vec![owner_reference(pod_name, pod_uid)]),
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
            volumes: Some(
                writable_dirs(&config.defaults.home)
                    .map(|(volume, _)| Volume {
                        name: volume.into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    })
                    .collect(),
            ),
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
        resources: resources(spec, &config.defaults),
        volume_mounts: Some(
            writable_dirs(&config.defaults.home)
                .map(|(volume, path)| VolumeMount {
                    name: volume.into(),
                    mount_path: path.into(),
                    ..VolumeMount::default()
                })
                .collect(),
        ),
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
            // Nothing a job does outlives it in the image's files; jobs write to the
            // emptyDir volumes of /tmp and the home (working) directory.
            read_only_root_filesystem: Some(true),
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

/// The writable places under the read-only root file system: `(volume name, mount path)` of
/// `/tmp` and the home directory (once, if they are the same).
fn writable_dirs(home: &str) -> impl Iterator<Item = (&'static str, &str)> {
    [("tmp", "/tmp"), ("home", home)]
        .into_iter()
        .filter(move |&(volume, path)| volume == "tmp" || path != "/tmp")
}

/// What the job asked for, requests equal to limits (Guaranteed QoS when it set both): a
/// worker gets exactly that. A limit it left unset (zero) comes from `defaults`, memory
/// requested as limited, CPU requested at the smaller default request (Burstable QoS, so
/// small nodes fit several workers), never BestEffort unless the defaults are zero too.
fn resources(spec: &WorkerSpec, defaults: &WorkerDefaults) -> Option<ResourceRequirements> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let job = spec.resources;
    let (cpu_request, cpu_limit) = match job.cpu_millis {
        0 => (
            defaults.cpu_request_millis.min(match defaults.cpu_millis {
                0 => u32::MAX,
                limit => limit,
            }),
            defaults.cpu_millis,
        ),
        set => (set, set),
    };
    let cpu = |millis: u32| Quantity(format!("{millis}m"));
    if cpu_request > 0 {
        requests.insert("cpu".to_string(), cpu(cpu_request));
    }
    if cpu_limit > 0 {
        limits.insert("cpu".to_string(), cpu(cpu_limit));
    }
    let memory = defaults.fill(job).memory_bytes;
    if memory > 0 {
        let quantity = Quantity(memory.to_string());
        requests.insert("memory".to_string(), quantity.clone());
        limits.insert("memory".to_string(), quantity);
    }
    (!requests.is_empty() || !limits.is_empty()).then(|| ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
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

/// The Pod (`pod_name`, `pod_uid`) as the controller owner of its Secret.
///
/// `blockOwnerDeletion` stays false: the Pod is deleted in the background, so nothing waits
/// for the Secret, and setting it true would need `update` on `pods/finalizers` in clusters that
/// enable the OwnerReferencesPermissionEnforcement admission plugin.
pub fn owner_reference(pod_name: &str, pod_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod_name.into(),
        uid: pod_uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }
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
        let secret = build_secret(&spec, &pod_name(&spec.worker_id), "pod-uid");
        assert_eq!(
            secret.data.as_ref().unwrap()[TOKEN_KEY].0,
            spec.token.expose().as_bytes()
        );
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(
            secret.metadata.owner_references,
            Some(vec![owner_reference(&pod_name(&spec.worker_id), "pod-uid")])
        );

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
        assert_eq!(security.read_only_root_filesystem, Some(true));
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

    fn quantities(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        Some(
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), Quantity(value.to_string())))
                .collect(),
        )
    }

    #[test]
    fn limits_the_job_leaves_unset_come_from_the_defaults_so_the_pod_is_never_best_effort() {
        let mut spec = spec();
        spec.resources = Resources::default();
        let resources = build_pod(&spec, &config()).spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(
            resources.requests,
            quantities(&[("cpu", "100m"), ("memory", "536870912")])
        );
        assert_eq!(
            resources.limits,
            quantities(&[("cpu", "1000m"), ("memory", "536870912")])
        );

        // Only memory set: the CPU still gets its default request and limit.
        spec.resources.memory_bytes = 64 << 20;
        let resources = build_pod(&spec, &config()).spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(
            resources.requests,
            quantities(&[("cpu", "100m"), ("memory", "67108864")])
        );
        assert_eq!(
            resources.limits,
            quantities(&[("cpu", "1000m"), ("memory", "67108864")])
        );
    }

    #[test]
    fn a_default_cpu_request_above_the_default_limit_is_lowered_to_it() {
        let mut spec = spec();
        spec.resources = Resources::default();
        let mut config = config();
        config.defaults.cpu_millis = 150;
        config.defaults.cpu_request_millis = 500;
        let resources = build_pod(&spec, &config).spec.unwrap().containers[0]
            .resources
            .clone()
            .unwrap();
        assert_eq!(resources.requests.unwrap()["cpu"], Quantity("150m".into()));
    }

    #[test]
    fn zero_defaults_and_no_lifetime_leave_resources_and_deadline_out() {
        let mut spec = spec();
        spec.resources = Resources::default();
        spec.lifetime = None;
        let mut config = config();
        config.defaults.cpu_millis = 0;
        config.defaults.cpu_request_millis = 0;
        config.defaults.memory_bytes = 0;
        let pod_spec = build_pod(&spec, &config).spec.unwrap();
        assert_eq!(pod_spec.active_deadline_seconds, None);
        assert_eq!(pod_spec.containers[0].resources, None);
    }

    #[test]
    fn the_root_filesystem_is_read_only_with_empty_dirs_for_tmp_and_the_home_directory() {
        let mut config = config();
        let pod_spec = build_pod(&spec(), &config).spec.unwrap();
        let container = &pod_spec.containers[0];
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let mounts: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(mounts, [("tmp", "/tmp"), ("home", "/home/hodei")]);
        let volumes = pod_spec.volumes.unwrap();
        assert_eq!(volumes.len(), 2);
        assert!(volumes.iter().all(|v| v.empty_dir.is_some()), "{volumes:?}");

        // A home of /tmp is mounted once: two mounts on one path are refused by the API.
        config.defaults.home = "/tmp".into();
        let pod_spec = build_pod(&spec(), &config).spec.unwrap();
        assert_eq!(pod_spec.volumes.unwrap().len(), 1);
        assert_eq!(
            pod_spec.containers[0].volume_mounts.as_ref().unwrap().len(),
            1
        );
    }

    #[test]
    fn a_sub_second_lifetime_still_gives_a_valid_deadline() {
        assert_eq!(whole_seconds_at_least_one(0.2), 1);
        assert_eq!(whole_seconds_at_least_one(0.0), 1);
        assert_eq!(whole_seconds_at_least_one(1e30), i64::MAX);
    }
}
