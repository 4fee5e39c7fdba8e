//! `WorkerQueryService`: what workers exist and what they are doing.

use std::sync::Arc;

use hodei_proto::v1::{self as pb, worker_query_service_server::WorkerQueryService};
use tonic::{Request, Response, Status};

use hodei_contract::convert::worker_to_proto;

use hodei_domain::WorkerId;

use super::paging;
use crate::{core::Core, store_status};

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
        let limit = paging::page_size(request.limit);
        let before = paging::continue_after::<WorkerId>(&request.page_token)?;
        let workers = self
            .core
            .store
            .list_workers(request.include_finished, limit, before)
            .await
            .map_err(store_status)?;
        let next_page_token = paging::next_page_token(&workers, limit, |w| w.id);
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers.iter().map(worker_to_proto).collect(),
            next_page_token,
        }))
    }
}
