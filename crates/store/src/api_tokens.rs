//! API tokens: who may call the job API. Only their hashes are stored.

use chrono::{DateTime, Utc};
use hodei_domain::{ApiTokenInfo, Scopes, SecretHash, TokenId};
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(sqlx::FromRow)]
struct ApiTokenRow {
    id: Uuid,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<ApiTokenRow> for ApiTokenInfo {
    type Error = StoreError;

    fn try_from(row: ApiTokenRow) -> Result<Self, Self::Error> {
        let scopes = row
            .scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Scopes, _>>()
            .map_err(|e| StoreError::corrupt("api_tokens", format!("token {}: {e}", row.id)))?;
        Ok(ApiTokenInfo {
            id: TokenId::from_uuid(row.id),
            name: row.name,
            scopes,
            created_at: row.created_at,
            created_by: row.created_by,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        })
    }
}

/// A macro so that `concat!` can build the `&'static str` queries sqlx requires.
macro_rules! columns {
    () => {
        "id, name, scopes, created_at, created_by, expires_at, revoked_at"
    };
}

impl Store {
    /// Records a new token (its hash only).
    pub async fn insert_api_token(
        &self,
        name: &str,
        scopes: Scopes,
        hash: SecretHash,
        expires_at: Option<DateTime<Utc>>,
        created_by: &str,
    ) -> Result<ApiTokenInfo, StoreError> {
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let row: ApiTokenRow = sqlx::query_as(concat!(
            "INSERT INTO api_tokens (id, name, token_hash, scopes, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            columns!()
        ))
        .bind(TokenId::new().as_uuid())
        .bind(name)
        .bind(hash.as_bytes().as_slice())
        .bind(&scopes)
        .bind(expires_at)
        .bind(created_by)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// The token with this hash, valid or not (the caller checks [`ApiTokenInfo::is_valid_at`]
    /// against the database's clock, which this returns too).
    pub async fn api_token_by_hash(
        &self,
        hash: SecretHash,
    ) -> Result<Option<(ApiTokenInfo, DateTime<Utc>)>, StoreError> {
        let row: Option<(ApiTokenRow, DateTime<Utc>)> =
            sqlx::query_as::<_, ApiTokenRowWithNow>(concat!(
                "SELECT ",
                columns!(),
                ", now() AS db_now FROM api_tokens WHERE token_hash = $1"
            ))
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| (r.token, r.db_now));
        row.map(|(row, now)| Ok((row.try_into()?, now))).transpose()
    }

    /// Whether any token is valid now (neither revoked nor expired).
    pub async fn has_usable_api_token(&self) -> Result<bool, StoreError> {
        let (usable,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > now()))",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(usable)
    }

    /// Every token, newest first (revoked and expired ones too, so they can be audited).
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenInfo>, StoreError> {
        let rows: Vec<ApiTokenRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM api_tokens ORDER BY id DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ApiTokenInfo::try_from).collect()
    }

    /// Revokes a token; `None` if there is no such token. Revoking twice keeps the first time.
    pub async fn revoke_api_token(&self, id: TokenId) -> Result<Option<ApiTokenInfo>, StoreError> {
        let row: Option<ApiTokenRow> = sqlx::query_as(concat!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
             RETURNING ",
            columns!()
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiTokenInfo::try_from).transpose()
    }
}

#[derive(sqlx::FromRow)]
struct ApiTokenRowWithNow {
    #[sqlx(flatten)]
    token: ApiTokenRow,
    db_now: DateTime<Utc>,
}
