//! What a worker container looks like: name, labels, environment and limits.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use hodei_contract::env;
use hodei_domain::{Resources, WorkerId};

use super::{
    DockerProviderConfig,
    token_archive::{EXTRACT_AT, Owner, TOKEN_PATH},
};
use crate::{WorkerSpec, labels};

/// `hodei-worker-<worker id>`: one container per worker, found again by name alone.
pub fn container_name(worker_id: &WorkerId) -> String {
    format!("hodei-worker-{worker_id}")
}

/// The create request for `spec`'s container. It does not hold the token, which is uploaded
/// into the container as a file before it starts (see `token_archive`).
/// `owner`: the image's user as numbers, when it names them; it owns the writable tmpfs mounts.
pub(super) fn create_body(
    config: &DockerProviderConfig,
    spec: &WorkerSpec,
    owner: Option<Owner>,
) -> ContainerCreateBody {
    let defaults = &config.defaults;
    let (nano_cpus, memory) = limits(defaults.fill(spec.resources));
    ContainerCreateBody {
        image: Some(config.image.clone()),
        env: Some(environment(spec)),
        labels: Some(container_labels(spec)),
        stop_timeout: Some(seconds(config.stop_grace)),
        // An anonymous volume, removed with the container (`v`): the token is uploaded into it
        // before the start, which the read-only root file system would refuse.
        volumes: Some(vec![EXTRACT_AT.to_string()]),
        host_config: Some(HostConfig {
            nano_cpus,
            memory,
            // No capabilities even for a root user, and no gaining privileges (setuid
            // binaries, file capabilities) from inside.
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            // A fork bomb in a job stops at this many processes instead of exhausting the host.
            pids_limit: (defaults.pids_limit > 0).then_some(defaults.pids_limit),
            // Nothing a job does outlives it in the image's files; /tmp and the home (working)
            // directory are writable, empty at every start, and count against the memory limit.
            readonly_rootfs: Some(true),
            tmpfs: Some(
                writable_dirs(&defaults.home)
                    .map(|dir| (dir.to_string(), tmpfs_options(owner)))
                    .collect(),
            ),
            // No swap beyond the limit: a worker over its memory is OOM-killed, as on Kubernetes,
            // instead of slowing down on swap.
            memory_swap: memory,
            network_mode: config.network.clone(),
            extra_hosts: (!config.extra_hosts.is_empty()).then(|| config.extra_hosts.clone()),
            // The exit code and OOM flag classify an early exit; destroy_worker removes it.
            auto_remove: Some(false),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(config.init),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The options of the writable tmpfs mounts: `exec` explicitly (the engine's default for a
/// tmpfs is `noexec`, and jobs run what they download or build), owned by the image's user. The
/// engine gives the mount the mode of the image's directory (1777 for `/tmp`, 0755 for a home),
/// so without a numeric owner a non-root user could not write to a home owned by root.
fn tmpfs_options(owner: Option<Owner>) -> String {
    let base = "rw,nosuid,nodev,exec,mode=1777";
    match owner {
        Some(Owner { uid, gid }) => format!("{base},uid={uid},gid={gid}"),
        None => base.to_string(),
    }
}

/// `/tmp` and the home directory, once if they are the same.
fn writable_dirs(home: &str) -> impl Iterator<Item = &str> {
    std::iter::once("/tmp").chain((home != "/tmp").then_some(home))
}

/// `extra_env` first, then the three worker variables, which a caller cannot override. The
/// token is not among them: the worker reads it from the file at [`env::TOKEN_FILE`].
fn environment(spec: &WorkerSpec) -> Vec<String> {
    let mut vars: BTreeMap<&str, &str> = spec
        .extra_env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let worker_id = spec.worker_id.to_string();
    // A token variable would compete with the file; the worker refuses both together.
    vars.remove(env::TOKEN);
    vars.insert(env::TOKEN_FILE, TOKEN_PATH);
    vars.insert(env::SERVER, &spec.server_address);
    vars.insert(env::WORKER_ID, &worker_id);
    vars.into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

fn container_labels(spec: &WorkerSpec) -> HashMap<String, String> {
    HashMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::NAME.to_string(), labels::NAME_VALUE.to_string()),
        (labels::WORKER_ID.to_string(), spec.worker_id.to_string()),
        (labels::INSTANCE.to_string(), spec.instance.clone()),
    ])
}

/// `(NanoCpus, Memory)`; zero means no limit, which Docker spells as an absent field.
fn limits(resources: Resources) -> (Option<i64>, Option<i64>) {
    let nano_cpus = (resources.cpu_millis > 0).then(|| i64::from(resources.cpu_millis) * 1_000_000);
    let memory = (resources.memory_bytes > 0)
        .then(|| i64::try_from(resources.memory_bytes).unwrap_or(i64::MAX));
    (nano_cpus, memory)
}

fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use hodei_domain::OneTimeToken;

    use super::*;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            worker_id: WorkerId::new(),
            token: OneTimeToken::generate(),
            server_address: "http://172.17.0.1:50051".into(),
            instance: "ci-7".into(),
            resources: Resources {
                cpu_millis: 1500,
                memory_bytes: 256 * 1024 * 1024,
            },
            lifetime: None,
            extra_env: BTreeMap::from([
                ("RUST_LOG".to_string(), "debug".to_string()),
                (env::TOKEN.to_string(), "forged".to_string()),
            ]),
        }
    }

    #[test]
    fn the_container_is_named_after_the_worker() {
        let id = WorkerId::new();
        assert_eq!(container_name(&id), format!("hodei-worker-{id}"));
    }

    #[test]
    fn the_container_carries_all_four_labels() {
        let spec = spec();
        let body = create_body(&DockerProviderConfig::new("img:1"), &spec, None);
        let labels = body.labels.unwrap();
        assert_eq!(labels[labels::MANAGED_BY], "hodei");
        assert_eq!(labels[labels::NAME], "hodei-worker");
        assert_eq!(labels[labels::WORKER_ID], spec.worker_id.to_string());
        assert_eq!(labels[labels::INSTANCE], "ci-7");
        assert_eq!(labels.len(), 4);
    }

    #[test]
    fn the_worker_variables_are_set_and_extra_env_cannot_override_them() {
        let spec = spec();
        let env = create_body(&DockerProviderConfig::new("img:1"), &spec, None)
            .env
            .unwrap();
        assert!(env.contains(&"HODEI_TOKEN_FILE=/run/hodei/token".to_string()));
        assert!(
            !env.iter().any(|var| var.starts_with("HODEI_TOKEN=")),
            "{env:?}"
        );
        assert!(env.contains(&"HODEI_SERVER=http://172.17.0.1:50051".to_string()));
        assert!(env.contains(&format!("HODEI_WORKER_ID={}", spec.worker_id)));
        assert!(env.contains(&"RUST_LOG=debug".to_string()));
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn the_create_request_holds_no_token() {
        let spec = spec();
        let body = create_body(&DockerProviderConfig::new("img:1"), &spec, None);
        let request = serde_json::to_string(&body).unwrap();
        assert!(
            !request.contains(spec.token.expose()),
            "the token is in the container's configuration: {request}"
        );
    }

    #[test]
    fn resources_become_nano_cpus_and_a_memory_limit_without_swap() {
        let mut config = DockerProviderConfig::new("img:1");
        config.network = Some("hodei-net".into());
        config.extra_hosts = vec!["host.docker.internal:host-gateway".into()];
        let body = create_body(&config, &spec(), None);
        assert_eq!(body.image.as_deref(), Some("img:1"));
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(256 * 1024 * 1024));
        assert_eq!(host.memory_swap, Some(256 * 1024 * 1024));
        assert_eq!(host.network_mode.as_deref(), Some("hodei-net"));
        assert_eq!(
            host.extra_hosts,
            Some(vec!["host.docker.internal:host-gateway".to_string()])
        );
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(
            host.restart_policy.and_then(|p| p.name),
            Some(RestartPolicyNameEnum::NO)
        );
    }

    #[test]
    fn limits_the_job_leaves_unset_come_from_the_defaults_and_zero_defaults_mean_none() {
        let mut spec = spec();
        spec.resources = Resources::default();
        let mut config = DockerProviderConfig::new("img:1");
        let host = create_body(&config, &spec, None).host_config.unwrap();
        assert_eq!(
            (host.nano_cpus, host.memory, host.memory_swap),
            (Some(1_000_000_000), Some(512 << 20), Some(512 << 20))
        );
        assert_eq!(host.network_mode, None);
        assert_eq!(host.extra_hosts, None);

        config.defaults.cpu_millis = 0;
        config.defaults.memory_bytes = 0;
        let host = create_body(&config, &spec, None).host_config.unwrap();
        assert_eq!(
            (host.nano_cpus, host.memory, host.memory_swap),
            (None, None, None)
        );
    }

    #[test]
    fn the_container_drops_every_capability_cannot_gain_privileges_and_has_a_pid_limit() {
        let mut config = DockerProviderConfig::new("img:1");
        let host = create_body(&config, &spec(), None).host_config.unwrap();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, None);
        assert_eq!(host.privileged, None);
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.pids_limit, Some(1024));

        config.defaults.pids_limit = 0;
        let host = create_body(&config, &spec(), None).host_config.unwrap();
        assert_eq!(host.pids_limit, None);
    }

    #[test]
    fn the_root_filesystem_is_read_only_with_tmpfs_for_tmp_and_home_and_a_volume_for_the_token() {
        let mut config = DockerProviderConfig::new("img:1");
        let owner = Owner {
            uid: 65532,
            gid: 65533,
        };
        let body = create_body(&config, &spec(), Some(owner));
        let host = body.host_config.unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        let options = "rw,nosuid,nodev,exec,mode=1777,uid=65532,gid=65533".to_string();
        assert_eq!(
            host.tmpfs,
            Some(HashMap::from([
                ("/tmp".to_string(), options.clone()),
                ("/home/hodei".to_string(), options.clone()),
            ]))
        );
        assert_eq!(body.volumes, Some(vec!["/run".to_string()]));
        assert!(TOKEN_PATH.starts_with("/run/"));

        // A home of /tmp is mounted once; without a numeric user, the mounts keep root's.
        config.defaults.home = "/tmp".into();
        let host = create_body(&config, &spec(), None).host_config.unwrap();
        assert_eq!(
            host.tmpfs,
            Some(HashMap::from([(
                "/tmp".to_string(),
                "rw,nosuid,nodev,exec,mode=1777".to_string()
            )]))
        );
    }
}
