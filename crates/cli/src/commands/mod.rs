//! One module per command; each returns the process exit code or the error to report.

mod jobs;
mod run;
mod tokens;
mod workers;

use std::ffi::OsString;

use crate::{
    args::{Cli, Command, DEFAULT_SERVER, GlobalArgs},
    config_file::{self, ConfigFile},
    connection::{Clients, ConnectOptions},
    credentials::{Credentials, TOKEN_ENV},
    error::CliError,
    secrets,
};

/// Reads the settings (config file, token), connects to the server and runs the command.
/// Everything that can be checked without the server (the config file, the token's form,
/// `--secret` sources) is checked before connecting.
pub async fn execute(cli: Cli) -> Result<u8, CliError> {
    let env = |name: &str| std::env::var_os(name);
    let format = cli.global.output;
    let options = connect_options(cli.global, env)?;
    match cli.command {
        Command::Run(args) => {
            let secrets = secrets::resolve(&args.secrets, env, secrets::stdin())?;
            let clients = Clients::connect(&options).await?;
            run::run(clients, format, args, secrets).await
        }
        Command::Jobs(command) => {
            jobs::execute(Clients::connect(&options).await?, format, command).await
        }
        Command::Workers(command) => {
            workers::execute(Clients::connect(&options).await?, format, command).await
        }
        Command::Tokens(command) => {
            tokens::execute(Clients::connect(&options).await?, format, command).await
        }
    }
}

/// Flags and `HODEI_*` variables first, then the config file, then the defaults.
fn connect_options(
    global: GlobalArgs,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<ConnectOptions, CliError> {
    let location = config_file::locate(global.config, &env);
    let config: Option<ConfigFile> = match &location {
        Some(location) => config_file::load(location)?,
        None => None,
    };
    let credentials = Credentials::resolve(env(TOKEN_ENV), config.as_ref())?;
    let config = config.unwrap_or_default();
    Ok(ConnectOptions {
        server: global
            .server
            .filter(|s| !s.is_empty())
            .or(config.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        tls_ca: global
            .tls_ca
            .filter(|p| !p.as_os_str().is_empty())
            .or(config.tls_ca),
        connect_timeout: global.timeout_connect,
        credentials,
        config_hint: location.map(|l| l.path),
    })
}
