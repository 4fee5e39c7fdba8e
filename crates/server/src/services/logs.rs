//! `LogStreamService`: stored output, and live output as it is produced.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use hodei_domain::JobId;
use hodei_proto::v1::{self as pb, log_stream_service_server::LogStreamService};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use hodei_contract::convert::{log_line_to_proto, parse_job_id};

use crate::{
    access::{Access, Caller},
    contract_status,
    core::Core,
    log_hub::HubEvent,
    store_status,
};

pub struct LogsService {
    core: Arc<Core>,
    access: Arc<Access>,
}

impl LogsService {
    pub fn new(core: Arc<Core>, access: Arc<Access>) -> Self {
        Self { core, access }
    }
}

const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;
/// Lines read from the database per query while catching up, and their most bytes (lines are
/// at most 64 KiB each, so the line count alone would allow 128 MiB per follower).
const CATCH_UP_PAGE: u32 = 2000;
const CATCH_UP_BYTES: usize = 1 << 20;
/// A follower that has heard nothing for this long asks the database whether its job ended,
/// and whether its caller's token is still valid (a revocation through another server).
const QUIET_RECHECK: Duration = Duration::from_secs(5);
/// Lines buffered towards one subscriber.
const SUBSCRIBER_BUFFER: usize = 1024;

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl LogStreamService for LogsService {
    type SubscribeLogsStream = LogStream;

    async fn subscribe_logs(
        &self,
        request: Request<pb::SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let job = parse_job_id(&request.job_id).map_err(contract_status)?;
        // Register for live lines *before* looking at the job, so nothing falls in between.
        let subscription = request.follow.then(|| self.core.hub.subscribe(job));
        let found = self.core.store.get_job(job).await.map_err(store_status)?;
        let Some(found) = found.filter(|j| caller.can_read_job_of(j.owner.as_deref())) else {
            return Err(Status::not_found(format!("no job {job}")));
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let follower = Follower {
            core: self.core.clone(),
            access: self.access.clone(),
            caller,
            job,
            job_id: job.to_string(),
            next: request.from_sequence.max(1),
            tx,
        };
        let subscription = subscription.filter(|_| !found.state.is_terminal());
        self.core.spawn("log follower", follower.run(subscription));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_logs(
        &self,
        request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let job = parse_job_id(&request.job_id).map_err(contract_status)?;
        let store = &self.core.store;
        let found = store.get_job(job).await.map_err(store_status)?;
        if !found.is_some_and(|j| caller.can_read_job_of(j.owner.as_deref())) {
            return Err(Status::not_found(format!("no job {job}")));
        }
        let limit = match request.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let from = request.from_sequence.max(1);
        // Half the message limit for the lines' bytes leaves room for their framing (job id,
        // sequence, timestamps: under 100 bytes a line, 10,000 lines at most).
        let max_bytes = self.core.settings.max_message_bytes / 2;
        let lines = store
            .logs(job, from, limit, max_bytes)
            .await
            .map_err(store_status)?;
        let next_sequence = lines.last().map_or(from, |l| l.sequence + 1);
        let job_id = job.to_string();
        Ok(Response::new(pb::GetLogsResponse {
            lines: lines
                .iter()
                .map(|line| log_line_to_proto(line, &job_id))
                .collect(),
            next_sequence,
        }))
    }
}

/// Sends one subscriber its lines: history from the database, then live lines from the hub,
/// falling back to the database whenever it lags, and reading what another server stored when
/// it says so, until the job ends or the client leaves.
struct Follower {
    core: Arc<Core>,
    access: Arc<Access>,
    /// Who follows: a revoked token ends the stream.
    caller: Caller,
    job: JobId,
    /// `job`, formatted once for every line sent.
    job_id: String,
    next: u64,
    tx: mpsc::Sender<Result<pb::LogLine, Status>>,
}

/// The client went away.
struct Gone;

impl Follower {
    async fn run(mut self, subscription: Option<crate::log_hub::Subscription>) {
        let _ = self.follow(subscription).await;
    }

    async fn follow(
        &mut self,
        subscription: Option<crate::log_hub::Subscription>,
    ) -> Result<(), Gone> {
        self.catch_up().await?;
        let Some(mut subscription) = subscription else {
            return Ok(());
        };
        let mut revocations = self.access.revocations();
        loop {
            let event = tokio::select! {
                event = subscription.receiver.recv() => event,
                _ = self.tx.closed() => return Err(Gone),
                _ = self.core.stop.cancelled() => return Ok(()),
                _ = revocations.changed() => {
                    self.still_allowed().await?;
                    continue;
                }
                // The hub is told when a job ends, but a job can also end where it cannot tell
                // (a reply lost to a database restart, another server instance): after a quiet
                // spell, the database says whether there is anything left to follow.
                _ = tokio::time::sleep(QUIET_RECHECK) => {
                    self.still_allowed().await?;
                    match self.core.store.get_job(self.job).await {
                        Ok(Some(job)) if job.state.is_terminal() => return self.catch_up().await,
                        Ok(_) => {}
                        Err(e) => tracing::debug!(job = %self.job, error = %e, "cannot re-check a followed job"),
                    }
                    continue;
                }
            };
            match event {
                Ok(HubEvent::Lines(lines)) => {
                    let first = lines.first().map_or(self.next, |l| l.sequence);
                    if first > self.next {
                        // Should not happen (lines are published after they are stored), but
                        // if it does, the database has what we missed.
                        self.catch_up().await?;
                    }
                    for line in lines.iter() {
                        if line.sequence >= self.next {
                            self.send(log_line_to_proto(line, &self.job_id)).await?;
                            self.next = line.sequence + 1;
                        }
                    }
                }
                // Stored by the server its worker is connected to.
                Ok(HubEvent::StoredElsewhere(up_to)) if up_to >= self.next => {
                    self.catch_up().await?
                }
                Ok(HubEvent::StoredElsewhere(_)) => {}
                Ok(HubEvent::Finished) | Err(RecvError::Closed) => return self.catch_up().await,
                Err(RecvError::Lagged(_)) => self.catch_up().await?,
            }
        }
    }

    /// Ends the stream with the refusal if the caller's token was revoked or has expired.
    async fn still_allowed(&self) -> Result<(), Gone> {
        if let Err(refused) = self.access.recheck(&self.caller).await {
            let _ = self.tx.send(Err(refused)).await;
            return Err(Gone);
        }
        Ok(())
    }

    /// Sends everything stored from `next` on.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        loop {
            let lines = match self
                .core
                .store
                .logs(self.job, self.next, CATCH_UP_PAGE, CATCH_UP_BYTES)
                .await
            {
                Ok(lines) => lines,
                Err(e) => {
                    let _ = self.tx.send(Err(store_status(e))).await;
                    return Err(Gone);
                }
            };
            // A page cut short by its line count or its byte budget may have more behind it.
            let full_page = lines.len() == CATCH_UP_PAGE as usize
                || lines.iter().map(|l| l.data.len()).sum::<usize>() >= CATCH_UP_BYTES;
            for line in &lines {
                self.send(log_line_to_proto(line, &self.job_id)).await?;
                self.next = line.sequence + 1;
            }
            if !full_page {
                return Ok(());
            }
        }
    }

    async fn send(&self, line: pb::LogLine) -> Result<(), Gone> {
        self.tx.send(Ok(line)).await.map_err(|_| Gone)
    }
}
