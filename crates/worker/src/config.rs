//! The worker's configuration: `HODEI_*` environment variables (or the equivalent flags),
//! checked once at start-up so that a mistake is one sentence naming the variable, and exit 2.
//! The variables a provider sets are the contract's ([`hodei_contract::env`]); the others are the
//! worker's own.

use std::{ffi::OsString, fmt, path::PathBuf, time::Duration};

use clap::Parser;
use hodei_contract::env;
use tonic::codegen::http::Uri;

use crate::token_file::{self, TokenSource};

/// Path of a PEM file with a CA to trust for `https://` (the providers pass the CA itself, as
/// [`env::TLS_CA_PEM`]; this one is for a worker someone starts by hand).
pub const ENV_TLS_CA: &str = "HODEI_TLS_CA";
/// How long to keep trying to reach the server and register.
pub const ENV_REGISTER_TIMEOUT_SECS: &str = "HODEI_REGISTER_TIMEOUT_SECS";

const DEFAULT_REGISTER_TIMEOUT_SECS: u64 = 60;
/// Default of [`env::RECONNECT_GRACE`].
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(300);

/// Command line and environment as clap sees them; everything optional so that
/// [`Config::from_args`] can name the missing variable itself.
#[derive(Debug, Parser)]
#[command(
    name = "hodei-worker",
    version,
    about = "The Hodei worker agent: registers with the server, runs the jobs it is given and \
             streams their output. Normally started by a provider, configured by HODEI_* variables."
)]
pub struct Args {
    /// One-time registration token (prefer the variable: flags are visible in `ps`).
    #[arg(long, env = env::TOKEN, value_name = env::TOKEN, hide_env_values = true)]
    token: Option<OsString>,
    /// File holding the one-time registration token; removed once read (if a regular file).
    #[arg(long, env = env::TOKEN_FILE, value_name = env::TOKEN_FILE)]
    token_file: Option<PathBuf>,
    /// Server address, e.g. http://10.0.0.1:50051 or https://hodei.example:50051.
    #[arg(long, env = env::SERVER, value_name = env::SERVER)]
    server: Option<OsString>,
    /// This worker's id, as issued by the provider.
    #[arg(long, env = env::WORKER_ID, value_name = env::WORKER_ID)]
    worker_id: Option<OsString>,
    /// PEM text of a CA certificate to trust for https://.
    #[arg(long, env = env::TLS_CA_PEM, value_name = env::TLS_CA_PEM, hide_env_values = true)]
    tls_ca_pem: Option<OsString>,
    /// Path of a PEM file with a CA certificate to trust for https://.
    #[arg(long, env = ENV_TLS_CA, value_name = ENV_TLS_CA)]
    tls_ca: Option<PathBuf>,
    /// Seconds to keep retrying while the server is unreachable [default: 60].
    #[arg(long, env = ENV_REGISTER_TIMEOUT_SECS, value_name = ENV_REGISTER_TIMEOUT_SECS)]
    register_timeout_secs: Option<OsString>,
    /// How long to keep the running job while no server can be reached (e.g. 5m) [default: 5m].
    #[arg(long, env = env::RECONNECT_GRACE, value_name = env::RECONNECT_GRACE)]
    reconnect_grace: Option<OsString>,
    /// Bytes of output kept until the server says they are stored [default: 4 MiB, at least
    /// 2 MiB].
    #[arg(long, env = env::RESUME_BUFFER_BYTES, value_name = env::RESUME_BUFFER_BYTES)]
    resume_buffer_bytes: Option<OsString>,
    /// A label of the provider that started this worker, which finds it again by its command
    /// line (readable in /proc even though the worker is not dumpable). The worker ignores it.
    #[arg(long = "label", value_name = "NAME=VALUE", hide = true)]
    labels: Vec<OsString>,
}

/// A validated configuration. Its `Debug` and `Display` never show the token or the CA.
#[derive(Clone)]
pub struct Config {
    pub server: String,
    pub worker_id: String,
    pub token: Token,
    pub token_source: TokenSource,
    pub tls_ca: Option<TlsCa>,
    pub register_timeout: Duration,
    /// How long the worker keeps its job while it cannot reach any server (the server's value
    /// from the registration wins when it is smaller).
    pub reconnect_grace: Duration,
    /// Bound of the output kept until the server acknowledges it.
    pub resume_buffer_bytes: usize,
}

/// The registration token; shown as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the registration request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A CA certificate to trust, and where it came from (for the start-up summary).
#[derive(Clone)]
pub struct TlsCa {
    pub pem: Vec<u8>,
    pub source: String,
}

impl fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCa")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is not set: {hint}")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    #[error(
        "{server}={value:?} is not a server address: {reason}; \
         write it like http://10.0.0.1:50051 or https://hodei.example:50051",
        server = env::SERVER
    )]
    InvalidServer { value: String, reason: String },
    #[error("{ENV_REGISTER_TIMEOUT_SECS}={value:?} is not a whole number of seconds")]
    InvalidRegisterTimeout { value: String },
    #[error("{var}={value:?}: {reason}", var = env::RECONNECT_GRACE)]
    InvalidReconnectGrace { value: String, reason: String },
    #[error(
        "{var}={value:?} is not a number of bytes of at least {min}",
        var = env::RESUME_BUFFER_BYTES,
        min = crate::journal::MIN_CAPACITY
    )]
    InvalidResumeBuffer { value: String },
    #[error("{pem} and {ENV_TLS_CA} are both set; set only one of them", pem = env::TLS_CA_PEM)]
    TwoCas,
    #[error("{token} and {file} are both set; set only one of them", token = env::TOKEN, file = env::TOKEN_FILE)]
    TwoTokens,
    #[error("{var}={path}: cannot read the token file: {source}", var = env::TOKEN_FILE)]
    ReadToken {
        path: String,
        source: std::io::Error,
    },
    #[error("{var}={path} holds no token: the file is empty", var = env::TOKEN_FILE)]
    EmptyTokenFile { path: String },
    #[error("{ENV_TLS_CA}={path}: cannot read the CA file: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("{var} is not valid UTF-8")]
    NotUtf8 { var: &'static str },
    #[error("{var} does not hold a PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)")]
    NotPem { var: &'static str },
}

impl Config {
    /// Reads the process's flags and environment. `--help` and `--version` print and exit here.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_args(Args::parse())
    }

    /// Checks everything, and only then reads the token, so that a token file is not consumed
    /// by a worker that cannot run anyway.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let token_variable = text(args.token, env::TOKEN)?;
        let token_file = args.token_file.filter(|path| !path.as_os_str().is_empty());
        let server = required(
            text(args.server, env::SERVER)?,
            env::SERVER,
            "it must hold the server's address, e.g. http://10.0.0.1:50051",
        )?;
        check_server(&server)?;
        let worker_id = required(
            text(args.worker_id, env::WORKER_ID)?,
            env::WORKER_ID,
            "it must hold the worker id issued by the provider together with the token",
        )?;
        let register_timeout = text(args.register_timeout_secs, ENV_REGISTER_TIMEOUT_SECS)?;
        let register_timeout = match register_timeout.as_deref().map(str::trim) {
            None | Some("") => Duration::from_secs(DEFAULT_REGISTER_TIMEOUT_SECS),
            Some(value) => value.parse().map(Duration::from_secs).map_err(|_| {
                ConfigError::InvalidRegisterTimeout {
                    value: value.to_string(),
                }
            })?,
        };
        let reconnect_grace = match text(args.reconnect_grace, env::RECONNECT_GRACE)?
            .as_deref()
            .map(str::trim)
        {
            None | Some("") => DEFAULT_RECONNECT_GRACE,
            Some(value) => hodei_contract::duration::parse(value).map_err(|reason| {
                ConfigError::InvalidReconnectGrace {
                    value: value.to_string(),
                    reason,
                }
            })?,
        };
        let resume_buffer_bytes = match text(args.resume_buffer_bytes, env::RESUME_BUFFER_BYTES)?
            .as_deref()
            .map(str::trim)
        {
            None | Some("") => crate::journal::DEFAULT_CAPACITY,
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|bytes| *bytes >= crate::journal::MIN_CAPACITY)
                .ok_or_else(|| ConfigError::InvalidResumeBuffer {
                    value: value.to_string(),
                })?,
        };
        let tls_ca_pem =
            text(args.tls_ca_pem, env::TLS_CA_PEM)?.filter(|pem| !pem.trim().is_empty());
        let tls_ca_path = args.tls_ca.filter(|path| !path.as_os_str().is_empty());
        let tls_ca = match (tls_ca_pem, tls_ca_path) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoCas),
            (Some(pem), None) => Some(TlsCa {
                pem: checked_pem(pem.into_bytes(), env::TLS_CA_PEM)?,
                source: env::TLS_CA_PEM.to_string(),
            }),
            (None, Some(path)) => {
                let pem = std::fs::read(&path).map_err(|source| ConfigError::ReadCa {
                    path: path.display().to_string(),
                    source,
                })?;
                Some(TlsCa {
                    pem: checked_pem(pem, ENV_TLS_CA)?,
                    source: path.display().to_string(),
                })
            }
            (None, None) => None,
        };
        let (token, token_source) = token_from(token_variable, token_file.as_deref())?;
        Ok(Self {
            server,
            worker_id,
            token: Token(token),
            token_source,
            tls_ca,
            register_timeout,
            reconnect_grace,
            resume_buffer_bytes,
        })
    }

    pub fn uses_tls(&self) -> bool {
        self.server.starts_with("https://")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("worker_id", &self.worker_id)
            .field("token", &self.token)
            .field("token_source", &self.token_source)
            .field("tls_ca", &self.tls_ca)
            .field("register_timeout", &self.register_timeout)
            .field("reconnect_grace", &self.reconnect_grace)
            .field("resume_buffer_bytes", &self.resume_buffer_bytes)
            .finish()
    }
}

/// The start-up summary: everything but the secrets.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = match (&self.tls_ca, self.uses_tls()) {
            (_, false) => "off".to_string(),
            (Some(ca), true) => format!("CA from {}", ca.source),
            (None, true) => "system CAs".to_string(),
        };
        write!(
            f,
            "server={} worker_id={} tls={tls} register_timeout={}s reconnect_grace={}s \
             token=<redacted> from {}",
            self.server,
            self.worker_id,
            self.register_timeout.as_secs(),
            self.reconnect_grace.as_secs_f64(),
            self.token_source
        )
    }
}

/// The token from [`env::TOKEN`] or from [`env::TOKEN_FILE`], which must not both be set.
fn token_from(
    variable: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<(String, TokenSource), ConfigError> {
    let variable = variable.filter(|token| !token.trim().is_empty());
    match (variable, file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoTokens),
        (None, Some(file)) => token_file::take(file),
        (variable, None) => Ok((
            required(
                variable,
                env::TOKEN,
                "it must hold the one-time registration token issued for this worker by its \
                 provider (or set HODEI_TOKEN_FILE to a file holding it)",
            )?,
            TokenSource::Variable,
        )),
    }
}

/// Variables are read as raw bytes so that non-UTF-8 is reported naming the variable.
fn text(value: Option<OsString>, var: &'static str) -> Result<Option<String>, ConfigError> {
    value
        .map(|value| {
            value
                .into_string()
                .map_err(|_| ConfigError::NotUtf8 { var })
        })
        .transpose()
}

fn required(
    value: Option<String>,
    var: &'static str,
    hint: &'static str,
) -> Result<String, ConfigError> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => Err(ConfigError::Missing { var, hint }),
    }
}

fn check_server(value: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidServer {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = value.parse().map_err(|_| invalid("it is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("it must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    Ok(())
}

fn checked_pem(pem: Vec<u8>, var: &'static str) -> Result<Vec<u8>, ConfigError> {
    let marker = b"-----BEGIN CERTIFICATE-----";
    if pem.windows(marker.len()).any(|window| window == marker) {
        Ok(pem)
    } else {
        Err(ConfigError::NotPem { var })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn args(pairs: &[(&str, &str)]) -> Args {
        let mut argv = vec!["hodei-worker".to_string()];
        for (flag, value) in pairs {
            argv.push(format!("--{flag}={value}"));
        }
        Args::try_parse_from(argv).expect("flags parse")
    }

    fn complete() -> Vec<(&'static str, &'static str)> {
        vec![
            ("token", "secret-token"),
            ("server", "http://10.0.0.1:50051"),
            ("worker-id", "w-1"),
        ]
    }

    fn with(extra: &[(&str, &str)]) -> Args {
        let pairs: Vec<(&str, &str)> = complete()
            .into_iter()
            .filter(|(flag, _)| !extra.iter().any(|(other, _)| other == flag))
            .chain(extra.iter().copied())
            .collect();
        args(&pairs)
    }

    fn without(flag: &str) -> Args {
        let pairs: Vec<_> = complete().into_iter().filter(|(f, _)| *f != flag).collect();
        args(&pairs)
    }

    #[test]
    fn a_complete_configuration_has_the_default_register_timeout_and_no_tls() {
        let config = Config::from_args(with(&[])).unwrap();
        assert_eq!(config.server, "http://10.0.0.1:50051");
        assert_eq!(config.worker_id, "w-1");
        assert_eq!(config.token.expose(), "secret-token");
        assert_eq!(config.register_timeout, Duration::from_secs(60));
        assert!(config.tls_ca.is_none());
        assert!(!config.uses_tls());
    }

    #[test]
    fn each_missing_required_variable_is_named() {
        for (flag, var) in [
            ("token", env::TOKEN),
            ("server", env::SERVER),
            ("worker-id", env::WORKER_ID),
        ] {
            let err = Config::from_args(without(flag)).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{var} is not set")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_rejected_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let argv = [
            OsString::from("hodei-worker"),
            OsString::from("--token=t"),
            OsString::from("--server=http://h:1"),
            OsString::from_vec(b"--worker-id=\xff".to_vec()),
        ];
        let err = Config::from_args(Args::try_parse_from(argv).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "HODEI_WORKER_ID is not valid UTF-8");
    }

    #[test]
    fn a_blank_token_counts_as_missing() {
        let err = Config::from_args(with(&[("token", "  ")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: env::TOKEN,
                ..
            }
        ));
    }

    #[test]
    fn a_server_without_scheme_is_rejected_naming_the_variable() {
        let err = Config::from_args(with(&[("server", "10.0.0.1:50051")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("HODEI_SERVER=\"10.0.0.1:50051\""),
            "{text}"
        );
        assert!(text.contains("http://"), "{text}");
    }

    #[test]
    fn a_non_numeric_register_timeout_is_rejected_naming_the_variable() {
        let err = Config::from_args(with(&[("register-timeout-secs", "soon")])).unwrap_err();
        assert!(
            err.to_string().starts_with("HODEI_REGISTER_TIMEOUT_SECS="),
            "{err}"
        );
        let config = Config::from_args(with(&[("register-timeout-secs", "5")])).unwrap();
        assert_eq!(config.register_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_ca_is_taken_from_pem_text_or_from_a_file_but_not_both() {
        let config = Config::from_args(with(&[("tls-ca-pem", PEM)])).unwrap();
        assert_eq!(config.tls_ca.unwrap().pem, PEM.as_bytes());

        let dir = std::env::temp_dir().join(format!("hodei-worker-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, PEM).unwrap();
        let path = file.to_str().unwrap();
        let config = Config::from_args(with(&[("tls-ca", path)])).unwrap();
        assert_eq!(config.tls_ca.unwrap().source, path);

        let err = Config::from_args(with(&[("tls-ca", path), ("tls-ca-pem", PEM)])).unwrap_err();
        assert!(matches!(err, ConfigError::TwoCas), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_that_is_not_pem_or_not_readable_is_rejected_naming_the_variable() {
        let err = Config::from_args(with(&[("tls-ca-pem", "not a certificate")])).unwrap_err();
        assert!(
            err.to_string().starts_with("HODEI_TLS_CA_PEM does not"),
            "{err}"
        );
        let err = Config::from_args(with(&[("tls-ca", "/nonexistent/ca.pem")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("HODEI_TLS_CA=/nonexistent/ca.pem: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn the_token_can_come_from_a_file_which_is_then_removed_but_not_together_with_the_variable() {
        let dir = std::env::temp_dir().join(format!("hodei-worker-tf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let path = file.to_str().unwrap();

        std::fs::write(&file, "token-from-a-file\n").unwrap();
        let err = Config::from_args(with(&[("token-file", path)])).unwrap_err();
        assert!(matches!(err, ConfigError::TwoTokens), "{err}");
        assert!(
            file.exists(),
            "a refused configuration must not consume the token file"
        );

        let err = Config::from_args(args(&[
            ("token-file", path),
            ("server", "not a url"),
            ("worker-id", "w-1"),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidServer { .. }), "{err}");
        assert!(
            file.exists(),
            "a refused configuration must not consume the token file"
        );

        let config = Config::from_args(args(&[
            ("token-file", path),
            ("server", "http://10.0.0.1:50051"),
            ("worker-id", "w-1"),
        ]))
        .unwrap();
        assert_eq!(config.token.expose(), "token-from-a-file");
        assert!(!file.exists(), "the token file was not removed");
        assert!(
            config.to_string().ends_with(&format!(
                "token=<redacted> from HODEI_TOKEN_FILE={path} (removed)"
            )),
            "{config}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn provider_labels_on_the_command_line_are_accepted_and_ignored() {
        let config = Config::from_args(with(&[("label", "HODEI_INSTANCE=ci")])).unwrap();
        assert_eq!(config.worker_id, "w-1");
    }

    #[test]
    fn neither_debug_nor_display_shows_the_token_or_the_ca() {
        let config = Config::from_args(with(&[("tls-ca-pem", PEM)])).unwrap();
        for text in [format!("{config:?}"), config.to_string()] {
            assert!(!text.contains("secret-token"), "{text}");
            assert!(!text.contains("MIIB"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }
}
