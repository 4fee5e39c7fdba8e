//! The gRPC services, one file each.

mod agent;
mod jobs;
mod logs;
mod paging;
mod tokens;
mod workers;

pub use agent::AgentService;
pub use jobs::JobsService;
pub use logs::LogsService;
pub use tokens::TokensService;
pub use workers::WorkersService;
