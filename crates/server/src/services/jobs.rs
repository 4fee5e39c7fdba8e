//! `JobService`: queue, inspect, list and cancel jobs.

use std::{sync::Arc, time::Duration};

/// How long a cancel waits for a job being handed to an idle worker to reach it.
const RESERVED_HANDOVER_WAIT: Duration = Duration::from_secs(2);

use hodei_domain::{JobId, JobState, WorkerState};
use hodei_proto::v1::{self as pb, job_service_server::JobService};
use tonic::{Request, Response, Status};

use hodei_contract::convert::{job_state_from_proto, job_to_proto, parse_job_id, spec_from_proto};

use crate::{contract_status, core::Core, registry::Phase, session::SessionCommand, store_status};

pub struct JobsService {
    core: Arc<Core>,
}

impl JobsService {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    async fn job_message(&self, id: JobId) -> Result<pb::Job, Status> {
        let store = &self.core.store;
        let job = store
            .get_job(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no job {id}")))?;
        let attempts = store.job_attempts(id).await.map_err(store_status)?;
        Ok(job_to_proto(&job, &attempts))
    }
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

#[tonic::async_trait]
impl JobService for JobsService {
    async fn queue_job(
        &self,
        request: Request<pb::QueueJobRequest>,
    ) -> Result<Response<pb::QueueJobResponse>, Status> {
        if self.core.is_draining() {
            return Err(Status::unavailable(
                "server is shutting down; queue the job again shortly",
            ));
        }
        let spec = spec_from_proto(request.into_inner().spec, &self.core.settings.job_limits)
            .map_err(contract_status)?;
        let job = self
            .core
            .store
            .insert_job(&spec)
            .await
            .map_err(store_status)?;
        tracing::info!(job = %job.id, "job queued");
        self.core.wake_dispatcher();
        Ok(Response::new(pb::QueueJobResponse {
            job: Some(job_to_proto(&job, &[])),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = parse_job_id(&request.into_inner().job_id).map_err(contract_status)?;
        Ok(Response::new(self.job_message(id).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let states = request
            .states
            .iter()
            .map(|&s| job_state_from_proto(s).map_err(contract_status))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = match request.limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let before = if request.page_token.is_empty() {
            None
        } else {
            Some(
                request
                    .page_token
                    .parse::<JobId>()
                    .map_err(|_| Status::invalid_argument("invalid page_token"))?,
            )
        };
        let jobs = self
            .core
            .store
            .list_jobs(&states, limit, before)
            .await
            .map_err(store_status)?;
        let next_page_token = if jobs.len() == limit as usize {
            jobs.last().map(|j| j.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(|j| job_to_proto(j, &[])).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        let id = parse_job_id(&request.job_id).map_err(contract_status)?;
        let reason = if request.reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            request.reason.chars().take(1024).collect()
        };
        let store = &self.core.store;

        if let Some(job) = store
            .cancel_queued_job(id, &reason)
            .await
            .map_err(store_status)?
        {
            tracing::info!(job = %id, "queued job cancelled");
            self.core.job_finished(&job);
            return Ok(Response::new(self.job_message(id).await?));
        }
        let job = store
            .get_job(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no job {id}")))?;
        if job.state.is_terminal() {
            return Err(Status::failed_precondition(format!(
                "job {id} already ended ({})",
                job.state
            )));
        }
        let Some(worker) = job.worker_id else {
            return Err(Status::internal(format!(
                "job {id} is {} without a worker",
                job.state
            )));
        };
        // An idle worker the dispatcher claimed this job for a moment ago is `Reserved` until
        // the job is handed over: wait for that, so the cancel goes through its session rather
        // than ending the job here while the dispatcher still sends it to the worker.
        let mut phase = self.core.registry.phase(worker);
        let handover = tokio::time::Instant::now() + RESERVED_HANDOVER_WAIT;
        while matches!(phase, Some(Phase::Reserved)) && tokio::time::Instant::now() < handover {
            tokio::time::sleep(Duration::from_millis(5)).await;
            phase = self.core.registry.phase(worker);
        }
        match phase {
            Some(Phase::Busy { job: held }) if held == id => {
                // Recorded first: however the attempt ends from here on — the worker confirms,
                // dies, or the server stops — the job is not run again.
                store
                    .request_cancel(id, &reason)
                    .await
                    .map_err(store_status)?;
                if let Some(commands) = self.core.registry.commands(worker) {
                    let _ = commands.send(SessionCommand::Cancel { job: id, reason });
                }
            }
            // Its worker has not started yet (or is gone): end the job here and drop the worker.
            _ => {
                if let Some(job) = store
                    .finish_job(
                        id,
                        worker,
                        JobState::Cancelled,
                        None,
                        &format!("cancelled: {reason}"),
                    )
                    .await
                    .map_err(store_status)?
                {
                    self.core.job_finished(&job);
                }
                if matches!(
                    phase,
                    Some(Phase::Provisioning { .. } | Phase::Registered { .. })
                ) && self.core.registry.retire_if_unconnected(worker)
                {
                    self.core.retire_worker(
                        worker,
                        WorkerState::Terminated,
                        "its job was cancelled".into(),
                    );
                }
            }
        }
        tracing::info!(job = %id, %worker, "cancel requested");
        Ok(Response::new(self.job_message(id).await?))
    }
}
