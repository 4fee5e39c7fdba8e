//! The command line: global flags, commands and their arguments (clap derive).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hodei_domain::{JobState, Scopes};

use crate::{
    secrets::{SecretArg, parse_secret_arg},
    states, units,
};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(Debug, Parser)]
#[command(
    name = "hodei",
    version,
    about = "Run shell commands as jobs on a Hodei Jobs server and follow their output",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
Credentials:
  Every call carries the API token from HODEI_API_TOKEN or, when that is unset or empty, from
  the `token` key of the config file. There is no flag for it: every user of the machine can
  read a command line with `ps`. Get a token from an administrator (`hodei tokens create`); the
  first one is made on the server's host with `hodei-server tokens create --name NAME --scopes
  all`.

Config file (--config, HODEI_CONFIG; else $XDG_CONFIG_HOME/hodei/config.toml, else
~/.config/hodei/config.toml), refused unless only you may read and write it (chmod 600):
  server = \"https://hodei.example.com:50051\"   # below --server and HODEI_SERVER
  token = \"hodei_…\"                           # below HODEI_API_TOKEN
  tls_ca = \"ca.pem\"                           # below --tls-ca; relative to the file

Examples:
  hodei run -- make test
  hodei run --timeout 10m --memory 512Mi -- 'cargo build 2>&1 | tail -n 20'
  DB_PASSWORD=$(pass db) hodei run --secret DB_PASSWORD -- ./migrate.sh
  hodei jobs list --state running
  hodei jobs logs -f <JOB_ID>
  export HODEI_API_TOKEN=$(hodei tokens create --name ci --scope jobs:submit --scope jobs:read)";

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Address of the Hodei server (http:// or https://); default: `server` in the config
    /// file, else http://127.0.0.1:50051
    #[arg(long, env = "HODEI_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,

    /// PEM file with the CA certificate that signed the server's certificate (https only;
    /// default: `tls_ca` in the config file, else the system's CAs)
    #[arg(long, env = "HODEI_TLS_CA", value_name = "PATH", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// Config file with the server, the API token and the CA (must be chmod 600); default:
    /// $XDG_CONFIG_HOME/hodei/config.toml, else ~/.config/hodei/config.toml
    #[arg(long, env = "HODEI_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

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
    /// Create, list and revoke API tokens (needs the tokens:admin scope)
    #[command(subcommand)]
    Tokens(TokensCommand),
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

const SECRET_LONG_HELP: &str = "\
Secret environment variable for the command (repeatable). The server never returns its value
(`hodei jobs get` shows the name only) and replaces it with *** in the job's output; it must be
one line of at least 4 bytes.
  NAME          the value of your own environment variable NAME: the safe way, e.g.
                DB_PASSWORD=$(pass db) hodei run --secret DB_PASSWORD -- ./migrate.sh
  NAME@FILE     the contents of FILE, one trailing newline removed
  NAME@-        standard input, one trailing newline removed (one secret at most)
  NAME=VALUE    the value itself. Warning: while hodei runs, every user of this machine can read
                it with `ps`, and your shell keeps it in its history";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Wall-clock limit (seconds, or with a unit: 90s, 5m, 2h); default: the server's
    #[arg(long, value_name = "SECS", value_parser = units::parse_seconds)]
    pub timeout: Option<u64>,

    /// Extra environment variable for the command (repeatable); shown by `hodei jobs get`,
    /// so use --secret for passwords and keys
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,

    /// Secret environment variable for the command (repeatable): NAME takes the value of your
    /// variable NAME, NAME@FILE reads a file, NAME@- standard input, NAME=VALUE is visible to
    /// `ps`
    #[arg(
        long = "secret",
        value_name = "NAME[@FILE|=VALUE]",
        value_parser = SecretArgParser,
        long_help = SECRET_LONG_HELP
    )]
    pub secrets: Vec<SecretArg>,

    /// CPU limit in thousandths of a core (1000 = one core; `500m` also accepted); at least
    /// 100, 0 for none
    #[arg(long, value_name = "MILLIS", value_parser = units::parse_cpu_millis)]
    pub cpu: Option<u32>,

    /// Memory limit with a unit: 512Mi, 1Gi (1024-based), 500M (1000-based), 16777216B
    /// (bytes); at least 16Mi, 0 for none
    #[arg(long, value_name = "SIZE", value_parser = units::parse_memory_limit)]
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
    /// At most this many workers (fetched a page of up to 1000 at a time)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print it, alone on stdout, this once
    #[command(long_about = CREATE_TOKEN_LONG_ABOUT)]
    Create(CreateTokenArgs),
    /// List every token: name, scopes, state, expiry (never the secrets)
    List,
    /// Revoke a token: every server refuses it from then on
    Revoke(RevokeTokenArgs),
}

const CREATE_TOKEN_LONG_ABOUT: &str = "\
Create a token and print it, alone on stdout, this once: the server keeps only its hash. What
it is (id, name, scopes, expiry) goes to stderr, so the token can be captured:
  export HODEI_API_TOKEN=$(hodei tokens create --name ci --scope jobs:submit --scope jobs:read)
With --output json, stdout is one object: {\"secret\": \"hodei_…\", \"token\": {…}}.";

#[derive(Debug, Args)]
pub struct CreateTokenArgs {
    /// Whom it acts for: the jobs it queues are owned by this name, and a token of the same
    /// name sees them too
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// What it may do (repeatable, or comma-separated), or `all`: jobs:submit (queue and cancel
    /// its jobs), jobs:read (read its jobs and their output), jobs:admin (read and cancel any
    /// job), workers:read, tokens:admin, metrics:read
    #[arg(
        long = "scope",
        visible_alias = "scopes",
        value_name = "SCOPE",
        value_parser = parse_scopes,
        required = true
    )]
    pub scopes: Vec<Scopes>,

    /// Lifetime (seconds, or with a unit: 12h, 30d); default: it does not expire
    #[arg(
        long = "expires-in",
        visible_alias = "ttl",
        value_name = "DURATION",
        value_parser = parse_ttl
    )]
    pub expires_in: Option<u64>,
}

impl CreateTokenArgs {
    /// Every `--scope` together.
    pub fn all_scopes(&self) -> Scopes {
        self.scopes.iter().flat_map(|s| s.iter()).collect()
    }
}

#[derive(Debug, Args)]
pub struct RevokeTokenArgs {
    /// The token's id or its name, as `hodei tokens list` shows them (a name must belong to one
    /// unrevoked token only)
    #[arg(value_name = "ID|NAME")]
    pub token: String,
}

/// `jobs:submit,jobs:read` (commas or spaces), or `all`.
fn parse_scopes(list: &str) -> Result<Scopes, String> {
    if list.trim() == "all" {
        return Ok(Scopes::all());
    }
    let scopes = Scopes::parse_list(list).map_err(|e| e.to_string())?;
    if scopes.is_empty() {
        return Err("give at least one scope, e.g. jobs:submit,jobs:read".to_owned());
    }
    Ok(scopes)
}

/// A token lifetime in whole seconds, at least one.
fn parse_ttl(input: &str) -> Result<u64, String> {
    let ttl = hodei_contract::duration::parse(input)?;
    match ttl.as_secs() {
        0 => Err(format!("{input:?} is shorter than a second")),
        secs => Ok(secs),
    }
}

/// `--secret`'s parser: a clap error that never repeats the argument, which may hold a value
/// (clap's own `invalid value '…'` would print it).
#[derive(Debug, Clone, Copy)]
struct SecretArgParser;

impl clap::builder::TypedValueParser for SecretArgParser {
    type Value = SecretArg;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SecretArg, clap::Error> {
        let refuse = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --secret: {message}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("it is not UTF-8 text".to_owned()))?;
        parse_secret_arg(text).map_err(refuse)
    }
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
