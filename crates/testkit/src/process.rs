//! Processes a test starts or watches: children that die with the test, signals, and what
//! `/proc` says about who is still alive.

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::Context;
use nix::{sys::signal, unistd::Pid};

pub use nix::sys::signal::Signal;

/// Makes the child get SIGKILL when the thread that spawns it dies — even when the test process
/// is killed outright — so no server or database outlives the test that started it.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed: it makes three system calls (prctl, getppid, kill) and does not allocate.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died between fork and prctl; nobody would send the signal.
            if nix::unistd::getppid() != parent {
                let _ = signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        })
    }
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let target = Pid::from_raw(i32::try_from(pid).with_context(|| format!("pid {pid}"))?);
    signal::kill(target, signal).with_context(|| format!("sending {signal} to pid {pid}"))
}

/// Sends `signal` to every process of group `pgid`.
pub fn send_signal_to_group(pgid: u32, signal: Signal) -> anyhow::Result<()> {
    let group = Pid::from_raw(i32::try_from(pgid).with_context(|| format!("pgid {pgid}"))?);
    signal::killpg(group, signal)
        .with_context(|| format!("sending {signal} to process group {pgid}"))
}

/// Alive and not a zombie.
pub fn is_running(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// Live processes (zombies excluded) of process group `pgid`.
pub fn live_processes_in_group(pgid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| stat_field(pid, 2).is_some_and(|group| group == pgid.to_string()))
        .filter(|&pid| is_running(pid))
        .collect()
}

/// Live processes whose environment holds `NAME=value` exactly, e.g. the local provider's
/// `HODEI_INSTANCE=<instance>` label.
pub fn processes_with_env(name: &str, value: &str) -> Vec<u32> {
    let wanted = format!("{name}={value}");
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|var| var == wanted.as_bytes())
            }) && is_running(*pid)
        })
        .collect()
}

/// The parent of process `pid`, if it is alive.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `R`, `S`, `Z`, ... from `/proc/<pid>/stat`.
fn process_state(pid: u32) -> Option<char> {
    stat_field(pid, 0)?.chars().next()
}

/// A field of `/proc/<pid>/stat` after the command name: 0 is the state, 1 the parent, 2 the
/// process group. The name is in parentheses and may contain anything, so split after it.
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(index).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn this_process_is_running_and_pid_zero_is_not_a_process() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(0));
    }

    #[test]
    fn a_child_that_dies_with_its_parent_still_runs_while_the_parent_lives() {
        let mut child = die_with_parent(Command::new("sleep").arg("30"))
            .spawn()
            .expect("spawn sleep");
        assert!(is_running(child.id()));
        assert_eq!(parent_of(child.id()), Some(std::process::id()));
        send_signal(child.id(), Signal::SIGKILL).expect("kill");
        let status = child.wait().expect("wait");
        assert!(!status.success());
        assert!(!is_running(child.id()));
    }

    #[test]
    fn a_child_dies_when_the_thread_that_spawned_it_ends() {
        let mut child = std::thread::spawn(|| {
            die_with_parent(Command::new("sleep").arg("30"))
                .spawn()
                .expect("spawn sleep")
        })
        .join()
        .expect("spawning thread");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while is_running(child.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child outlived its parent thread"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait().expect("reap the child");
    }

    #[test]
    fn processes_are_found_by_an_environment_variable() {
        let marker = format!("t-{}", std::process::id());
        let mut child = die_with_parent(
            Command::new("sleep")
                .arg("30")
                .env("HODEI_TESTKIT_MARKER", &marker),
        )
        .spawn()
        .expect("spawn sleep");
        assert_eq!(
            processes_with_env("HODEI_TESTKIT_MARKER", &marker),
            vec![child.id()]
        );
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}
