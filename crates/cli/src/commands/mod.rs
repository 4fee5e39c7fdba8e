//! One module per command; each returns the process exit code or the error to report.

mod jobs;
mod run;
mod workers;

use crate::{
    args::{Cli, Command},
    connection::{Clients, ConnectOptions},
    error::CliError,
};

/// Connects to the server and runs the command.
pub async fn execute(cli: Cli) -> Result<u8, CliError> {
    let options = ConnectOptions {
        server: cli.global.server,
        tls_ca: cli.global.tls_ca,
        connect_timeout: cli.global.timeout_connect,
    };
    let clients = Clients::connect(&options).await?;
    let format = cli.global.output;
    match cli.command {
        Command::Run(args) => run::run(clients, format, args).await,
        Command::Jobs(command) => jobs::execute(clients, format, command).await,
        Command::Workers(command) => workers::execute(clients, format, command).await,
    }
}
