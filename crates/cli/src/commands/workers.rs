//! `hodei workers list`.

use chrono::Utc;
use hodei_proto::v1 as pb;

use crate::{
    args::{OutputFormat, WorkersCommand},
    connection::Clients,
    error::CliError,
    output::{self, human, json::WorkerView},
};

pub async fn execute(
    mut clients: Clients,
    format: OutputFormat,
    command: WorkersCommand,
) -> Result<u8, CliError> {
    let WorkersCommand::List(args) = command;
    let request = pb::ListWorkersRequest {
        include_finished: args.all,
        limit: args.limit,
    };
    let workers = clients
        .workers
        .list_workers(request)
        .await
        .map_err(|status| clients.error(status))?
        .into_inner()
        .workers;
    match format {
        OutputFormat::Json => {
            output::print_json(&workers.iter().map(WorkerView::from).collect::<Vec<_>>())?;
        }
        OutputFormat::Human if workers.is_empty() => {
            output::notice(if args.all {
                "no workers"
            } else {
                "no live workers (--all also shows finished ones)"
            });
        }
        OutputFormat::Human => output::print(&human::workers_table(&workers, Utc::now()))?,
    }
    Ok(0)
}
