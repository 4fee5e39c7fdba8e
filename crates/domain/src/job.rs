//! Jobs: the spec a user submits, its validation, and the state machine it moves through.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{JobId, WorkerId};

/// Requested resources. Zero means "no limit"; any other value must lie within the bounds
/// below, the same for every server and the CLI (see [`Resources::validate`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU core.
    pub cpu_millis: u32,
    pub memory_bytes: u64,
}

impl Resources {
    /// The least memory limit a worker runs in: the idle agent measures 5.8 MiB RSS, and the
    /// job's `/bin/sh`, its command and the container runtime's own start share the same
    /// cgroup. Below it a Pod's sandbox cannot even start (`FailedCreatePodSandBox … cannot
    /// allocate memory`) and the job used to wait out the provisioning deadline, three times.
    /// 16 MiB is Docker's own floor (6 MB) with room for the agent and a small command.
    pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
    /// 4 TiB: more than any single node offers, so only a mistake (a unit typed twice, a
    /// wrapped number) is refused; it also keeps the value inside the signed 64-bit integers
    /// of PostgreSQL and the Docker API.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 40;
    /// A tenth of a core. The quota is enforced per 100 ms period, so below it the agent gets
    /// less than 10 ms in every 100 ms for its own start, TLS handshake and heartbeats, and a
    /// job looks hung rather than slow. (Docker refuses less than 10m outright.)
    pub const MIN_CPU_MILLIS: u32 = 100;
    /// 1024 cores: more than any single node offers.
    pub const MAX_CPU_MILLIS: u32 = 1024 * 1000;

    /// Checks each limit that is set (non-zero) against the bounds above.
    pub fn validate(self) -> Result<Self, JobSpecError> {
        let memory = self.memory_bytes;
        if memory != 0 && memory < Self::MIN_MEMORY_BYTES {
            return Err(JobSpecError::MemoryTooSmall {
                got: memory,
                min: Self::MIN_MEMORY_BYTES,
            });
        }
        if memory > Self::MAX_MEMORY_BYTES {
            return Err(JobSpecError::MemoryTooLarge {
                got: memory,
                max: Self::MAX_MEMORY_BYTES,
            });
        }
        let cpu = self.cpu_millis;
        if cpu != 0 && cpu < Self::MIN_CPU_MILLIS {
            return Err(JobSpecError::CpuTooSmall {
                got: cpu,
                min: Self::MIN_CPU_MILLIS,
            });
        }
        if cpu > Self::MAX_CPU_MILLIS {
            return Err(JobSpecError::CpuTooLarge {
                got: cpu,
                max: Self::MAX_CPU_MILLIS,
            });
        }
        Ok(self)
    }
}

/// Bounds applied to every submitted spec, and the defaults for omitted fields.
#[derive(Debug, Clone)]
pub struct JobSpecLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_max_attempts: u32,
    pub max_attempts: u32,
    pub max_command_bytes: usize,
    pub max_env_vars: usize,
    pub max_env_value_bytes: usize,
    pub max_env_total_bytes: usize,
}

impl Default for JobSpecLimits {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(3600),
            max_timeout: Duration::from_secs(7 * 24 * 3600),
            default_max_attempts: 3,
            max_attempts: 10,
            max_command_bytes: 128 * 1024,
            max_env_vars: 256,
            max_env_value_bytes: 32 * 1024,
            max_env_total_bytes: 256 * 1024,
        }
    }
}

/// A validated job spec: what the worker runs, as `/bin/sh -c <command>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub resources: Resources,
    /// Attempts allowed in total; infrastructure failures re-queue until this is reached.
    pub max_attempts: u32,
}

/// Why a submitted spec was refused. Messages are written for the person who submitted it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    #[error("command is empty: give the shell command line to run, e.g. \"echo hello\"")]
    EmptyCommand,
    #[error("command is {len} bytes; the limit is {max} bytes")]
    CommandTooLong { len: usize, max: usize },
    #[error("command contains a NUL byte, which no shell can receive")]
    CommandContainsNul,
    #[error(
        "environment variable name {0:?} is invalid: use letters, digits and '_', not starting with a digit"
    )]
    InvalidEnvName(String),
    #[error("environment variable {name} has a NUL byte in its value")]
    EnvValueContainsNul { name: String },
    #[error("environment variable {name} is {len} bytes; the limit per value is {max} bytes")]
    EnvValueTooLarge {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("{count} environment variables given; the limit is {max}")]
    TooManyEnvVars { count: usize, max: usize },
    #[error("environment is {len} bytes in total; the limit is {max} bytes")]
    EnvTooLarge { len: usize, max: usize },
    #[error("timeout_seconds must be greater than zero, got {0}")]
    NonPositiveTimeout(i64),
    #[error("timeout of {secs}s exceeds the maximum of {max}s")]
    TimeoutTooLong { secs: i64, max: u64 },
    #[error("max_attempts must be between 1 and {max}, got {got}")]
    InvalidMaxAttempts { got: u32, max: u32 },
    #[error(
        "resources.memory_bytes is {got} bytes, below the {min} bytes ({} MiB) a worker needs to \
         run in; ask for at least {} MiB, or 0 for no limit",
        .min >> 20,
        .min >> 20
    )]
    MemoryTooSmall { got: u64, min: u64 },
    #[error(
        "resources.memory_bytes is {got} bytes, above the maximum of {max} bytes ({} TiB)",
        .max >> 40
    )]
    MemoryTooLarge { got: u64, max: u64 },
    #[error(
        "resources.cpu_millis is {got} (thousandths of a core), below the minimum of {min} a \
         worker needs; ask for at least {min}, or 0 for no limit"
    )]
    CpuTooSmall { got: u32, min: u32 },
    #[error(
        "resources.cpu_millis is {got} (thousandths of a core), above the maximum of {max} \
         ({} cores)",
        .max / 1000
    )]
    CpuTooLarge { got: u32, max: u32 },
}

impl JobSpec {
    /// Validates raw input from a client, filling omitted fields from `limits`.
    pub fn new(
        command: String,
        env: BTreeMap<String, String>,
        timeout_seconds: Option<i64>,
        resources: Resources,
        max_attempts: Option<u32>,
        limits: &JobSpecLimits,
    ) -> Result<Self, JobSpecError> {
        if command.trim().is_empty() {
            return Err(JobSpecError::EmptyCommand);
        }
        if command.len() > limits.max_command_bytes {
            return Err(JobSpecError::CommandTooLong {
                len: command.len(),
                max: limits.max_command_bytes,
            });
        }
        if command.contains('\0') {
            return Err(JobSpecError::CommandContainsNul);
        }
        validate_env(&env, limits)?;
        let resources = resources.validate()?;

        let timeout = match timeout_seconds {
            None => limits.default_timeout,
            Some(secs) if secs <= 0 => return Err(JobSpecError::NonPositiveTimeout(secs)),
            Some(secs) => {
                let max = limits.max_timeout.as_secs();
                if secs as u64 > max {
                    return Err(JobSpecError::TimeoutTooLong { secs, max });
                }
                Duration::from_secs(secs as u64)
            }
        };
        let max_attempts = max_attempts.unwrap_or(limits.default_max_attempts);
        if max_attempts == 0 || max_attempts > limits.max_attempts {
            return Err(JobSpecError::InvalidMaxAttempts {
                got: max_attempts,
                max: limits.max_attempts,
            });
        }
        Ok(Self {
            command,
            env,
            timeout,
            resources,
            max_attempts,
        })
    }
}

fn validate_env(
    env: &BTreeMap<String, String>,
    limits: &JobSpecLimits,
) -> Result<(), JobSpecError> {
    if env.len() > limits.max_env_vars {
        return Err(JobSpecError::TooManyEnvVars {
            count: env.len(),
            max: limits.max_env_vars,
        });
    }
    let mut total = 0usize;
    for (name, value) in env {
        if !is_valid_env_name(name) {
            return Err(JobSpecError::InvalidEnvName(
                name.chars().take(64).collect(),
            ));
        }
        if value.len() > limits.max_env_value_bytes {
            return Err(JobSpecError::EnvValueTooLarge {
                name: name.clone(),
                len: value.len(),
                max: limits.max_env_value_bytes,
            });
        }
        if value.contains('\0') {
            return Err(JobSpecError::EnvValueContainsNul { name: name.clone() });
        }
        total += name.len() + value.len();
    }
    if total > limits.max_env_total_bytes {
        return Err(JobSpecError::EnvTooLarge {
            len: total,
            max: limits.max_env_total_bytes,
        });
    }
    Ok(())
}

pub(crate) fn is_valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `Queued → Assigned → Running → Succeeded | Failed | Cancelled | TimedOut`.
///
/// Infrastructure failures move `Assigned`/`Running` back to `Queued` while attempts remain.
/// The four final states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
    ];

    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::TimedOut
        )
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
        }
    }

    /// Whether some step of [`crate::JOB_TRANSITIONS`] takes `self` to `next`.
    pub fn can_become(self, next: JobState) -> bool {
        crate::JOB_TRANSITIONS
            .iter()
            .any(|t| t.from == self && t.to == next)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// How a job attempt ended, as reported by its worker (or decided by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalOutcome {
    Exited {
        exit_code: i32,
    },
    Cancelled {
        exit_code: Option<i32>,
        reason: String,
    },
    TimedOut {
        exit_code: Option<i32>,
    },
    SpawnFailed {
        message: String,
    },
}

impl TerminalOutcome {
    /// The final job state this outcome leads to.
    pub fn state(&self) -> JobState {
        match self {
            TerminalOutcome::Exited { exit_code: 0 } => JobState::Succeeded,
            TerminalOutcome::Exited { .. } | TerminalOutcome::SpawnFailed { .. } => {
                JobState::Failed
            }
            TerminalOutcome::Cancelled { .. } => JobState::Cancelled,
            TerminalOutcome::TimedOut { .. } => JobState::TimedOut,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            TerminalOutcome::Exited { exit_code } => Some(*exit_code),
            TerminalOutcome::Cancelled { exit_code, .. }
            | TerminalOutcome::TimedOut { exit_code } => *exit_code,
            TerminalOutcome::SpawnFailed { .. } => None,
        }
    }

    /// A human reason for non-successful outcomes; empty on success.
    pub fn reason(&self, timeout: Duration) -> String {
        match self {
            TerminalOutcome::Exited { exit_code: 0 } => String::new(),
            TerminalOutcome::Exited { exit_code } => {
                format!("command exited with code {exit_code}")
            }
            // The state says "cancelled"; the reason says why, as the cancel gave it.
            TerminalOutcome::Cancelled { reason, .. } if reason.is_empty() => {
                "cancel requested".into()
            }
            TerminalOutcome::Cancelled { reason, .. } => reason.clone(),
            TerminalOutcome::TimedOut { .. } => {
                format!("timed out after {}s", timeout.as_secs())
            }
            TerminalOutcome::SpawnFailed { message } => {
                format!("could not start command: {message}")
            }
        }
    }
}

/// One attempt at running a job on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAttempt {
    pub attempt: u32,
    pub worker_id: WorkerId,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `failed`, `cancelled`, `timed_out` or `requeued`.
    pub outcome: String,
    pub reason: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub attempts: u32,
    pub worker_id: Option<WorkerId>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The principal that queued it; `None` when authentication was off.
    pub owner: Option<String>,
    /// Names of its secrets (their values are kept apart, see [`crate::JobSecrets`]).
    pub secret_names: Vec<String>,
    /// A cancel was requested while it was assigned or running; the worker has been told.
    pub cancel_requested: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str) -> Result<JobSpec, JobSpecError> {
        JobSpec::new(
            command.into(),
            BTreeMap::new(),
            None,
            Resources::default(),
            None,
            &JobSpecLimits::default(),
        )
    }

    fn with_timeout(secs: i64) -> Result<JobSpec, JobSpecError> {
        JobSpec::new(
            "true".into(),
            BTreeMap::new(),
            Some(secs),
            Resources::default(),
            None,
            &JobSpecLimits::default(),
        )
    }

    fn with_env(name: &str, value: String) -> Result<JobSpec, JobSpecError> {
        JobSpec::new(
            "true".into(),
            BTreeMap::from([(name.to_string(), value)]),
            None,
            Resources::default(),
            None,
            &JobSpecLimits::default(),
        )
    }

    #[test]
    fn omitted_fields_take_the_defaults() {
        let spec = spec("echo hi").unwrap();
        assert_eq!(spec.timeout, Duration::from_secs(3600));
        assert_eq!(spec.max_attempts, 3);
    }

    #[test]
    fn empty_and_blank_commands_are_refused() {
        assert_eq!(spec(""), Err(JobSpecError::EmptyCommand));
        assert_eq!(spec("  \n\t"), Err(JobSpecError::EmptyCommand));
    }

    #[test]
    fn zero_and_negative_timeouts_are_refused() {
        assert_eq!(with_timeout(0), Err(JobSpecError::NonPositiveTimeout(0)));
        assert_eq!(with_timeout(-5), Err(JobSpecError::NonPositiveTimeout(-5)));
        assert!(matches!(
            with_timeout(i64::MAX),
            Err(JobSpecError::TimeoutTooLong { .. })
        ));
        assert_eq!(with_timeout(30).unwrap().timeout, Duration::from_secs(30));
    }

    #[test]
    fn an_env_value_of_one_mebibyte_is_refused_with_its_name() {
        let err = with_env("BIG", "x".repeat(1 << 20)).unwrap_err();
        assert!(matches!(err, JobSpecError::EnvValueTooLarge { ref name, .. } if name == "BIG"));
        assert!(err.to_string().contains("BIG is 1048576 bytes"), "{err}");
    }

    #[test]
    fn env_names_must_be_shell_identifiers() {
        assert!(with_env("GOOD_1", "v".into()).is_ok());
        for bad in ["", "1X", "A-B", "A B", "Ä"] {
            assert!(
                matches!(
                    with_env(bad, "v".into()),
                    Err(JobSpecError::InvalidEnvName(_))
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert_eq!(spec("echo a\0b"), Err(JobSpecError::CommandContainsNul));
        assert!(matches!(
            with_env("A", "a\0".into()),
            Err(JobSpecError::EnvValueContainsNul { .. })
        ));
    }

    fn with_resources(cpu_millis: u32, memory_bytes: u64) -> Result<JobSpec, JobSpecError> {
        JobSpec::new(
            "true".into(),
            BTreeMap::new(),
            None,
            Resources {
                cpu_millis,
                memory_bytes,
            },
            None,
            &JobSpecLimits::default(),
        )
    }

    #[test]
    fn a_memory_limit_below_what_a_worker_runs_in_is_refused_naming_the_field_and_the_floor() {
        for tiny in [1, 512, (16 << 20) - 1] {
            let err = with_resources(0, tiny).unwrap_err();
            assert_eq!(
                err,
                JobSpecError::MemoryTooSmall {
                    got: tiny,
                    min: 16 << 20
                }
            );
            let message = err.to_string();
            assert!(message.contains("resources.memory_bytes"), "{message}");
            assert!(message.contains("16 MiB"), "{message}");
        }
        assert!(with_resources(0, 16 << 20).is_ok());
        assert!(with_resources(0, 0).is_ok(), "0 means no limit");
    }

    #[test]
    fn a_cpu_limit_below_a_tenth_of_a_core_is_refused_naming_the_field_and_the_floor() {
        let err = with_resources(1, 0).unwrap_err();
        assert_eq!(err, JobSpecError::CpuTooSmall { got: 1, min: 100 });
        assert!(err.to_string().contains("resources.cpu_millis"), "{err}");
        assert!(err.to_string().contains("at least 100"), "{err}");
        assert!(with_resources(100, 0).is_ok());
    }

    #[test]
    fn limits_larger_than_any_node_are_refused() {
        assert!(matches!(
            with_resources(0, u64::MAX),
            Err(JobSpecError::MemoryTooLarge { .. })
        ));
        assert!(with_resources(0, 4 << 40).is_ok());
        assert!(matches!(
            with_resources(u32::MAX, 0),
            Err(JobSpecError::CpuTooLarge { .. })
        ));
        assert!(with_resources(1_024_000, 0).is_ok());
    }

    #[test]
    fn final_states_never_change() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(!from.can_become(to), "{from} -> {to} allowed");
            }
        }
        assert!(JobState::Running.can_become(JobState::Queued));
        assert!(!JobState::Queued.can_become(JobState::Running));
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
    }

    #[test]
    fn outcomes_map_to_states() {
        assert_eq!(
            TerminalOutcome::Exited { exit_code: 0 }.state(),
            JobState::Succeeded
        );
        assert_eq!(
            TerminalOutcome::Exited { exit_code: 3 }.state(),
            JobState::Failed
        );
        assert_eq!(
            TerminalOutcome::SpawnFailed {
                message: "x".into()
            }
            .state(),
            JobState::Failed
        );
        assert_eq!(
            TerminalOutcome::TimedOut { exit_code: None }.state(),
            JobState::TimedOut
        );
    }
}
