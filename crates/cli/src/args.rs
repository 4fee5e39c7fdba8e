//! The command line: global flags, commands and their arguments (clap derive).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hodei_domain::JobState;

use crate::{states, units};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Debug, Parser)]
#[command(
    name = "hodei",
    version,
    about = "Run shell commands as jobs on a Hodei Jobs server and follow their output",
    after_help = "Examples:\n  \
        hodei run -- make test\n  \
        hodei run --timeout 10m --memory 512Mi -- 'cargo build 2>&1 | tail -n 20'\n  \
        hodei jobs list --state running\n  \
        hodei jobs logs -f <JOB_ID>"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Address of the Hodei server (http:// or https://)
    #[arg(
        long,
        env = "HODEI_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL",
        global = true
    )]
    pub server: String,

    /// PEM file with the CA certificate that signed the server's certificate (https only;
    /// without it the system's CAs are used)
    #[arg(long, env = "HODEI_TLS_CA", value_name = "PATH", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// Output format: human-readable text, or JSON for scripts
    #[arg(
        short,
        long,
        value_enum,
        default_value_t = OutputFormat::Human,
        value_name = "FORMAT",
        global = true
    )]
    pub output: OutputFormat,

    /// How long to wait for the connection to the server (seconds, or with a unit: 10s, 1m)
    #[arg(
        long = "timeout-connect",
        alias = "connect-timeout",
        default_value = "5s",
        value_parser = units::parse_duration,
        value_name = "DURATION",
        global = true
    )]
    pub timeout_connect: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a shell command as a job, print its output as it runs and exit with its exit code
    #[command(
        long_about = RUN_LONG_ABOUT,
        override_usage = "hodei run [OPTIONS] [--] <CMD>..."
    )]
    Run(RunArgs),
    /// List, inspect, cancel jobs and read their logs
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// List the workers the server knows
    #[command(subcommand)]
    Workers(WorkersCommand),
}

const RUN_LONG_ABOUT: &str = "\
Queue a shell command as a job, print its output as it runs and exit with its exit code.

The worker runs the command with `/bin/sh -c`. A single word after `--` is sent verbatim, so
shell syntax works: hodei run -- 'echo $HOME | wc -c'. Several words are quoted back as your
shell split them and joined with spaces: hodei run -- printf '%s\\n' \"a b\".

The job's stdout goes to stdout and its stderr to stderr, line by line as they are produced.
Exit status: the job's exit code; 124 if it timed out; 130 if it was cancelled; 1 if it failed
without an exit code or the server could not be reached; 2 for usage errors.

Ctrl-C once cancels the job and keeps printing until it has stopped; twice exits at once (the
cancellation has been requested).

With --output json every log line is one JSON object on its own line,
  {\"sequence\":1,\"stream\":\"stdout\",\"data\":\"...\",\"emitted_at\":\"...\"}
where `data` is the line decoded as UTF-8 (invalid bytes replaced by U+FFFD) and
`data_base64` (the exact bytes) is added only when the line is not valid UTF-8; the last line
is the job itself (it has `id` and `state`).";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Wall-clock limit (seconds, or with a unit: 90s, 5m, 2h); default: the server's
    #[arg(long, value_name = "SECS", value_parser = units::parse_seconds)]
    pub timeout: Option<u64>,

    /// Extra environment variable for the command (repeatable)
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,

    /// CPU limit in thousandths of a core (1000 = one core; `500m` also accepted)
    #[arg(long, value_name = "MILLIS", value_parser = units::parse_cpu_millis)]
    pub cpu: Option<u32>,

    /// Memory limit: bytes, or with a unit: 512Mi, 1Gi (1024-based), 500M (1000-based)
    #[arg(long, value_name = "SIZE", value_parser = units::parse_memory)]
    pub memory: Option<u64>,

    /// How many times an infrastructure failure (a lost worker) may re-queue the job;
    /// default: the server's
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,

    /// Print the job id and exit without waiting for the job
    #[arg(short, long)]
    pub detach: bool,

    /// The command: one shell line, or a program and its arguments
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first
    List(ListJobsArgs),
    /// Show one job: its command, state, exit code, reason and attempts
    Get(JobIdArg),
    /// Ask the server to stop a job
    Cancel(CancelArgs),
    /// Print a job's output (stdout lines to stdout, stderr lines to stderr)
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct ListJobsArgs {
    /// Only jobs in this state (repeatable or comma-separated): queued, assigned, running,
    /// succeeded, failed, cancelled, timed_out
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = states::parse_job_state)]
    pub states: Vec<JobState>,

    /// At most this many jobs
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct JobIdArg {
    /// The job's id, as printed by `hodei run --detach` or `hodei jobs list`
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub job: JobIdArg,
    /// Why, recorded with the job
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub job: JobIdArg,
    /// Keep printing new lines until the job ends
    #[arg(short, long)]
    pub follow: bool,
    /// First line to print (lines are numbered from 1)
    #[arg(long = "from", value_name = "N", default_value_t = 1)]
    pub from_sequence: u64,
}

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List workers (by default only those still alive)
    List(ListWorkersArgs),
}

#[derive(Debug, Args)]
pub struct ListWorkersArgs {
    /// Also show terminated, failed and lost workers
    #[arg(long)]
    pub all: bool,
    /// At most this many workers
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

/// `NAME=value`; the name is checked here so a typo fails before anything is queued.
fn parse_env_pair(input: &str) -> Result<(String, String), String> {
    let (name, value) = input
        .split_once('=')
        .ok_or_else(|| format!("{input:?} is not NAME=VALUE"))?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a valid variable name (letters, digits and _, not starting with a \
             digit)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_env_pair("A_1=x=y"),
            Ok(("A_1".to_owned(), "x=y".to_owned()))
        );
        assert_eq!(
            parse_env_pair("EMPTY="),
            Ok(("EMPTY".to_owned(), String::new()))
        );
        assert!(parse_env_pair("NOVALUE").is_err());
        assert!(parse_env_pair("1A=x").is_err());
        assert!(parse_env_pair("=x").is_err());
        assert!(parse_env_pair("A-B=x").is_err());
    }

    #[test]
    fn words_after_the_double_dash_are_the_command_even_if_they_look_like_flags() {
        let cli =
            Cli::try_parse_from(["hodei", "run", "--timeout", "5", "--", "ls", "-l", "--env"])
                .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.command, ["ls", "-l", "--env"]);
        assert_eq!(run.timeout, Some(5));
    }

    #[test]
    fn run_without_a_command_is_a_usage_error() {
        let err = Cli::try_parse_from(["hodei", "run"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
