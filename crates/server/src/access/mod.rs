//! Who is calling the client API, and what they may do.
//!
//! Every request passes [`AccessLayer`] before it reaches a service: the layer finds the
//! method's [`rules::Rule`], authenticates the caller (an API token in `authorization: Bearer`,
//! or a client certificate signed by the configured CA), refuses it if it lacks the rule's
//! scopes, and hands the [`Caller`] to the service in the request's extensions. Services then
//! check ownership: a principal sees and cancels only its own jobs unless it has `jobs:admin`,
//! and a job that is not its own is answered `NOT_FOUND`, exactly like a job that does not
//! exist. Worker agents authenticate in the agent service with their own credentials and are
//! never principals of this API; neither are jobs.

mod layer;
pub mod rules;

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hodei_contract::auth::parse_bearer;
use hodei_domain::{Principal, Scope, Scopes, SecretHash};
use hodei_store::Store;
use tokio::sync::watch;
use tonic::Status;

use crate::settings::AuthMode;

pub use layer::AccessLayer;
pub(crate) use layer::admit;

/// How long an answer about a token is reused. A revocation on this server takes effect at
/// once (the entry is dropped); one made through another server of the same database within
/// this long.
const CACHE_TTL: Duration = Duration::from_millis(500);
/// Entries kept at most; the cache is emptied when it would grow beyond (a flood of made-up
/// tokens must not grow the server's memory).
const CACHE_ENTRIES: usize = 10_000;

/// The caller of a client RPC, as services see it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off: every scope, and jobs get no owner.
    Anonymous,
    Principal {
        principal: Principal,
        /// The token it authenticated with (`None`: a client certificate), to re-check it
        /// while a long call lasts.
        token: Option<SecretHash>,
    },
}

impl Caller {
    /// The caller the access layer admitted; `INTERNAL` if the layer did not run (a wiring
    /// mistake, never the client's).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::internal("no caller: the access layer did not run"))
    }

    /// The owner recorded on jobs this caller queues.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Principal { principal, .. } => Some(&principal.name),
        }
    }

    /// The name used in logs and audit fields.
    pub fn name(&self) -> &str {
        self.owner().unwrap_or("anonymous")
    }

    pub fn may(&self, scope: Scope) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Principal { principal, .. } => principal.may(scope),
        }
    }

    pub fn can_read_job_of(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Principal { principal, .. } => principal.can_read_job_of(owner),
        }
    }

    pub fn can_cancel_job_of(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Principal { principal, .. } => principal.can_cancel_job_of(owner),
        }
    }

    /// Whose jobs a listing shows: `None` for every job (`jobs:admin`, or no authentication).
    pub fn listing_owner(&self) -> Option<&str> {
        match self {
            Caller::Principal { principal, .. } if !principal.may(Scope::JobsAdmin) => {
                Some(&principal.name)
            }
            _ => None,
        }
    }
}

/// The answer about one token, as cached.
type TokenAnswer = Result<Principal, Status>;

/// Authenticates callers of the client API.
pub struct Access {
    mode: AuthMode,
    store: Store,
    /// What a client certificate signed by the configured CA may do.
    certificate_scopes: Scopes,
    cache: Mutex<HashMap<SecretHash, (TokenAnswer, Instant)>>,
    /// Ticks when a token is revoked through this server: long calls re-check theirs.
    revocations: watch::Sender<u64>,
}

impl Access {
    pub fn new(mode: AuthMode, store: Store, certificate_scopes: Scopes) -> Self {
        Self {
            mode,
            store,
            certificate_scopes,
            cache: Mutex::default(),
            revocations: watch::channel(0).0,
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent this `authorization` header value (and, over mutual TLS, a certificate with
    /// this subject).
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        certificate_subject: Option<String>,
    ) -> Result<Caller, Status> {
        if self.mode == AuthMode::Off {
            return Ok(Caller::Anonymous);
        }
        match authorization {
            Some(value) => {
                let token =
                    parse_bearer(value).map_err(|e| Status::unauthenticated(e.to_string()))?;
                let hash = token.hash();
                let principal = self.principal_for(hash).await?;
                Ok(Caller::Principal {
                    principal,
                    token: Some(hash),
                })
            }
            None => match certificate_subject {
                Some(subject) => Ok(Caller::Principal {
                    principal: Principal {
                        name: format!("cert:{subject}"),
                        scopes: self.certificate_scopes,
                    },
                    token: None,
                }),
                None => Err(Status::unauthenticated(
                    "missing `authorization: Bearer <API token>`: create a token with \
                     `hodei tokens create` (or `hodei-server tokens create` on the server) and \
                     give it to the client in HODEI_API_TOKEN",
                )),
            },
        }
    }

    /// Whether the token a long call authenticated with is still valid.
    pub async fn recheck(&self, caller: &Caller) -> Result<(), Status> {
        match caller {
            Caller::Principal {
                token: Some(hash), ..
            } => self.principal_for(*hash).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// A token was revoked through this server: nothing cached is trusted any more, and long
    /// calls re-check their tokens.
    pub fn revoked(&self) {
        self.lock_cache().clear();
        self.revocations.send_modify(|n| *n += 1);
    }

    /// Ticks on every revocation through this server.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<SecretHash, (TokenAnswer, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn principal_for(&self, hash: SecretHash) -> Result<Principal, Status> {
        if let Some((answer, at)) = self.lock_cache().get(&hash)
            && at.elapsed() < CACHE_TTL
        {
            return answer.clone();
        }
        let answer = match self.store.api_token_by_hash(hash).await {
            Ok(None) => Err(Status::unauthenticated("unknown API token")),
            Ok(Some((token, _))) if token.revoked_at.is_some() => Err(Status::unauthenticated(
                format!("API token {:?} ({}) was revoked", token.name, token.id),
            )),
            Ok(Some((token, now))) if !token.is_valid_at(now) => Err(Status::unauthenticated(
                format!("API token {:?} ({}) has expired", token.name, token.id),
            )),
            Ok(Some((token, _))) => Ok(Principal {
                name: token.name,
                scopes: token.scopes,
            }),
            // Not cached: the next call asks again.
            Err(e) => return Err(crate::store_status(e)),
        };
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(hash, (answer.clone(), Instant::now()));
        answer
    }
}
