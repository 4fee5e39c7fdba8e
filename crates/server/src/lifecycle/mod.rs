//! The one owner of every transition of a job and of a worker.
//!
//! Each operation here is one guarded statement of [`Transitions`], the registry transition
//! that goes with it and the session command, together. RPC services, the dispatcher,
//! provisioning, sessions, maintenance and `server.rs` call these operations and decide nothing
//! about states themselves. The legal moves are the tables of `hodei_domain::transitions`.
//!
//! - `jobs.rs`: queue, cancel, start, end, re-queue, give back, release due retries;
//! - `workers.rs`: claims (for idle workers and for new ones), registration, sessions attaching
//!   and ending, a job's hand-over, retirement, loss, and the tracked spawning of sessions and
//!   provisioning whose panic loses the worker instead of leaking it;
//! - `recovery.rs`: start-up recovery, reconciliation with the database, stale registrations;
//! - `shutdown.rs`: the graceful shutdown sequence.
//!
//! The server holds exactly one [`Transitions`]: the private field of [`Lifecycle`], made in
//! [`Lifecycle::new`]. A test (`only_the_lifecycle_changes_states`) checks that no other file
//! of this crate names the type.

mod jobs;
mod recovery;
mod shutdown;
mod workers;

use std::sync::Arc;

use hodei_store::Transitions;

pub use jobs::{CancelError, QueueError};
pub use recovery::Reconciler;
pub use workers::{AfterJob, NewWorker};

use crate::core::Core;

/// Cheap to clone: every clone shares the same core.
#[derive(Clone)]
pub struct Lifecycle {
    core: Arc<Core>,
    db: Transitions,
}

impl Lifecycle {
    pub fn new(core: Arc<Core>) -> Self {
        let db = Transitions::new(&core.store);
        Self { core, db }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `dir`, with its path.
    fn sources(dir: &Path, found: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("readable source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("readable source");
                found.push((path.display().to_string(), text));
            }
        }
    }

    #[test]
    fn only_the_lifecycle_changes_states() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(
            files.len() > 10,
            "found the crate's sources: {}",
            files.len()
        );
        let lifecycle = src.join("lifecycle");
        let offenders: Vec<&str> = files
            .iter()
            .filter(|(path, text)| {
                !Path::new(path).starts_with(&lifecycle) && text.contains("Transitions")
            })
            .map(|(path, _)| path.as_str())
            .collect();
        assert!(
            offenders.is_empty(),
            "state-changing statements belong to src/lifecycle/; these files name \
             hodei_store::Transitions: {offenders:?}"
        );
    }
}
