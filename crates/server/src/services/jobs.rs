//! `JobService`: queue, inspect, list and cancel jobs.

use hodei_contract::convert::{
    job_state_filter_from_proto, job_summary_to_proto, job_to_proto, parse_job_id, spec_from_proto,
};
use hodei_domain::JobId;
use hodei_proto::v1::{self as pb, job_service_server::JobService};
use tonic::{Request, Response, Status};

use super::paging;
use crate::{
    access::Caller,
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

    /// The job as `caller` may see it: someone else's job is `NOT_FOUND`, exactly like a job
    /// that does not exist, so its existence is not revealed.
    async fn job_message(
        &self,
        id: JobId,
        caller: &Caller,
        view: pb::JobView,
    ) -> Result<pb::Job, Status> {
        let store = &self.lifecycle.core().store;
        let job = store
            .get_job(id)
            .await
            .map_err(store_status)?
            .filter(|job| caller.can_read_job_of(job.owner.as_deref()))
            .ok_or_else(|| Status::not_found(format!("no job {id}")))?;
        if view == pb::JobView::Basic {
            return Ok(job_summary_to_proto(&job));
        }
        let attempts = store.job_attempts(id).await.map_err(store_status)?;
        Ok(job_to_proto(&job, &attempts))
    }
}

/// The view a request asked for; `UNSPECIFIED` (and values newer than this build) give the
/// method's `default`.
fn view_or(raw: i32, default: pb::JobView) -> pb::JobView {
    match pb::JobView::try_from(raw) {
        Ok(pb::JobView::Basic) => pb::JobView::Basic,
        Ok(pb::JobView::Full) => pb::JobView::Full,
        Ok(pb::JobView::Unspecified) | Err(_) => default,
    }
}

/// Longest cancel reason kept, in characters.
const MAX_REASON_CHARS: usize = 1024;

#[tonic::async_trait]
impl JobService for JobsService {
    async fn queue_job(
        &self,
        request: Request<pb::QueueJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let limits = &self.lifecycle.core().settings.job_limits;
        let (spec, secrets) =
            spec_from_proto(request.into_inner().spec, limits).map_err(contract_status)?;
        let queued = self.lifecycle.queue(&spec, &secrets, caller.owner()).await;
        let job = queued.map_err(|e| match e {
            QueueError::Draining => Status::unavailable(e.to_string()),
            QueueError::Store(e) => store_status(e),
        })?;
        Ok(Response::new(job_to_proto(&job, &[])))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = parse_job_id(&request.job_id).map_err(contract_status)?;
        let view = view_or(request.view, pb::JobView::Full);
        Ok(Response::new(self.job_message(id, &caller, view).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let states = job_state_filter_from_proto(&request.states).map_err(contract_status)?;
        let limit = paging::page_size(request.limit);
        let before = paging::continue_after::<JobId>(&request.page_token)?;
        let store = &self.lifecycle.core().store;
        let jobs = store
            .list_jobs(&states, limit, before, caller.listing_owner())
            .await
            .map_err(store_status)?;
        let next_page_token = paging::next_page_token(&jobs, limit, |j| j.id);
        let jobs = match view_or(request.view, pb::JobView::Basic) {
            pb::JobView::Full => {
                let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
                let mut attempts = store.attempts_of_jobs(&ids).await.map_err(store_status)?;
                jobs.iter()
                    .map(|j| job_to_proto(j, &attempts.remove(&j.id).unwrap_or_default()))
                    .collect()
            }
            _ => jobs.iter().map(job_summary_to_proto).collect(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let id = parse_job_id(&request.job_id).map_err(contract_status)?;
        let owner = self
            .lifecycle
            .core()
            .store
            .get_job(id)
            .await
            .map_err(store_status)?
            .map(|job| job.owner);
        match owner {
            Some(owner) if caller.can_cancel_job_of(owner.as_deref()) => {}
            // Not theirs: answered like a job that does not exist.
            _ => return Err(Status::not_found(format!("no job {id}"))),
        }
        // The job's reason once cancelled; its state already says "cancelled".
        let reason = if request.reason.is_empty() {
            format!("requested by {}", caller.name())
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
        tracing::info!(job = %id, by = caller.name(), "cancel requested");
        Ok(Response::new(
            self.job_message(id, &caller, pb::JobView::Full).await?,
        ))
    }
}
