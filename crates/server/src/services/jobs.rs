//! `JobService`: queue, inspect, list and cancel jobs.

use hodei_contract::convert::{job_state_from_proto, job_to_proto, parse_job_id, spec_from_proto};
use hodei_domain::JobId;
use hodei_proto::v1::{self as pb, job_service_server::JobService};
use tonic::{Request, Response, Status};

use crate::{
    contract_status,
    lifecycle::{CancelError, Lifecycle, QueueError},
    store_status,
};

pub struct JobsService {
    lifecycle: Lifecycle,
}

impl JobsService {
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self { lifecycle }
    }

    async fn job_message(&self, id: JobId) -> Result<pb::Job, Status> {
        let store = &self.lifecycle.core().store;
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
/// Longest cancel reason kept, in characters.
const MAX_REASON_CHARS: usize = 1024;

#[tonic::async_trait]
impl JobService for JobsService {
    async fn queue_job(
        &self,
        request: Request<pb::QueueJobRequest>,
    ) -> Result<Response<pb::QueueJobResponse>, Status> {
        let limits = &self.lifecycle.core().settings.job_limits;
        let spec = spec_from_proto(request.into_inner().spec, limits).map_err(contract_status)?;
        let job = self.lifecycle.queue(&spec).await.map_err(|e| match e {
            QueueError::Draining => Status::unavailable(e.to_string()),
            QueueError::Store(e) => store_status(e),
        })?;
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
            .lifecycle
            .core()
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
            request.reason.chars().take(MAX_REASON_CHARS).collect()
        };
        self.lifecycle
            .cancel(id, &reason)
            .await
            .map_err(|e| match e {
                CancelError::NotFound(_) => Status::not_found(e.to_string()),
                CancelError::AlreadyEnded(..) => Status::failed_precondition(e.to_string()),
                CancelError::NoWorker(..) => Status::internal(e.to_string()),
                CancelError::Store(e) => store_status(e),
            })?;
        Ok(Response::new(self.job_message(id).await?))
    }
}
