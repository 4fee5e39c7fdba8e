//! The job's processes: `/bin/sh -c <command>` in a process group of its own, so that one
//! signal reaches the shell and everything it started, and nothing outlives the job.

use std::{
    collections::BTreeMap,
    io,
    process::{ExitStatus, Stdio},
};

use hodei_contract::env::NOT_FOR_JOBS;
use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{Pid, getpid, getppid},
};
use tokio::process::{Child, Command};

pub const SHELL: &str = "/bin/sh";
/// Set for every job: which job and which attempt of it is running.
pub const ENV_JOB_ID: &str = "HODEI_JOB_ID";
pub const ENV_JOB_ATTEMPT: &str = "HODEI_JOB_ATTEMPT";

/// Starts the job's shell with piped stdout/stderr, stdin from `/dev/null`, and the worker's
/// environment minus its secrets, plus the job's variables and `HODEI_JOB_ID`/`_ATTEMPT`.
pub fn spawn_shell(
    command: &str,
    env: &BTreeMap<String, String>,
    job_id: &str,
    attempt: u32,
) -> io::Result<Child> {
    shell_command(command, env, job_id, attempt).spawn()
}

fn shell_command(
    command: &str,
    env: &BTreeMap<String, String>,
    job_id: &str,
    attempt: u32,
) -> Command {
    let mut shell = Command::new(SHELL);
    shell.arg("-c").arg(command);
    for secret in NOT_FOR_JOBS {
        shell.env_remove(secret);
    }
    shell
        .envs(env)
        .env(ENV_JOB_ID, job_id)
        .env(ENV_JOB_ATTEMPT, attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The shell leads a new group whose id is its pid: `killpg` then reaches its children
        // and grandchildren too, and signals meant for the worker's group do not reach the job.
        .process_group(0)
        // The runner kills the whole group itself; killing only the shell would orphan the rest.
        .kill_on_drop(false);
    die_with_worker(&mut shell);
    shell
}

/// On Linux, the shell gets SIGKILL if the worker dies, even by SIGKILL, so a job cannot keep
/// running unsupervised (its own children are reached through the process group instead).
#[cfg(target_os = "linux")]
fn die_with_worker(shell: &mut Command) {
    let worker = getpid();
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed: it makes three system calls (prctl, getppid, kill) and does not allocate.
    unsafe {
        shell.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The worker may have died between fork and prctl; then nobody would send the signal.
            if getppid() != worker {
                let _ = kill(getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_worker(_shell: &mut Command) {}

/// The job's process group. Dropping it kills the group, so a runner that is torn down early
/// (the worker exiting, a panic) does not leave the job's processes behind.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Pid,
    armed: bool,
}

impl ProcessGroup {
    /// The group led by `leader`, spawned by [`spawn_shell`].
    pub fn led_by(leader: u32) -> Self {
        Self {
            pgid: Pid::from_raw(leader as i32),
            armed: true,
        }
    }

    pub fn id(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// SIGTERM to every process of the group: the polite request to stop.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL to every process of the group.
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Kills what is left of the group and forgets it: once the group is empty its id may be
    /// reused, and a later signal could hit a stranger.
    pub fn kill_and_release(mut self) {
        self.kill();
        self.armed = false;
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            // ESRCH: the group is already empty, which is what we wanted.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => {
                tracing::warn!(pgid = %self.pgid, %signal, error = %err, "cannot signal the job's process group");
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// The exit status as shells report it: the exit code, or 128 + N for a death by signal N
/// (with N also returned on its own).
pub fn exit_code_and_signal(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (Some(code), None),
        (None, Some(signal)) => (Some(128 + signal), Some(signal)),
        (None, None) => (None, None),
    }
}

/// Collects the exit status of finished processes nobody waits for. When the worker is PID 1 of
/// a container, the job's orphaned grandchildren are re-parented to it and would stay zombies.
/// Does nothing in any other process (where orphans go to the real init). Call only while no
/// job's shell is running, or its status would be taken from its waiter.
pub fn reap_orphans() {
    if std::process::id() != 1 {
        return;
    }
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                tracing::debug!(pid = ?status.pid(), "reaped an orphaned process of a finished job");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_normal_exit_reports_its_code_and_no_signal() {
        assert_eq!(
            exit_code_and_signal(ExitStatus::from_raw(3 << 8)),
            (Some(3), None)
        );
        assert_eq!(
            exit_code_and_signal(ExitStatus::from_raw(0)),
            (Some(0), None)
        );
    }

    #[test]
    fn a_death_by_signal_reports_128_plus_the_signal() {
        assert_eq!(
            exit_code_and_signal(ExitStatus::from_raw(Signal::SIGKILL as i32)),
            (Some(137), Some(9))
        );
        assert_eq!(
            exit_code_and_signal(ExitStatus::from_raw(Signal::SIGTERM as i32)),
            (Some(143), Some(15))
        );
    }

    #[test]
    fn the_workers_secrets_are_removed_from_the_jobs_environment() {
        let shell = shell_command("true", &BTreeMap::new(), "j", 1);
        let removed: Vec<_> = shell
            .as_std()
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(removed.contains(&"HODEI_TOKEN".to_string()), "{removed:?}");
        assert!(
            removed.contains(&"HODEI_TOKEN_FILE".to_string()),
            "{removed:?}"
        );
        assert!(
            removed.contains(&"HODEI_TLS_CA_PEM".to_string()),
            "{removed:?}"
        );
    }

    #[tokio::test]
    async fn the_shell_sees_the_inherited_environment_its_job_variables_and_the_job_id() {
        let env = BTreeMap::from([("GREETING".to_string(), "hello world".to_string())]);
        let child = spawn_shell(
            r#"echo "greeting=$GREETING job=$HODEI_JOB_ID attempt=$HODEI_JOB_ATTEMPT path=${PATH:+set}""#,
            &env,
            "job-42",
            3,
        )
        .unwrap();
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "greeting=hello world job=job-42 attempt=3 path=set\n"
        );
    }

    #[tokio::test]
    async fn a_job_variable_cannot_override_the_job_id() {
        let env = BTreeMap::from([("HODEI_JOB_ID".to_string(), "forged".to_string())]);
        let child = spawn_shell("echo $HODEI_JOB_ID", &env, "job-7", 1).unwrap();
        let output = child.wait_with_output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "job-7\n");
    }

    #[tokio::test]
    async fn the_shell_leads_its_own_process_group_with_stdin_empty() {
        let child = spawn_shell("ps -o pgid= -p $$; cat", &BTreeMap::new(), "j", 1).unwrap();
        let pid = child.id().unwrap();
        let output = child.wait_with_output().await.unwrap();
        let pgid: u32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pgid, pid);
        assert!(output.status.success());
    }
}
