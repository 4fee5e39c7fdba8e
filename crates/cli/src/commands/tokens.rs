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
        TokensCommand::Revoke(args) => revoke(clients, format, &args.token).await,
    }
}

async fn create(
    mut clients: Clients,
    format: OutputFormat,
    args: CreateTokenArgs,
) -> Result<u8, CliError> {
    let scopes = args.all_scopes();
    let request = pb::CreateTokenRequest {
        name: args.name,
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        // Out of i64 range is far beyond what the server accepts; it says so.
        ttl_seconds: args
            .expires_in
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
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

async fn revoke(mut clients: Clients, format: OutputFormat, wanted: &str) -> Result<u8, CliError> {
    let id = token_id(&mut clients, wanted).await?;
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

/// The id of the token `wanted` names: a token's id, else the name of exactly one token that is
/// not revoked yet. The server revokes by id only, so a name is looked up in the list first.
async fn token_id(clients: &mut Clients, wanted: &str) -> Result<String, CliError> {
    let tokens = clients
        .tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .map_err(|status| clients.error(status))?
        .into_inner()
        .tokens;
    pick_token(&tokens, wanted)
}

fn pick_token(tokens: &[pb::ApiToken], wanted: &str) -> Result<String, CliError> {
    if let Some(token) = tokens.iter().find(|t| t.id == wanted) {
        return Ok(token.id.clone());
    }
    let named: Vec<&pb::ApiToken> = tokens
        .iter()
        .filter(|t| t.name == wanted && t.revoked_at.is_none())
        .collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(CliError::Server {
            code: tonic::Code::NotFound,
            message: format!(
                "no API token has the id or name {wanted:?} (or it is already revoked); \
                 `hodei tokens list` shows them"
            ),
        }),
        several => Err(CliError::Server {
            code: tonic::Code::FailedPrecondition,
            message: format!(
                "{} tokens are named {wanted:?}: revoke one by its id ({})",
                several.len(),
                several
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, name: &str, revoked: bool) -> pb::ApiToken {
        pb::ApiToken {
            id: id.into(),
            name: name.into(),
            revoked_at: revoked.then_some(hodei_proto::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_is_picked_by_id_or_by_the_name_of_one_unrevoked_token() {
        let tokens = [
            token("t-1", "ci", true),
            token("t-2", "ci", false),
            token("t-3", "bot", false),
            token("t-4", "bot", false),
        ];
        assert_eq!(pick_token(&tokens, "t-1").ok(), Some("t-1".to_owned()));
        assert_eq!(pick_token(&tokens, "ci").ok(), Some("t-2".to_owned()));
        let ambiguous = pick_token(&tokens, "bot").unwrap_err().to_string();
        assert!(ambiguous.contains("t-3, t-4"), "{ambiguous}");
        let unknown = pick_token(&tokens, "nobody").unwrap_err().to_string();
        assert!(unknown.contains("no API token"), "{unknown}");
    }
}
