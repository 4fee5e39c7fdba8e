//! `TokenService`: create, list and revoke API tokens (the layer requires `tokens:admin`).

use std::sync::Arc;

use hodei_contract::convert::api_token_to_proto;
use hodei_domain::{ApiToken, Scope, Scopes, TokenId};
use hodei_proto::v1::{self as pb, token_service_server::TokenService};
use hodei_store::Store;
use tonic::{Request, Response, Status};

use crate::{
    access::{Access, Caller},
    store_status,
};

/// Longest token name accepted.
const MAX_NAME_CHARS: usize = 128;

pub struct TokensService {
    store: Store,
    access: Arc<Access>,
}

impl TokensService {
    pub fn new(store: Store, access: Arc<Access>) -> Self {
        Self { store, access }
    }
}

#[tonic::async_trait]
impl TokenService for TokensService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let name = request.name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(format!(
                "a token needs a name of 1 to {MAX_NAME_CHARS} printable characters: the principal it acts as, e.g. \"ci\" or \"alice\""
            )));
        }
        let scopes = request
            .scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Scopes, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if scopes.is_empty() {
            return Err(Status::invalid_argument(
                "a token needs at least one scope: jobs:submit, jobs:read, jobs:admin, workers:read, tokens:admin, metrics:read",
            ));
        }
        let expires_at = match request.ttl_seconds {
            None => None,
            Some(secs) if secs > 0 => Some(
                chrono::Utc::now()
                    + chrono::Duration::try_seconds(secs).ok_or_else(|| {
                        Status::invalid_argument(format!("ttl_seconds {secs} is too large"))
                    })?,
            ),
            Some(secs) => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds must be positive, got {secs}"
                )));
            }
        };
        let secret = ApiToken::generate();
        let token = self
            .store
            .insert_api_token(name, scopes, secret.hash(), expires_at, caller.name())
            .await
            .map_err(store_status)?;
        tracing::info!(token = %token.id, name = token.name, scopes = %token.scopes, by = caller.name(), "API token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(api_token_to_proto(&token)),
            secret: secret.expose().to_string(),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.store.list_api_tokens().await.map_err(store_status)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(api_token_to_proto).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        let caller = Caller::of(&request)?;
        let id: TokenId = request
            .into_inner()
            .id
            .parse()
            .map_err(|e: hodei_domain::IdParseError| Status::invalid_argument(e.to_string()))?;
        let token = self
            .store
            .revoke_api_token(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no API token {id}")))?;
        self.access.revoked();
        tracing::info!(token = %token.id, name = token.name, by = caller.name(), "API token revoked");
        Ok(Response::new(api_token_to_proto(&token)))
    }
}
