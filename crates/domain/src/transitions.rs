//! The legal moves of a job and of a worker: one table each. The server takes a step only
//! through `hodei_store::Transitions`, whose SQL guards a store test checks against these
//! tables, state by state, on a real PostgreSQL.

use crate::{JobState, WorkerState};

/// A step of a job's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStep {
    /// A worker (connected, or being created for it) takes the oldest queued job.
    Claim,
    /// The worker reports that the command started.
    Start,
    /// The command ended (the worker's report), or the server ended it (a cancel before the
    /// worker started, the time-out back-stop). From `Assigned` too: a start whose write was
    /// lost to a database outage does not stop the end from being recorded.
    Finish,
    /// The attempt failed for infrastructure reasons: the job goes back to the queue, or fails
    /// when it is out of attempts, or ends cancelled when a cancel was requested meanwhile.
    Requeue,
    /// The claim never reached its worker: back to the queue without spending the attempt.
    GiveBack,
    /// A user cancels a job still in the queue.
    CancelQueued,
}

/// One legal move: `step` takes a job in `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTransition {
    pub step: JobStep,
    pub from: JobState,
    pub to: JobState,
}

const fn job(step: JobStep, from: JobState, to: JobState) -> JobTransition {
    JobTransition { step, from, to }
}

/// Every legal move of a job. Final states (`succeeded`, `failed`, `cancelled`, `timed_out`)
/// appear only as targets: a final state never changes.
pub const JOB_TRANSITIONS: &[JobTransition] = {
    use JobState::*;
    use JobStep::*;
    &[
        job(Claim, Queued, Assigned),
        job(CancelQueued, Queued, Cancelled),
        job(Start, Assigned, Running),
        job(GiveBack, Assigned, Queued),
        job(Finish, Assigned, Succeeded),
        job(Finish, Assigned, Failed),
        job(Finish, Assigned, Cancelled),
        job(Finish, Assigned, TimedOut),
        job(Finish, Running, Succeeded),
        job(Finish, Running, Failed),
        job(Finish, Running, Cancelled),
        job(Finish, Running, TimedOut),
        job(Requeue, Assigned, Queued),
        job(Requeue, Assigned, Failed),
        job(Requeue, Assigned, Cancelled),
        job(Requeue, Running, Queued),
        job(Requeue, Running, Failed),
        job(Requeue, Running, Cancelled),
    ]
};

/// A step of a worker's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerStep {
    /// It presented its one-time token.
    Register,
    /// It is given a job. From `Busy` too: a worker whose last job ended without recording it
    /// idle (the job was ended elsewhere) takes its next one.
    TakeJob,
    /// Its job ended.
    FinishJob,
    /// It is being destroyed.
    Retire,
    /// It is gone, as it was told to.
    End,
    /// It never registered.
    Fail,
    /// It went silent, dropped its stream, or its server no longer tracks it.
    Lose,
}

/// One legal move: `step` takes a worker in `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTransition {
    pub step: WorkerStep,
    pub from: WorkerState,
    pub to: WorkerState,
}

const fn worker(step: WorkerStep, from: WorkerState, to: WorkerState) -> WorkerTransition {
    WorkerTransition { step, from, to }
}

/// Every legal move of a worker. `terminated`, `failed` and `lost` are final.
pub const WORKER_TRANSITIONS: &[WorkerTransition] = {
    use WorkerState::*;
    use WorkerStep::*;
    &[
        worker(Register, Provisioning, Idle),
        worker(TakeJob, Idle, Busy),
        worker(TakeJob, Busy, Busy),
        worker(FinishJob, Busy, Idle),
        worker(Retire, Provisioning, Terminating),
        worker(Retire, Idle, Terminating),
        worker(Retire, Busy, Terminating),
        worker(End, Provisioning, Terminated),
        worker(End, Idle, Terminated),
        worker(End, Busy, Terminated),
        worker(End, Terminating, Terminated),
        worker(Fail, Provisioning, Failed),
        worker(Lose, Provisioning, Lost),
        worker(Lose, Idle, Lost),
        worker(Lose, Busy, Lost),
        worker(Lose, Terminating, Lost),
    ]
};

impl JobStep {
    /// The states this step may start from.
    pub fn sources(self) -> impl Iterator<Item = JobState> {
        let mut seen = Vec::new();
        for t in JOB_TRANSITIONS.iter().filter(|t| t.step == self) {
            if !seen.contains(&t.from) {
                seen.push(t.from);
            }
        }
        seen.into_iter()
    }

    /// Where this step may take a job in `from`.
    pub fn targets(self, from: JobState) -> impl Iterator<Item = JobState> {
        JOB_TRANSITIONS
            .iter()
            .filter(move |t| t.step == self && t.from == from)
            .map(|t| t.to)
    }
}

impl WorkerStep {
    /// The states this step may start from.
    pub fn sources(self) -> impl Iterator<Item = WorkerState> {
        let mut seen = Vec::new();
        for t in WORKER_TRANSITIONS.iter().filter(|t| t.step == self) {
            if !seen.contains(&t.from) {
                seen.push(t.from);
            }
        }
        seen.into_iter()
    }

    /// Where this step may take a worker in `from`.
    pub fn targets(self, from: WorkerState) -> impl Iterator<Item = WorkerState> {
        WORKER_TRANSITIONS
            .iter()
            .filter(move |t| t.step == self && t.from == from)
            .map(|t| t.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_never_left() {
        for t in JOB_TRANSITIONS {
            assert!(!t.from.is_terminal(), "{t:?} leaves a final state");
        }
        for t in WORKER_TRANSITIONS {
            assert!(t.from.is_alive(), "{t:?} leaves a final state");
        }
    }

    #[test]
    fn every_state_is_reachable_from_the_first() {
        let mut reached = vec![JobState::Queued];
        while let Some(next) = JOB_TRANSITIONS
            .iter()
            .find(|t| reached.contains(&t.from) && !reached.contains(&t.to))
        {
            reached.push(next.to);
        }
        assert_eq!(reached.len(), JobState::ALL.len(), "{reached:?}");
        let mut reached = vec![WorkerState::Provisioning];
        while let Some(next) = WORKER_TRANSITIONS
            .iter()
            .find(|t| reached.contains(&t.from) && !reached.contains(&t.to))
        {
            reached.push(next.to);
        }
        assert_eq!(reached.len(), WorkerState::ALL.len(), "{reached:?}");
    }

    #[test]
    fn a_step_lists_its_sources_once() {
        let finish: Vec<_> = JobStep::Finish.sources().collect();
        assert_eq!(finish, [JobState::Assigned, JobState::Running]);
        let lose: Vec<_> = WorkerStep::Lose.sources().collect();
        assert_eq!(lose.len(), 4);
    }
}
