//! The API token the CLI sends as `authorization: Bearer …`, and where it came from.
//!
//! It is read from `HODEI_API_TOKEN`, else from the `token` key of the config file
//! ([`crate::config_file`]), and never from a flag: every user of the machine can read a
//! process's arguments (`ps`). Without a token calls go out without the header; a server that
//! needs one answers `UNAUTHENTICATED`, which [`crate::connection`] turns into a sentence on how
//! to get one. The token's text is never printed, and errors about it name its source only.

use std::{ffi::OsString, fmt, path::PathBuf};

use hodei_contract::auth::bearer;
use hodei_domain::ApiToken;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::Interceptor,
};

use crate::{config_file::ConfigFile, error::CliError};

/// The environment variable holding the API token.
pub const TOKEN_ENV: &str = "HODEI_API_TOKEN";

/// Where the token was read from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Environment,
    ConfigFile(PathBuf),
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Environment => write!(f, "{TOKEN_ENV}"),
            TokenSource::ConfigFile(path) => write!(f, "the config file {}", path.display()),
        }
    }
}

/// The token to send, if any.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<(ApiToken, TokenSource)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `HODEI_API_TOKEN` (`env_token`) when set and not empty, else the config file's `token`.
    /// Surrounding whitespace is ignored (a token pasted with its newline).
    pub fn resolve(
        env_token: Option<OsString>,
        config: Option<&ConfigFile>,
    ) -> Result<Self, CliError> {
        let from_env = env_token.filter(|value| !value.is_empty()).map(|value| {
            let text = value.into_string().unwrap_or_default();
            (text, TokenSource::Environment)
        });
        let from_file = || {
            let config = config?;
            let text = config.token.clone().filter(|t| !t.trim().is_empty())?;
            Some((text, TokenSource::ConfigFile(config.path.clone())))
        };
        let Some((text, source)) = from_env.or_else(from_file) else {
            return Ok(Self::default());
        };
        match ApiToken::parse(text.trim()) {
            Ok(token) => Ok(Self {
                token: Some((token, source)),
            }),
            Err(_) => Err(CliError::MalformedToken { from: source }),
        }
    }

    /// Where the token came from; `None` when there is none.
    pub fn source(&self) -> Option<&TokenSource> {
        self.token.as_ref().map(|(_, source)| source)
    }

    /// The interceptor that adds the header to every call.
    pub fn authorization(&self) -> Authorization {
        let value = self.token.as_ref().and_then(|(token, _)| {
            // A parsed token is `hodei_` and hex digits, always a valid header value.
            let mut value: AsciiMetadataValue = MetadataValue::try_from(bearer(token)).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Authorization(value)
    }
}

/// Adds `authorization: Bearer <token>` to each request, when there is a token.
#[derive(Clone)]
pub struct Authorization(Option<AsciiMetadataValue>);

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Authorization(Bearer <redacted>)"
        } else {
            "Authorization(none)"
        })
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token: Option<&str>) -> ConfigFile {
        ConfigFile {
            path: "/home/u/.config/hodei/config.toml".into(),
            token: token.map(str::to_owned),
            ..Default::default()
        }
    }

    fn header(credentials: &Credentials) -> Option<String> {
        let request = credentials
            .authorization()
            .call(Request::new(()))
            .expect("never refuses");
        request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn the_environment_wins_over_the_file_and_an_empty_variable_counts_as_unset() {
        let a = ApiToken::generate();
        let b = ApiToken::generate();
        let both = Credentials::resolve(
            Some(format!("{}\n", a.expose()).into()),
            Some(&file(Some(b.expose()))),
        )
        .expect("valid");
        assert_eq!(both.source(), Some(&TokenSource::Environment));
        assert_eq!(header(&both), Some(format!("Bearer {}", a.expose())));

        let empty_env =
            Credentials::resolve(Some("".into()), Some(&file(Some(b.expose())))).expect("valid");
        assert_eq!(
            empty_env.source(),
            Some(&TokenSource::ConfigFile(file(None).path))
        );
        assert_eq!(header(&empty_env), Some(format!("Bearer {}", b.expose())));
    }

    #[test]
    fn without_a_token_no_header_is_sent() {
        let none = Credentials::resolve(None, Some(&file(None))).expect("no token is fine");
        assert_eq!(none.source(), None);
        assert_eq!(header(&none), None);
        assert_eq!(
            header(&Credentials::resolve(None, None).expect("fine")),
            None
        );
    }

    #[test]
    fn a_malformed_token_names_its_source_and_never_its_text() {
        let secret = "f".repeat(63);
        let err = Credentials::resolve(Some(format!("hodei_{secret}").into()), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the API token in HODEI_API_TOKEN is malformed: expected \"hodei_\" and 64 \
             hexadecimal characters, as `hodei tokens create` prints it"
        );
        let err = Credentials::resolve(None, Some(&file(Some(&secret)))).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/home/u/.config/hodei/config.toml"),
            "{message}"
        );
        assert!(!message.contains(&secret[..10]), "{message}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = ApiToken::generate();
        let credentials = Credentials::resolve(Some(token.expose().into()), None).expect("ok");
        let debug = format!("{credentials:?} {:?}", credentials.authorization());
        assert!(!debug.contains(&token.expose()[6..]), "{debug}");
    }
}
