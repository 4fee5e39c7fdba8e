//! The one-time token handed over as a file ([`env::TOKEN_FILE`]): read once, then removed, so
//! that nothing the worker's jobs can reach holds it later. The Docker provider uploads it into
//! the container before starting it; the local provider points the variable at the worker's
//! standard input, a pipe, which is read but never removed.
//!
//! Standard input is read as such, not by opening its name: once the worker is non-dumpable
//! (see [`crate::hardening`]), the kernel refuses an unprivileged worker its own
//! `/proc/self/fd/0` (and so `/dev/stdin`, a link to it).

use std::{
    fmt,
    io::{self, Read},
    path::Path,
};

use hodei_contract::env;

use crate::config::ConfigError;

/// Where the token came from, for the start-up summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// [`env::TOKEN`] (or `--token`).
    Variable,
    /// [`env::TOKEN_FILE`] (or `--token-file`), and what became of the file.
    File { path: String, removal: Removal },
}

/// What [`take`] did with the file once it had read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// A pipe, a device or a symbolic link: not ours to remove.
    NotARegularFile,
    /// Standard input, whatever it is connected to.
    StandardInput,
    /// It could not be removed (say, a read-only mount); the worker goes on, since the server
    /// refuses the token once the worker has registered with it.
    Failed(String),
}

/// Names of standard input, read from the open descriptor instead of by name.
const STANDARD_INPUT: [&str; 4] = ["-", "/dev/stdin", "/proc/self/fd/0", "/dev/fd/0"];

/// Reads the token from `path`, then removes the file if it is a regular file.
pub fn take(path: &Path) -> Result<(String, TokenSource), ConfigError> {
    let shown = path.display().to_string();
    let read_error = |source| ConfigError::ReadToken {
        path: shown.clone(),
        source,
    };
    let (text, removal) = if STANDARD_INPUT.iter().any(|name| path == Path::new(name)) {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).map_err(read_error)?;
        (text, Removal::StandardInput)
    } else {
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        (text, remove_if_regular_file(path))
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyTokenFile { path: shown });
    }
    Ok((
        token.to_string(),
        TokenSource::File {
            path: shown,
            removal,
        },
    ))
}

fn remove_if_regular_file(path: &Path) -> Removal {
    // `symlink_metadata`: a link is not followed, so its target is never removed.
    let is_regular = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_file());
    if !is_regular {
        return Removal::NotARegularFile;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Removal::Removed,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Removal::Removed,
        Err(err) => Removal::Failed(err.to_string()),
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Variable => f.write_str(env::TOKEN),
            TokenSource::File { path, removal } => {
                write!(f, "{}={path} ", env::TOKEN_FILE)?;
                match removal {
                    Removal::Removed => f.write_str("(removed)"),
                    Removal::NotARegularFile => f.write_str("(not a regular file; left alone)"),
                    Removal::StandardInput => f.write_str("(standard input)"),
                    Removal::Failed(err) => write!(f, "(could not remove it: {err})"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hodei-worker-token-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_token_file_is_read_trimmed_and_removed() {
        let dir = temp_dir("removed");
        let file = dir.join("token");
        std::fs::write(&file, "secret-token\n").unwrap();

        let (token, source) = take(&file).unwrap();

        assert_eq!(token, "secret-token");
        assert!(!file.exists(), "the token file is still there");
        assert_eq!(
            source.to_string(),
            format!("HODEI_TOKEN_FILE={} (removed)", file.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symbolic_link_is_read_through_but_neither_it_nor_its_target_is_removed() {
        let dir = temp_dir("link");
        let target = dir.join("target");
        let link = dir.join("link");
        std::fs::write(&target, "secret-token").unwrap();
        symlink(&target, &link).unwrap();

        let (token, source) = take(&link).unwrap();

        assert_eq!(token, "secret-token");
        assert!(link.exists() && target.exists());
        assert!(matches!(
            source,
            TokenSource::File {
                removal: Removal::NotARegularFile,
                ..
            }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_or_missing_token_file_is_an_error_naming_the_variable_and_the_path() {
        let dir = temp_dir("empty");
        let file = dir.join("token");
        std::fs::write(&file, " \n").unwrap();
        let err = take(&file).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("HODEI_TOKEN_FILE={}", file.display())),
            "{err}"
        );
        assert!(err.contains("holds no token"), "{err}");

        let err = take(&dir.join("absent")).unwrap_err().to_string();
        assert!(err.contains("cannot read the token file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
