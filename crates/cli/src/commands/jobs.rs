//! `hodei jobs list | get | cancel | logs`.

use chrono::Utc;
use hodei_proto::v1 as pb;

use crate::{
    args::{CancelArgs, JobsCommand, ListJobsArgs, LogsArgs, OutputFormat},
    connection::Clients,
    error::CliError,
    follow::LogFollower,
    output::{self, human, json::JobView, log_writer::LogWriter},
    states::{job_state, job_state_name, job_state_to_wire},
};

/// The server caps a page at this many jobs.
const MAX_PAGE: u32 = 1000;

pub async fn execute(
    clients: Clients,
    format: OutputFormat,
    command: JobsCommand,
) -> Result<u8, CliError> {
    match command {
        JobsCommand::List(args) => list(clients, format, args).await,
        JobsCommand::Get(args) => get(clients, format, args.id).await,
        JobsCommand::Cancel(args) => cancel(clients, format, args).await,
        JobsCommand::Logs(args) => logs(clients, format, args).await,
    }
}

async fn list(
    mut clients: Clients,
    format: OutputFormat,
    args: ListJobsArgs,
) -> Result<u8, CliError> {
    let states: Vec<i32> = args
        .states
        .iter()
        .map(|&state| job_state_to_wire(state) as i32)
        .collect();
    let mut jobs: Vec<pb::Job> = Vec::new();
    let mut page_token = String::new();
    while (jobs.len() as u64) < u64::from(args.limit) {
        let wanted = args.limit - jobs.len() as u32;
        let request = pb::ListJobsRequest {
            states: states.clone(),
            limit: wanted.min(MAX_PAGE),
            page_token: std::mem::take(&mut page_token),
            // The table shows neither environment nor attempts; JSON shows the whole job.
            view: match format {
                OutputFormat::Json => pb::JobView::Full,
                OutputFormat::Human => pb::JobView::Basic,
            } as i32,
        };
        let page = clients
            .jobs
            .list_jobs(request)
            .await
            .map_err(|status| clients.error(status))?
            .into_inner();
        let got = page.jobs.len();
        jobs.extend(page.jobs.into_iter().take(wanted as usize));
        // An empty page with a token would loop forever; trust neither.
        if page.next_page_token.is_empty() || got == 0 {
            break;
        }
        page_token = page.next_page_token;
    }
    match format {
        OutputFormat::Json => {
            output::print_json(&jobs.iter().map(JobView::from).collect::<Vec<_>>())?;
        }
        OutputFormat::Human if jobs.is_empty() => output::notice("no jobs"),
        OutputFormat::Human => output::print(&human::jobs_table(&jobs, Utc::now()))?,
    }
    Ok(0)
}

async fn get(mut clients: Clients, format: OutputFormat, job_id: String) -> Result<u8, CliError> {
    let job = clients
        .jobs
        .get_job(pb::GetJobRequest {
            job_id,
            view: pb::JobView::Full as i32,
        })
        .await
        .map_err(|status| clients.error(status))?
        .into_inner();
    match format {
        OutputFormat::Json => output::print_json(&JobView::from(&job))?,
        OutputFormat::Human => output::print(&human::job_details(&job, Utc::now()))?,
    }
    Ok(0)
}

async fn cancel(
    mut clients: Clients,
    format: OutputFormat,
    args: CancelArgs,
) -> Result<u8, CliError> {
    let request = pb::CancelJobRequest {
        job_id: args.job.id,
        reason: args.reason.unwrap_or_default(),
    };
    let job = clients
        .jobs
        .cancel_job(request)
        .await
        .map_err(|status| clients.error(status))?
        .into_inner();
    match format {
        OutputFormat::Json => output::print_json(&JobView::from(&job))?,
        OutputFormat::Human => {
            let state = job_state_name(job.state);
            let text = if job_state(job.state).is_some_and(|s| s.is_terminal()) {
                format!("job {} is {state}\n", job.id)
            } else {
                format!(
                    "cancellation requested: job {} is {state} until it stops\n",
                    job.id
                )
            };
            output::print(&text)?;
        }
    }
    Ok(0)
}

async fn logs(clients: Clients, format: OutputFormat, args: LogsArgs) -> Result<u8, CliError> {
    let mut follower = LogFollower::new(clients, args.job.id, args.from_sequence, args.follow);
    let mut writer = LogWriter::new(format);
    while let Some(line) = follower.next().await? {
        writer.write(&line)?;
        if !writer.stdout_open() {
            break;
        }
    }
    Ok(0)
}
