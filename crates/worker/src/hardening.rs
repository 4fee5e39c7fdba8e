//! Keeping the worker's secrets out of its jobs' reach.
//!
//! A job runs as the worker's user. Left at that, it could read the worker's environment
//! (`/proc/<worker>/environ`) and memory (`/proc/<worker>/mem`, `process_vm_readv`, ptrace), and
//! with them the session credential that lets the worker speak to the server. The kernel allows
//! that kind of access to a process that is not *dumpable* only to a caller holding
//! `CAP_SYS_PTRACE` (root, normally; never the unprivileged user of the worker image), and such
//! a process leaves no core dump either. `execve` makes a process dumpable again, so the job
//! itself, and anything it debugs of its own, is unaffected.
//!
//! What stays readable by the same user: `/proc/<worker>/cmdline` and `/proc/<worker>/status`.
//! Nothing secret is in them; the local provider puts its labels on the command line for that
//! reason. The one-time token is not a secret worth protecting after registration (the server
//! consumed it), and the providers keep it out of the worker's environment anyway where they
//! can (local: a pipe, Docker: a file removed once read; Kubernetes: a Secret reference, so it
//! is in the environment, unreadable as above).

/// Makes this process non-dumpable. Call it first thing, before any secret is read.
pub fn make_undumpable() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

/// Removes the variables jobs must not see ([`NOT_FOR_JOBS`]) from this process's environment,
/// once the configuration has read them, so that nothing started later inherits them by
/// accident (each job's command removes them too). The kernel's copy that
/// `/proc/<worker>/environ` shows is not changed by this; only [`make_undumpable`] guards it.
///
/// # Safety
///
/// Only while this process has a single thread: changing the environment races with any other
/// thread reading it.
///
/// [`NOT_FOR_JOBS`]: hodei_contract::env::NOT_FOR_JOBS
pub unsafe fn remove_secret_variables() {
    for name in hodei_contract::env::NOT_FOR_JOBS {
        // SAFETY: the caller guarantees that no other thread exists yet.
        unsafe { std::env::remove_var(name) };
    }
}
