//! `hodei-server tokens …`: API tokens managed on the database directly, to create the first
//! admin token (nobody can call `TokenService` before one exists) or to recover when every
//! admin token is lost. Whoever can run this can read the database anyway.

use std::io::Write;

use anyhow::Context;
use hodei_domain::ApiToken;
use hodei_store::Store;

use crate::config::TokensCommand;

/// Recorded as the creator of tokens made here.
const CREATED_BY: &str = "hodei-server tokens create";

pub async fn run(command: &TokensCommand, store: &Store) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create { name, scopes, ttl } => {
            let name = name.trim();
            anyhow::ensure!(!name.is_empty(), "--name must not be empty");
            let expires_at = match ttl {
                Some(ttl) => Some(
                    chrono::Utc::now()
                        + chrono::Duration::from_std(*ttl).context("--ttl is too long")?,
                ),
                None => None,
            };
            let secret = ApiToken::generate();
            let token = store
                .insert_api_token(name, *scopes, secret.hash(), expires_at, CREATED_BY)
                .await
                .context("cannot store the token")?;
            eprintln!(
                "created API token {} for {:?} with scopes {}{}; it is printed below, this once",
                token.id,
                token.name,
                token.scopes,
                expires_at.map_or(String::new(), |at| format!(", valid until {at}")),
            );
            writeln!(std::io::stdout(), "{}", secret.expose()).context("cannot print the token")?;
        }
        TokensCommand::List => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ID\tNAME\tSCOPES\tCREATED\tEXPIRES\tREVOKED")?;
            for token in store
                .list_api_tokens()
                .await
                .context("cannot list tokens")?
            {
                let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
                    at.map_or_else(|| "-".to_string(), |at| at.to_rfc3339())
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    token.id,
                    token.name,
                    token.scopes,
                    token.created_at.to_rfc3339(),
                    when(token.expires_at),
                    when(token.revoked_at),
                )?;
            }
        }
        TokensCommand::Revoke { id } => {
            let token = store
                .revoke_api_token(*id)
                .await
                .context("cannot revoke the token")?
                .with_context(|| format!("no API token {id}"))?;
            eprintln!(
                "revoked API token {} ({:?}); servers refuse it within a second",
                token.id, token.name
            );
        }
    }
    Ok(())
}
