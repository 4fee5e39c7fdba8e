//! Finding worker processes, also those of a previous server process, by their labels: on the
//! command line (`--label=NAME=VALUE`, readable although the worker is not dumpable) or, for
//! processes labelled only through their environment (a job's processes inherit the label
//! variables; a process started by hand), in `/proc/<pid>/environ`, where readable.

use std::{fs, str::FromStr};

use hodei_contract::env;
use hodei_domain::WorkerId;

use super::worker_command::{ENV_INSTANCE, ENV_MANAGED_BY, LABEL_FLAG};
use crate::labels::MANAGED_BY_VALUE;

/// The labels of one managed process.
pub struct WorkerLabels {
    pub worker_id: Option<WorkerId>,
    pub instance: Option<String>,
}

pub async fn find(predicate: impl Fn(&WorkerLabels) -> bool + Send + 'static) -> Vec<u32> {
    find_with_labels(predicate)
        .await
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

pub async fn find_with_labels(
    predicate: impl Fn(&WorkerLabels) -> bool + Send + 'static,
) -> Vec<(u32, WorkerLabels)> {
    tokio::task::spawn_blocking(move || scan(&predicate))
        .await
        .unwrap_or_default()
}

/// Alive and not a zombie.
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn scan(predicate: &dyn Fn(&WorkerLabels) -> bool) -> Vec<(u32, WorkerLabels)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let labels = labels_of(pid)?;
            (predicate(&labels) && is_running(pid)).then_some((pid, labels))
        })
        .collect()
}

fn labels_of(pid: u32) -> Option<WorkerLabels> {
    let from_command_line = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| parse_cmdline(&cmdline));
    from_command_line.or_else(|| parse_environ(&fs::read(format!("/proc/{pid}/environ")).ok()?))
}

/// Some only for a command line carrying `--label=HODEI_MANAGED_BY=hodei`.
fn parse_cmdline(cmdline: &[u8]) -> Option<WorkerLabels> {
    parse_labels(
        cmdline
            .split(|&b| b == 0)
            .filter_map(|arg| arg.strip_prefix(LABEL_FLAG.as_bytes())),
    )
}

/// Some only for an environment holding `HODEI_MANAGED_BY=hodei`.
fn parse_environ(environ: &[u8]) -> Option<WorkerLabels> {
    parse_labels(environ.split(|&b| b == 0))
}

fn parse_labels<'a>(pairs: impl Iterator<Item = &'a [u8]>) -> Option<WorkerLabels> {
    let mut managed = false;
    let mut worker_id = None;
    let mut instance = None;
    for pair in pairs {
        let Ok(pair) = std::str::from_utf8(pair) else {
            continue;
        };
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        match name {
            ENV_MANAGED_BY => managed = value == MANAGED_BY_VALUE,
            ENV_INSTANCE => instance = Some(value.to_string()),
            env::WORKER_ID => worker_id = WorkerId::from_str(value).ok(),
            _ => {}
        }
    }
    managed.then_some(WorkerLabels {
        worker_id,
        instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_managed_processes_are_recognised() {
        let id = WorkerId::new();
        let environ =
            format!("PATH=/bin\0HODEI_MANAGED_BY=hodei\0HODEI_INSTANCE=ci\0HODEI_WORKER_ID={id}\0");
        let env = parse_environ(environ.as_bytes()).expect("managed");
        assert_eq!(env.worker_id, Some(id));
        assert_eq!(env.instance.as_deref(), Some("ci"));
        assert!(parse_environ(b"PATH=/bin\0HODEI_INSTANCE=ci\0").is_none());
    }

    #[test]
    fn labels_are_read_from_label_flags_only_on_a_command_line() {
        let id = WorkerId::new();
        let cmdline = format!(
            "/usr/bin/hodei-worker\0--label=HODEI_MANAGED_BY=hodei\0\
             --label=HODEI_INSTANCE=ci\0--label=HODEI_WORKER_ID={id}\0"
        );
        let labels = parse_cmdline(cmdline.as_bytes()).expect("managed");
        assert_eq!(labels.worker_id, Some(id));
        assert_eq!(labels.instance.as_deref(), Some("ci"));
        // Someone's `env HODEI_MANAGED_BY=hodei ...` is not a labelled worker.
        assert!(
            parse_cmdline(b"env\0HODEI_MANAGED_BY=hodei\0HODEI_INSTANCE=ci\0sleep\0").is_none()
        );
    }

    #[test]
    fn our_own_process_is_running_and_pid_zero_is_not_a_process() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(0));
    }
}
