//! `hodei workers list`.

use chrono::Utc;
use hodei_proto::v1 as pb;

use crate::{
    args::{OutputFormat, WorkersCommand},
    connection::Clients,
    error::CliError,
    output::{self, human, json::WorkerView},
};

/// The server answers at most this many workers per page.
const MAX_PAGE: u32 = 1000;

pub async fn execute(
    mut clients: Clients,
    format: OutputFormat,
    command: WorkersCommand,
) -> Result<u8, CliError> {
    let WorkersCommand::List(args) = command;
    let mut workers: Vec<pb::Worker> = Vec::new();
    let mut page_token = String::new();
    while (workers.len() as u64) < u64::from(args.limit) {
        let wanted = args.limit - workers.len() as u32;
        let request = pb::ListWorkersRequest {
            include_finished: args.all,
            limit: wanted.min(MAX_PAGE),
            page_token: std::mem::take(&mut page_token),
        };
        let page = clients
            .workers
            .list_workers(request)
            .await
            .map_err(|status| clients.error(status))?
            .into_inner();
        let got = page.workers.len();
        workers.extend(page.workers.into_iter().take(wanted as usize));
        // An empty page with a token would loop forever; trust neither.
        if page.next_page_token.is_empty() || got == 0 {
            break;
        }
        page_token = page.next_page_token;
    }
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
