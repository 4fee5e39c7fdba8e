//! Who may do what through the job API: API tokens, their scopes, and the principal a request
//! acts as. Workers authenticate differently (their one-time token, then their session
//! credential) and are never principals of this API; neither are jobs.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::{SecretHash, TokenId};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Queue jobs, and cancel its own.
    JobsSubmit,
    /// Read its own jobs and their output.
    JobsRead,
    /// Read and cancel any job.
    JobsAdmin,
    /// List workers.
    WorkersRead,
    /// Create, list and revoke API tokens.
    TokensAdmin,
    /// Scrape `/metrics` when it is served on a non-loopback address.
    MetricsRead,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::JobsSubmit,
        Scope::JobsRead,
        Scope::JobsAdmin,
        Scope::WorkersRead,
        Scope::TokensAdmin,
        Scope::MetricsRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::JobsSubmit => "jobs:submit",
            Scope::JobsRead => "jobs:read",
            Scope::JobsAdmin => "jobs:admin",
            Scope::WorkersRead => "workers:read",
            Scope::TokensAdmin => "tokens:admin",
            Scope::MetricsRead => "metrics:read",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}; one of: jobs:submit, jobs:read, jobs:admin, workers:read, tokens:admin, metrics:read"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let word = s.trim();
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == word)
            .ok_or_else(|| UnknownScope(word.to_string()))
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);

    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// `jobs:submit,jobs:read` (commas and/or spaces); empty words are ignored.
    pub fn parse_list(list: &str) -> Result<Self, UnknownScope> {
        list.split([',', ' '])
            .filter(|w| !w.trim().is_empty())
            .map(str::parse::<Scope>)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&words.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

const API_TOKEN_PREFIX: &str = "hodei_";
const API_TOKEN_HEX: usize = 64;

/// A secret API token: `hodei_` and 64 hex digits (256 random bits). The prefix lets secret
/// scanners recognise a leaked token. Shown once at creation, stored only as a [`SecretHash`];
/// `Debug` never prints it and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

/// A string that cannot be an API token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed API token: expected \"hodei_\" and 64 hexadecimal characters")]
pub struct MalformedApiToken;

impl ApiToken {
    /// A fresh random token from the operating system's CSPRNG.
    ///
    /// # Panics
    /// If the operating system cannot provide randomness, which leaves no safe way to continue.
    pub fn generate() -> Self {
        let mut bytes = [0u8; API_TOKEN_HEX / 2];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        Self(format!("{API_TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    pub fn parse(s: &str) -> Result<Self, MalformedApiToken> {
        let hex = s.strip_prefix(API_TOKEN_PREFIX).ok_or(MalformedApiToken)?;
        if hex.len() != API_TOKEN_HEX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MalformedApiToken);
        }
        Ok(Self(format!(
            "{API_TOKEN_PREFIX}{}",
            hex.to_ascii_lowercase()
        )))
    }

    /// The secret itself, to show its owner once. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored at rest.
    pub fn hash(&self) -> SecretHash {
        SecretHash::from_bytes(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Who a request acts as: the name of an API token (or of a client certificate), and what it
/// may do. Jobs record their principal's name; "its own jobs" are the jobs queued under the
/// same name, so a token can be replaced by another of the same name without losing its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scopes: Scopes,
}

impl Principal {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// Whether this principal may see a job queued by `owner` (`None`: queued while
    /// authentication was off, visible to every reader).
    pub fn can_read_job_of(&self, owner: Option<&str>) -> bool {
        self.may(Scope::JobsAdmin)
            || (self.may(Scope::JobsRead) || self.may(Scope::JobsSubmit))
                && owner.is_none_or(|owner| owner == self.name)
    }

    /// Whether this principal may cancel a job queued by `owner`.
    pub fn can_cancel_job_of(&self, owner: Option<&str>) -> bool {
        self.may(Scope::JobsAdmin)
            || self.may(Scope::JobsSubmit) && owner.is_none_or(|owner| owner == self.name)
    }
}

/// An API token as stored and listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenInfo {
    pub id: TokenId,
    pub name: String,
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiTokenInfo {
    /// Whether a request with this token is accepted at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_words() {
        let scopes = Scopes::parse_list("jobs:submit, jobs:read").unwrap();
        assert!(scopes.contains(Scope::JobsSubmit) && scopes.contains(Scope::JobsRead));
        assert!(!scopes.contains(Scope::JobsAdmin));
        assert_eq!(scopes.to_string(), "jobs:submit,jobs:read");
        assert_eq!(
            Scopes::parse_list(&Scopes::all().to_string()),
            Ok(Scopes::all())
        );
        let err = Scopes::parse_list("jobs:write").unwrap_err();
        assert!(err.to_string().contains("jobs:write"), "{err}");
    }

    #[test]
    fn api_tokens_have_a_prefix_and_never_print() {
        let token = ApiToken::generate();
        assert!(token.expose().starts_with("hodei_"));
        assert_eq!(token.expose().len(), 6 + 64);
        assert_eq!(ApiToken::parse(token.expose()), Ok(token.clone()));
        assert_eq!(
            ApiToken::parse(
                &token
                    .expose()
                    .to_ascii_uppercase()
                    .replacen("HODEI_", "hodei_", 1)
            )
            .map(|t| t.hash()),
            Ok(token.hash())
        );
        assert_eq!(format!("{token:?}"), "ApiToken(<redacted>)");
        for bad in [
            "",
            "hodei_",
            "hodei_xyz",
            &token.expose()[6..],
            "Bearer hodei_00",
        ] {
            assert_eq!(ApiToken::parse(bad), Err(MalformedApiToken), "{bad}");
        }
    }

    #[test]
    fn a_reader_sees_its_own_jobs_and_an_admin_every_job() {
        let alice = Principal {
            name: "alice".into(),
            scopes: Scopes::parse_list("jobs:submit,jobs:read").unwrap(),
        };
        let auditor = Principal {
            name: "audit".into(),
            scopes: Scopes::parse_list("jobs:admin").unwrap(),
        };
        let watcher = Principal {
            name: "watch".into(),
            scopes: Scopes::parse_list("workers:read").unwrap(),
        };
        assert!(alice.can_read_job_of(Some("alice")) && alice.can_cancel_job_of(Some("alice")));
        assert!(!alice.can_read_job_of(Some("bob")) && !alice.can_cancel_job_of(Some("bob")));
        assert!(auditor.can_read_job_of(Some("bob")) && auditor.can_cancel_job_of(Some("bob")));
        assert!(!watcher.can_read_job_of(Some("watch")) && !watcher.can_read_job_of(None));
    }
}
