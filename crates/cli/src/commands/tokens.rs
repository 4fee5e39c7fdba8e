//! `hodei tokens create | list | revoke`: API tokens, through `TokenService` (the caller's token
//! needs the `tokens:admin` scope).
//!
//! `create` is the one place the CLI prints a token: on stdout, alone, so that
//! `TOKEN=$(hodei tokens create …)` captures exactly it; what it is for goes to stderr.

use chrono::Utc;
use hodei_proto::v1 as pb;

use crate::{
    args::{CreateTokenArgs, OutputFormat, TokensCommand},
    connection::Clients,
    error::CliError,
    output::{
        self, human,
        json::{CreatedTokenView, TokenView},
        time::{instant, rfc3339_seconds},
    },
};

pub async fn execute(
    clients: Clients,
    format: OutputFormat,
    command: TokensCommand,
) -> Result<u8, CliError> {
    match command {
        TokensCommand::Create(args) => create(clients, format, args).await,
        TokensCommand::List => list(clients, format).await,
        TokensCommand::Revoke(args) => revoke(clients, format, args.id).await,
    }
}

async fn create(
    mut clients: Clients,
    format: OutputFormat,
    args: CreateTokenArgs,
) -> Result<u8, CliError> {
    let request = pb::CreateTokenRequest {
        name: args.name,
        scopes: args.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        // parse_ttl caps the value at 100 years.
        ttl_seconds: args.ttl.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
    };
    let response = clients
        .tokens
        .create_token(request)
        .await
        .map_err(|status| clients.error(status))?
        .into_inner();
    let token = response.token.unwrap_or_default();
    match format {
        OutputFormat::Json => output::print_json(&CreatedTokenView {
            secret: &response.secret,
            token: TokenView::from(&token),
        })?,
        OutputFormat::Human => {
            let until = instant(token.expires_at.as_ref()).map_or_else(
                || "it does not expire".to_owned(),
                |at| format!("valid until {}", rfc3339_seconds(at)),
            );
            output::notice(&format!(
                "created API token {} for {:?} with scopes {}, {until}; it is printed on stdout \
                 this once: store it now (e.g. in HODEI_API_TOKEN)",
                token.id,
                token.name,
                token.scopes.join(",")
            ));
            output::print(&format!("{}\n", response.secret))?;
        }
    }
    Ok(0)
}

async fn list(mut clients: Clients, format: OutputFormat) -> Result<u8, CliError> {
    let tokens = clients
        .tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .map_err(|status| clients.error(status))?
        .into_inner()
        .tokens;
    match format {
        OutputFormat::Json => {
            output::print_json(&tokens.iter().map(TokenView::from).collect::<Vec<_>>())?;
        }
        OutputFormat::Human if tokens.is_empty() => output::notice("no API tokens"),
        OutputFormat::Human => output::print(&human::tokens_table(&tokens, Utc::now()))?,
    }
    Ok(0)
}

async fn revoke(mut clients: Clients, format: OutputFormat, id: String) -> Result<u8, CliError> {
    let token = clients
        .tokens
        .revoke_token(pb::RevokeTokenRequest { id })
        .await
        .map_err(|status| clients.error(status))?
        .into_inner();
    match format {
        OutputFormat::Json => output::print_json(&TokenView::from(&token))?,
        OutputFormat::Human => output::print(&format!(
            "revoked API token {} ({:?}): servers refuse it from now on\n",
            token.id, token.name
        ))?,
    }
    Ok(0)
}
