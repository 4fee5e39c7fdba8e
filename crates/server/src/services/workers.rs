//! `WorkerQueryService`: what workers exist and what they are doing.

use std::sync::Arc;

use hodei_proto::v1::{self as pb, worker_query_service_server::WorkerQueryService};
use tonic::{Request, Response, Status};

use hodei_contract::convert::worker_to_proto;

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
        let limit = match request.limit {
            0 => 100,
            n => n.min(1000),
        };
        let workers = self
            .core
            .store
            .list_workers(request.include_finished, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers: workers.iter().map(worker_to_proto).collect(),
        }))
    }
}
