//! The CLI's configuration file: where it is, what it may hold, and the permissions it must have.
//!
//! ```toml
//! # ~/.config/hodei/config.toml: chmod 600, it holds an API token
//! server = "https://hodei.example.com:50051"
//! token = "hodei_…"
//! tls_ca = "ca.pem"            # relative to this file's directory
//! ```
//!
//! It is `--config`/`$HODEI_CONFIG` when given (then it must exist), else
//! `$XDG_CONFIG_HOME/hodei/config.toml`, else `~/.config/hodei/config.toml` (either may be
//! absent). Like ssh with a private key, the CLI refuses a file that anyone but its owner may
//! read or write: it holds a credential. Unknown keys are refused too, so a typo (`tokne`) is
//! not silently ignored. No error message ever quotes the file's text, which may be the token.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::error::CliError;

/// Where a config file is and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    /// Named with `--config` or `HODEI_CONFIG`: it must exist.
    pub explicit: bool,
}

/// What a config file may say; every key is optional.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub server: Option<String>,
    /// The API token as written; checked where it is used, so that the error can name this file.
    pub token: Option<String>,
    /// Absolute, or relative to the file's directory (resolved here).
    pub tls_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    server: Option<String>,
    token: Option<String>,
    tls_ca: Option<PathBuf>,
}

/// The config file to read: the explicit one, else the first default location that can be
/// formed from the environment (`XDG_CONFIG_HOME` must be absolute to count, as the XDG
/// specification says). `None` when neither `XDG_CONFIG_HOME` nor `HOME` is usable.
pub fn locate(
    explicit: Option<PathBuf>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Option<ConfigPath> {
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Some(ConfigPath {
            path,
            explicit: true,
        });
    }
    let usable = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let base =
        usable("XDG_CONFIG_HOME").or_else(|| usable("HOME").map(|home| home.join(".config")))?;
    Some(ConfigPath {
        path: base.join("hodei").join("config.toml"),
        explicit: false,
    })
}

/// Reads the config file; `None` when a default location holds no file.
pub fn load(location: &ConfigPath) -> Result<Option<ConfigFile>, CliError> {
    let path = &location.path;
    let error = |problem: String| CliError::Config {
        path: path.clone(),
        problem,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !location.explicit => return Ok(None),
        Err(err) => return Err(error(format!("cannot open it: {err}"))),
    };
    // The open file's own metadata: the file checked is the file read.
    let metadata = file
        .metadata()
        .map_err(|err| error(format!("cannot read its permissions: {err}")))?;
    if metadata.is_dir() {
        return Err(error("it is a directory, not a file".to_owned()));
    }
    check_private(&metadata).map_err(error)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|err| error(format!("cannot read it: {err}")))?;
    parse(&text, path).map(Some).map_err(error)
}

/// Refuses a file whose mode gives the group or others any access, as ssh does for a key.
#[cfg(unix)]
fn check_private(metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its permissions {mode:04o} let other users read or change it, and it may hold an \
             API token; make it private with `chmod 600` on it"
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_metadata: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// The keys of `text`. Errors give the line and TOML's description, never the text itself
/// (`token = hodei_…` without quotes would otherwise be quoted back).
fn parse(text: &str, path: &Path) -> Result<ConfigFile, String> {
    let keys: Keys = toml::from_str(text).map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = err
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .trim();
        match line {
            Some(line) => format!(
                "line {line}: {message} (expected `key = \"value\"` lines with the keys server, \
                 token, tls_ca)"
            ),
            None => format!("{message} (expected the keys server, token, tls_ca)"),
        }
    })?;
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    Ok(ConfigFile {
        path: path.to_owned(),
        server: keys.server.filter(|s| !s.trim().is_empty()),
        token: keys.token,
        tls_ca: keys
            .tls_ca
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| directory.join(p)),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn an_explicit_path_wins_then_xdg_then_home() {
        let all = env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            locate(Some("/etc/h.toml".into()), &all),
            Some(ConfigPath {
                path: "/etc/h.toml".into(),
                explicit: true
            })
        );
        assert_eq!(
            locate(None, &all).map(|c| c.path),
            Some("/xdg/hodei/config.toml".into())
        );
        let home_only = env(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/u")]);
        assert_eq!(
            locate(None, home_only).map(|c| c.path),
            Some("/home/u/.config/hodei/config.toml".into())
        );
        assert_eq!(locate(None, env(&[])), None);
    }

    #[test]
    fn keys_are_read_and_a_relative_ca_is_next_to_the_file() {
        let config = parse(
            "# comment\nserver = \"https://h:1\"\ntoken = 'hodei_x'\ntls_ca = \"ca.pem\"\n",
            Path::new("/cfg/hodei/config.toml"),
        )
        .expect("parses");
        assert_eq!(config.server.as_deref(), Some("https://h:1"));
        assert_eq!(config.token.as_deref(), Some("hodei_x"));
        assert_eq!(config.tls_ca, Some("/cfg/hodei/ca.pem".into()));
        let absolute =
            parse("tls_ca = \"/etc/ca.pem\"", Path::new("/cfg/config.toml")).expect("parses");
        assert_eq!(absolute.tls_ca, Some("/etc/ca.pem".into()));
        assert_eq!(
            parse("", Path::new("/c")).expect("empty is fine").token,
            None
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = parse("tokne = \"x\"", Path::new("/c")).unwrap_err();
        assert!(err.starts_with("line 1: unknown field `tokne`"), "{err}");
    }

    #[test]
    fn a_syntax_error_never_quotes_the_text() {
        let secret = "0123456789abcdef".repeat(4);
        for text in [
            format!("server = \"http://h:1\"\ntoken = hodei_{secret}\n"),
            format!("token = \"hodei_{secret}\ntls_ca = 1"),
            format!("token = [\"hodei_{secret}\"]"),
            format!("hodei_{secret}"),
        ] {
            let err = parse(&text, Path::new("/c")).unwrap_err();
            assert!(!err.contains(&secret[..8]), "{err}");
        }
    }
}
