//! Workers as child processes of the server: `hodei-worker` started with a cleared environment
//! holding only what it needs ([`worker_command`] says exactly what), its one-time token on its
//! standard input.
//!
//! Processes cannot carry labels, so each worker gets them as `--label=NAME=VALUE` arguments and
//! as environment variables (`HODEI_MANAGED_BY=hodei`, `HODEI_INSTANCE=<instance>`,
//! `HODEI_WORKER_ID`), and [`LocalProvider::list_managed`] finds workers — also those of a
//! previous server process — by reading `/proc/<pid>/cmdline` (or `environ`).
//!
//! A local job runs as the server's user on the server's machine: it cannot read the server's
//! environment through its own, nor its worker's memory, but whatever that user can read (the
//! server's files, and the server process itself unless that is non-dumpable too) it can read.
//! The Docker and Kubernetes providers isolate jobs; this one only keeps secrets out of reach.

mod proc_scan;
pub mod worker_command;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use hodei_domain::WorkerId;
use nix::{
    errno::Errno,
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    process::Command,
    sync::watch,
};

use crate::{ManagedWorker, ProviderError, WorkerHandle, WorkerProvider, WorkerSpec, WorkerStatus};

const PROVIDER: &str = "local";
/// Lines of the worker's own output kept to explain an early exit.
const OUTPUT_TAIL_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct LocalProviderConfig {
    /// The `hodei-worker` executable.
    pub worker_binary: PathBuf,
    /// How long a worker gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// `RUST_LOG` for the workers (and so for their jobs); None: the server's, if set.
    pub worker_log_filter: Option<String>,
}

impl LocalProviderConfig {
    pub fn new(worker_binary: impl Into<PathBuf>) -> Self {
        Self {
            worker_binary: worker_binary.into(),
            kill_grace: Duration::from_secs(5),
            worker_log_filter: None,
        }
    }
}

/// Starts `hodei-worker` processes on this machine.
pub struct LocalProvider {
    config: LocalProviderConfig,
    children: Mutex<HashMap<WorkerId, Child>>,
}

struct Child {
    pid: u32,
    exit: watch::Receiver<Option<Option<i32>>>,
    output_tail: Arc<Mutex<VecDeque<String>>>,
}

impl LocalProvider {
    /// Fails if the worker binary does not exist, so a misconfiguration shows at start-up.
    pub fn new(config: LocalProviderConfig) -> Result<Self, ProviderError> {
        if !config.worker_binary.is_file() {
            return Err(ProviderError::Unavailable {
                provider: PROVIDER,
                detail: format!(
                    "worker binary {} does not exist; build it with `cargo build -p hodei-worker` \
                     or set HODEI_WORKER_BINARY",
                    config.worker_binary.display()
                ),
            });
        }
        Ok(Self {
            config,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn tail_of(output_tail: &Mutex<VecDeque<String>>) -> String {
        let tail = output_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

#[async_trait]
impl WorkerProvider for LocalProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn create_worker(&self, spec: &WorkerSpec) -> Result<WorkerHandle, ProviderError> {
        let mut command = Command::new(&self.config.worker_binary);
        command
            .args(worker_command::label_args(spec))
            // Nothing of the server's environment but what `worker_command` lets through.
            .env_clear()
            .envs(worker_command::environment(
                spec,
                self.config.worker_log_filter.as_deref(),
                |name| std::env::var_os(name),
            ))
            // The token goes in through this pipe, see below.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: signals for the server's terminal do not reach workers.
            .process_group(0)
            .kill_on_drop(false);

        let mut child =
            spawn_retrying_busy(&mut command)
                .await
                .map_err(|e| ProviderError::Unavailable {
                    provider: PROVIDER,
                    detail: format!("cannot start {}: {e}", self.config.worker_binary.display()),
                })?;
        let pid = child.id().ok_or_else(|| ProviderError::Unavailable {
            provider: PROVIDER,
            detail: "worker exited before its pid could be read".into(),
        })?;
        let worker_id = spec.worker_id;
        if let Some(mut stdin) = child.stdin.take() {
            // A few bytes into an empty pipe: this does not wait for the worker. It fails only
            // if the worker already exited, which its status then reports with its output.
            let line = format!("{}\n", spec.token.expose());
            if let Err(e) = stdin.write_all(line.as_bytes()).await {
                tracing::debug!(%worker_id, error = %e, "could not write the token to the worker");
            }
        }

        let output_tail = Arc::new(Mutex::new(VecDeque::with_capacity(OUTPUT_TAIL_LINES)));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_output(worker_id, stdout, output_tail.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_output(worker_id, stderr, output_tail.clone()));
        }

        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status.code().or_else(|| {
                    std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s)
                }),
                Err(e) => {
                    tracing::warn!(%worker_id, error = %e, "waiting for worker process failed");
                    None
                }
            };
            tracing::debug!(%worker_id, ?code, "worker process exited");
            let _ = exit_tx.send(Some(code));
        });

        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                worker_id,
                Child {
                    pid,
                    exit: exit_rx,
                    output_tail,
                },
            );
        tracing::debug!(%worker_id, pid, "started local worker");
        Ok(WorkerHandle {
            worker_id,
            resource: format!("pid/{pid}"),
        })
    }

    async fn worker_status(&self, worker_id: &WorkerId) -> Result<WorkerStatus, ProviderError> {
        let known = {
            let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            children
                .get(worker_id)
                .map(|child| (*child.exit.borrow(), child.output_tail.clone()))
        };
        match known {
            Some((None, _)) => Ok(WorkerStatus::Running),
            Some((Some(exit_code), tail)) => Ok(WorkerStatus::Exited {
                exit_code,
                detail: Self::tail_of(&tail),
            }),
            None => {
                let id = *worker_id;
                let found = proc_scan::find(move |labels| labels.worker_id == Some(id)).await;
                Ok(if found.is_empty() {
                    WorkerStatus::NotFound
                } else {
                    WorkerStatus::Running
                })
            }
        }
    }

    async fn destroy_worker(&self, worker_id: &WorkerId) -> Result<(), ProviderError> {
        let child = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(worker_id);
        match child {
            Some(mut child) => {
                if child.exit.borrow().is_some() {
                    return Ok(());
                }
                signal_group(child.pid, Signal::SIGTERM);
                let exited = tokio::time::timeout(
                    self.config.kill_grace,
                    child.exit.wait_for(Option::is_some),
                )
                .await
                .is_ok();
                if !exited {
                    tracing::warn!(%worker_id, pid = child.pid, "worker ignored SIGTERM; sending SIGKILL");
                    signal_group(child.pid, Signal::SIGKILL);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        child.exit.wait_for(Option::is_some),
                    )
                    .await;
                }
                Ok(())
            }
            // Not our child: a worker of a previous server process, found through /proc.
            None => {
                let id = *worker_id;
                let pids = proc_scan::find(move |labels| labels.worker_id == Some(id)).await;
                for pid in pids {
                    terminate_foreign(pid, self.config.kill_grace).await;
                }
                Ok(())
            }
        }
    }

    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedWorker>, ProviderError> {
        let instance = instance.to_string();
        let found = proc_scan::find_with_labels(move |labels| {
            labels.instance.as_deref() == Some(&instance)
        })
        .await;
        Ok(found
            .into_iter()
            .map(|(pid, labels)| ManagedWorker {
                worker_id: labels.worker_id,
                resource: format!("pid/{pid}"),
                uid: pid.to_string(),
            })
            .collect())
    }

    /// Signals the process listed, if it still carries the worker id it was listed with (its
    /// pid may have been reused since).
    async fn remove_managed(&self, found: &ManagedWorker) -> Result<(), ProviderError> {
        if let Some(worker_id) = found.worker_id
            && self
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&worker_id)
        {
            return self.destroy_worker(&worker_id).await;
        }
        let Ok(pid) = found.uid.parse::<u32>() else {
            return Err(ProviderError::Rejected {
                provider: PROVIDER,
                detail: format!("cannot remove {found:?}: the listing gave no process id"),
            });
        };
        let worker_id = found.worker_id;
        let still_listed = proc_scan::find(move |labels| labels.worker_id == worker_id).await;
        if still_listed.contains(&pid) {
            terminate_foreign(pid, self.config.kill_grace).await;
        }
        Ok(())
    }
}

/// `spawn`, retried briefly on ETXTBSY: a binary that was just written (a fresh build) can be
/// held open for writing by another thread's fork for a moment (rust-lang/rust#114554).
async fn spawn_retrying_busy(command: &mut Command) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

async fn forward_output(
    worker_id: WorkerId,
    stream: impl AsyncRead + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "hodei_worker_output", %worker_id, "{line}");
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Signals the process group led by `pid` (how we start workers), or the process alone when it
/// leads no group (a process someone else started with our labels).
fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid).map(Pid::from_raw) else {
        return;
    };
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}

/// Stops a process that is not our child: we cannot wait() for it, so poll /proc.
async fn terminate_foreign(pid: u32, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while proc_scan::is_running(pid) {
        if tokio::time::Instant::now() >= deadline {
            signal_group(pid, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, os::unix::fs::PermissionsExt};

    use hodei_domain::{OneTimeToken, Resources};

    use super::*;

    /// A stand-in worker binary: a shell script, so these tests do not depend on hodei-worker.
    fn script(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let path = dir.path().join("fake-worker");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn spec(instance: &str) -> WorkerSpec {
        WorkerSpec {
            worker_id: WorkerId::new(),
            token: OneTimeToken::generate(),
            server_address: "http://127.0.0.1:1".into(),
            instance: instance.into(),
            resources: Resources::default(),
            lifetime: None,
            extra_env: BTreeMap::new(),
        }
    }

    fn provider(binary: PathBuf) -> LocalProvider {
        let mut config = LocalProviderConfig::new(binary);
        config.kill_grace = Duration::from_millis(500);
        LocalProvider::new(config).unwrap()
    }

    async fn wait_for_status(
        provider: &LocalProvider,
        id: &WorkerId,
        want: impl Fn(&WorkerStatus) -> bool,
    ) -> WorkerStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = provider.worker_status(id).await.unwrap();
            if want(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker status still {status:?} after 10s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn a_missing_worker_binary_is_a_clear_error() {
        let err = LocalProvider::new(LocalProviderConfig::new("/nonexistent/hodei-worker"))
            .err()
            .expect("must fail");
        assert!(
            err.to_string()
                .contains("/nonexistent/hodei-worker does not exist"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_worker_gets_its_environment_its_token_on_stdin_and_is_listed_under_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let token = dir.path().join("token.txt");
        let args = dir.path().join("args.txt");
        let binary = script(
            &dir,
            &format!(
                "echo \"$@\" > {args}; cat > {token}; env > {out}.tmp; mv {out}.tmp {out}; \
                 exec sleep 30",
                args = args.display(),
                token = token.display(),
                out = out.display()
            ),
        );
        let provider = provider(binary);
        let spec = spec("local-test-list");
        provider.create_worker(&spec).await.unwrap();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !out.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker never wrote its env"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(env.contains("HODEI_SERVER=http://127.0.0.1:1"));
        assert!(env.contains(&format!("HODEI_WORKER_ID={}", spec.worker_id)));
        assert!(env.contains("HODEI_TOKEN_FILE=/proc/self/fd/0"));
        assert!(
            !env.contains(spec.token.expose()),
            "the token is in the worker's environment: {env}"
        );
        assert_eq!(
            std::fs::read_to_string(&token).unwrap(),
            format!("{}\n", spec.token.expose()),
            "the token arrives on stdin, which is then closed"
        );
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            format!(
                "--label=HODEI_MANAGED_BY=hodei --label=HODEI_INSTANCE=local-test-list \
                 --label=HODEI_WORKER_ID={}\n",
                spec.worker_id
            )
        );

        let listed = provider.list_managed("local-test-list").await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].worker_id, Some(spec.worker_id));
        assert!(
            provider
                .list_managed("another-instance")
                .await
                .unwrap()
                .is_empty()
        );

        provider.destroy_worker(&spec.worker_id).await.unwrap();
        assert_eq!(
            provider.worker_status(&spec.worker_id).await.unwrap(),
            WorkerStatus::NotFound
        );
        assert!(
            provider
                .list_managed("local-test-list")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn an_early_exit_reports_the_code_and_the_output_tail() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(script(&dir, "echo 'cannot reach server' >&2; exit 3"));
        let spec = spec("local-test-exit");
        provider.create_worker(&spec).await.unwrap();
        let status = wait_for_status(&provider, &spec.worker_id, |s| {
            matches!(s, WorkerStatus::Exited { .. })
        })
        .await;
        let WorkerStatus::Exited { exit_code, detail } = status else {
            unreachable!()
        };
        assert_eq!(exit_code, Some(3));
        // The reader task may lag the exit by a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut detail = detail;
        while !detail.contains("cannot reach server") && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let WorkerStatus::Exited { detail: d, .. } =
                provider.worker_status(&spec.worker_id).await.unwrap()
            {
                detail = d;
            }
        }
        assert!(detail.contains("cannot reach server"), "{detail:?}");
        provider.destroy_worker(&spec.worker_id).await.unwrap();
    }

    #[tokio::test]
    async fn destroy_escalates_to_sigkill_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let provider = provider(script(&dir, "trap '' TERM; while :; do sleep 0.1; done"));
        let spec = spec("local-test-kill");
        let handle = provider.create_worker(&spec).await.unwrap();
        let pid: u32 = handle.resource.trim_start_matches("pid/").parse().unwrap();
        provider.destroy_worker(&spec.worker_id).await.unwrap();
        assert!(!proc_scan::is_running(pid), "worker survived destroy");
        provider.destroy_worker(&spec.worker_id).await.unwrap();
        provider.destroy_worker(&WorkerId::new()).await.unwrap();
    }
}
