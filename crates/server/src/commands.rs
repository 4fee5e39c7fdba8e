//! The two channels of a connected worker: commands from the rest of the server to its session,
//! and the messages its session writes to the worker's stream.

use hodei_domain::{Job, JobId};
use hodei_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

/// What the rest of the server asks of a worker's session.
#[derive(Debug)]
pub enum SessionCommand {
    /// Run this job (already claimed for the worker in the database).
    Assign(Box<Job>),
    Cancel {
        job: JobId,
        reason: String,
    },
    /// Ask the worker to exit; with `now`, its running job is killed.
    Retire {
        reason: String,
        now: bool,
    },
    /// This server is going away: tell the worker to reconnect (keeping its job) and let it go.
    Move {
        reason: String,
    },
}

pub type Commands = mpsc::UnboundedSender<SessionCommand>;
pub type CommandInbox = mpsc::UnboundedReceiver<SessionCommand>;

/// Messages towards one worker's `Connect` stream.
pub type Outbound = mpsc::Sender<Result<pb::ServerMessage, Status>>;
