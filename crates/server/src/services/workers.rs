//! `WorkerQueryService`: what workers exist and what they are doing.

use std::sync::Arc;

use hodei_proto::v1::{self as pb, worker_query_service_server::WorkerQueryService};
use tonic::{Request, Response, Status};

use hodei_contract::convert::worker_to_proto;

use hodei_domain::WorkerId;

use crate::{core::Core, store_status};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub struct WorkersService {
    core: Arc<Core>,
}

impl WorkersService {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl WorkerQueryService for WorkersService {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let request = request.into_inner();
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
                    .parse::<WorkerId>()
                    .map_err(|_| Status::invalid_argument("invalid page_token"))?,
            )
        };
        let workers = self
            .core
            .store
            .list_workers(request.include_finished, limit, before)
            .await
            .map_err(store_status)?;
        // A full page may be followed by more; the next request then answers what remains.
        let next_page_token = if workers.len() == limit as usize {
            workers.last().map(|w| w.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers.iter().map(worker_to_proto).collect(),
            next_page_token,
        }))
    }
}
